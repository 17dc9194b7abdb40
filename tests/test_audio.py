"""Audio conversion: codec, resampling, framing and the two per-call paths.

Covers docs/twilio-media-streams.md §2 "media" and §3 "media" (8 kHz mu-law, 160-byte
frames, 0xFF silence) and docs/gemini-live.md §6 "Audio" (16 kHz in, 24 kHz out, s16le).

The FIR resamplers are held to their telephone-band specification (hold-back, alias
and image rejection, passband flatness, streaming continuity) by measuring the
streaming objects and their actual taps; soxr HQ is the quality reference.
"""

from __future__ import annotations

import base64
import warnings
import wave
from pathlib import Path

import numpy as np
import pytest
import soxr

from telephony.audio import (
    RESAMPLERS,
    FirDecimator3x,
    FirUpsampler2x,
    Framer,
    InboundAudio,
    OutboundAudio,
    Resampler,
    SoxrResampler,
    inbound_resampler,
    outbound_resampler,
    ulaw_decode,
    ulaw_encode,
)
from telephony.errors import MalformedMessage
from telephony.testing.audio_checks import measure_holdback

with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)
    try:
        import audioop
    except ImportError:  # Python >= 3.13
        audioop = None

needs_audioop = pytest.mark.skipif(audioop is None, reason="audioop is not importable")

SPEECH = Path(__file__).parent / "fixtures" / "speech" / "arctic_a0007.wav"


# --- helpers ------------------------------------------------------------------------


def reference_ulaw_encode(sample: int) -> int:
    """ITU-T G.711 mu-law, written independently of the package, as in audioop.c."""
    seg_end = (0x3F, 0x7F, 0xFF, 0x1FF, 0x3FF, 0x7FF, 0xFFF, 0x1FFF)
    pcm = sample >> 2
    if pcm < 0:
        pcm, mask = -pcm, 0x7F
    else:
        mask = 0xFF
    if pcm > 32635:
        pcm = 32635
    pcm += 0x84 >> 2
    seg = 8
    for i, end in enumerate(seg_end):
        if pcm <= end:
            seg = i
            break
    if seg >= 8:
        return 0x7F ^ mask
    return ((seg << 4) | ((pcm >> (seg + 1)) & 0xF)) ^ mask


def reference_ulaw_decode(code: int) -> int:
    u = ~code & 0xFF
    t = ((u & 0x0F) << 3) + 0x84
    t <<= (u & 0x70) >> 4
    return 0x84 - t if u & 0x80 else t - 0x84


def speech_at(rate: int) -> np.ndarray:
    """The CMU Arctic fixture (16 kHz mono s16) resampled one-shot to `rate`."""
    with wave.open(str(SPEECH), "rb") as wav:
        assert (wav.getnchannels(), wav.getsampwidth(), wav.getframerate()) == (1, 2, 16000)
        pcm = np.frombuffer(wav.readframes(wav.getnframes()), dtype="<i2").astype(np.int16)
    return pcm if rate == 16000 else soxr.resample(pcm, 16000, rate, quality="HQ")


def snr_db(reference: np.ndarray, test: np.ndarray) -> float:
    reference = reference.astype(np.float64)
    noise = reference - test.astype(np.float64)
    return 10 * np.log10(np.sum(reference**2) / max(np.sum(noise**2), 1e-12))


def tone(rate: int, seconds: float, freq: float = 440.0, amplitude: float = 20000) -> np.ndarray:
    t = np.arange(int(rate * seconds)) / rate
    return (amplitude * np.sin(2 * np.pi * freq * t)).astype(np.int16)


def chunks(data, size: int | list[int]):
    """Consecutive pieces of `size`, or of the sizes in the list, cycled."""
    sizes = [size] if isinstance(size, int) else size
    pieces, pos = [], 0
    while pos < len(data):
        step = sizes[len(pieces) % len(sizes)]
        pieces.append(data[pos : pos + step])
        pos += step
    return pieces


def decoded(payloads: list[str]) -> list[bytes]:
    return [base64.b64decode(p, validate=True) for p in payloads]


# --- G.711 mu-law -------------------------------------------------------------------


class TestUlawCodec:
    def test_every_code_decodes_like_the_reference_algorithm(self):
        expected = np.array([reference_ulaw_decode(c) for c in range(256)], dtype=np.int16)
        assert np.array_equal(ulaw_decode(bytes(range(256))), expected)

    def test_every_int16_value_encodes_like_the_reference_algorithm(self):
        samples = np.arange(-32768, 32768, dtype=np.int16)
        expected = bytes(reference_ulaw_encode(int(s)) for s in samples)
        assert ulaw_encode(samples) == expected

    @needs_audioop
    def test_every_code_decodes_like_audioop(self):
        codes = bytes(range(256))
        assert ulaw_decode(codes).tobytes() == audioop.ulaw2lin(codes, 2)

    @needs_audioop
    def test_every_int16_value_encodes_like_audioop(self):
        samples = np.arange(-32768, 32768, dtype=np.int16)
        assert ulaw_encode(samples) == audioop.lin2ulaw(samples.tobytes(), 2)

    def test_both_zero_codes_decode_to_silence(self):
        assert ulaw_decode(b"\x7f\xff").tolist() == [0, 0]

    def test_zero_encodes_as_0xff_silence(self):
        assert ulaw_encode(np.zeros(3, dtype=np.int16)) == b"\xff\xff\xff"

    def test_minus_one_shifts_before_taking_the_magnitude(self):
        # audioop floors to 14 bits first, so -1 is not the mirror image of +1.
        assert ulaw_encode(np.array([1, -1, -4], dtype=np.int16)) == b"\xff\x7e\x7e"

    def test_decode_then_encode_is_the_identity_except_negative_zero(self):
        codes = bytes(range(256))
        roundtrip = ulaw_encode(ulaw_decode(codes))
        assert [a for a, b in zip(codes, roundtrip) if a != b] == [0x7F]

    def test_decode_returns_int16_of_the_same_length(self):
        pcm = ulaw_decode(b"\x00\x80\xff" * 5)
        assert pcm.dtype == np.int16 and pcm.shape == (15,)

    def test_empty_input_gives_empty_output(self):
        assert ulaw_decode(b"").size == 0
        assert ulaw_encode(np.zeros(0, dtype=np.int16)) == b""


# --- resampling ---------------------------------------------------------------------

KINDS = RESAMPLERS  # ("fir", "soxr-hq")
#: direction -> (in_rate, out_rate)
DIRECTIONS = {"inbound": (8000, 16000), "outbound": (24000, 8000)}
FIR_CLASSES = {"inbound": FirUpsampler2x, "outbound": FirDecimator3x}

ODD_SIZES = [1, 7, 161, 479, 1001, 2, 333]
#: Not whole blocks (16), not multiples of 3, and past the 1024 samples a buffer first holds.
FULL_SCALE_SIZES = [1, 15, 16, 17, 2, 47, 160, 161, 479, 480, 481, 1024, 1025, 3000, 5, 4801]


def make_resampler(kind: str, direction: str) -> Resampler:
    return inbound_resampler(kind) if direction == "inbound" else outbound_resampler(kind)


def stream_through(resampler: Resampler, signal: np.ndarray, chunk: int | list[int]) -> np.ndarray:
    out = [resampler.process(part) for part in chunks(signal, chunk)]
    out.append(resampler.flush())
    return np.concatenate(out)


def fir_output_length(direction: str, n: int) -> int:
    """Samples a FIR returns for n input samples, its ring-out included: 2n or
    ceil(n / 3), plus `ring_out`."""
    cls = FIR_CLASSES[direction]
    return (2 * n if direction == "inbound" else -(-n // 3)) + cls.ring_out


def fir_one_shot_float(signal: np.ndarray, direction: str) -> np.ndarray:
    """The whole signal through the FIR's own taps in one np.convolve, delay included.

    An independent implementation of what the streaming objects compute (no
    polyphase, no history): the reference for continuity. The filter is causal and
    nothing is trimmed, so this is the plain convolution, cut after the ring-out.
    """
    x = signal.astype(np.float64)
    cls = FIR_CLASSES[direction]
    n_out = fir_output_length(direction, len(x))
    if direction == "inbound":
        stuffed = np.zeros(2 * len(x))
        stuffed[::2] = x
        return np.convolve(stuffed, cls.taps)[:n_out]
    padded = np.concatenate([x, np.zeros(3 * cls.ring_out)])  # room for the ring-out at any phase
    return np.convolve(padded, cls.taps)[::3][:n_out]


def fir_one_shot(signal: np.ndarray, direction: str) -> np.ndarray:
    return np.clip(np.rint(fir_one_shot_float(signal, direction)), -32768, 32767).astype(np.int16)


def one_shot(kind: str, signal: np.ndarray, in_rate: int, out_rate: int) -> np.ndarray:
    """Whole-signal conversion with the same filter as `kind` streams with."""
    if kind == "fir":
        return fir_one_shot(signal, "inbound" if in_rate < out_rate else "outbound")
    return soxr.resample(signal, in_rate, out_rate, quality="HQ")


def measure_holdback_ms(resampler: Resampler, in_rate: int, out_rate: int) -> tuple[float, float]:
    """(worst count deficit, group delay) in ms, streaming a chirp in 20 ms chunks."""
    held = measure_holdback(resampler, in_rate, out_rate)
    return held.deficit_worst_ms, held.delay_ms


def frequency_response(cls, freqs: np.ndarray) -> np.ndarray:
    """The FIR's complex response at `freqs` (Hz), normalised to gain 1 at DC."""
    rate = max(cls.in_rate, cls.out_rate)
    n = np.arange(len(cls.taps))
    return np.exp(-2j * np.pi * np.outer(freqs, n) / rate) @ cls.taps / cls.taps.sum()


def group_delay_ms(cls, freqs: np.ndarray) -> np.ndarray:
    """d(-phase)/d(omega) of the taps, as Re(DFT(n h) / DFT(h)): no phase unwrapping."""
    rate = max(cls.in_rate, cls.out_rate)
    n = np.arange(len(cls.taps))
    basis = np.exp(-2j * np.pi * np.outer(freqs, n) / rate)
    return np.real((basis @ (n * cls.taps)) / (basis @ cls.taps)) / rate * 1e3


def steady_spectrum(
    resampler: Resampler, in_rate: int, out_rate: int, freq: float, amplitude: float = 16000
) -> np.ndarray:
    """Power spectrum (2 Hz bins) of 0.5 s of a streamed tone's output, past the start.

    With tones on multiples of 50 Hz, every component (the tone, its aliases and
    images) falls exactly on a bin, so a plain FFT measures it without leakage.
    """
    t = np.arange(int(in_rate * 0.8)) / in_rate
    signal = np.round(amplitude * np.sin(2 * np.pi * freq * t)).astype(np.int16)
    out = stream_through(resampler, signal, in_rate // 50).astype(np.float64)
    start = out_rate // 20
    return np.abs(np.fft.rfft(out[start : start + out_rate // 2])) ** 2


def bin_of(freq: float) -> int:
    return int(round(freq / 2))  # 2 Hz bins


BAND_TONES = np.arange(300, 3401, 50)  # 300 Hz .. 3.4 kHz
ALIAS_TONES = np.arange(4600, 12000, 50)  # 4.6 .. 11.95 kHz (12 kHz itself samples to zero)


class TestResamplerChoice:
    def test_fir_is_the_default_in_both_directions(self):
        assert RESAMPLERS[0] == "fir"
        assert isinstance(inbound_resampler(), FirUpsampler2x)
        assert isinstance(outbound_resampler(), FirDecimator3x)

    def test_soxr_hq_can_still_be_chosen(self):
        assert isinstance(inbound_resampler("soxr-hq"), SoxrResampler)
        assert isinstance(outbound_resampler("soxr-hq"), SoxrResampler)

    @pytest.mark.parametrize("kind", KINDS)
    def test_factories_give_the_two_call_directions(self, kind):
        inbound, outbound = inbound_resampler(kind), outbound_resampler(kind)
        assert isinstance(inbound, Resampler) and isinstance(outbound, Resampler)
        assert (inbound.in_rate, inbound.out_rate) == (8000, 16000)
        assert (outbound.in_rate, outbound.out_rate) == (24000, 8000)

    @pytest.mark.parametrize("factory", [inbound_resampler, outbound_resampler])
    def test_an_unknown_kind_is_refused_naming_the_choices(self, factory):
        with pytest.raises(ValueError, match="fir"):
            factory("linear")


class TestFirDesign:
    """The actual taps, evaluated on a dense frequency grid."""

    @pytest.mark.parametrize("direction", DIRECTIONS)
    def test_the_filters_are_short_and_whole_numbers_of_polyphase_branches(self, direction):
        cls = FIR_CLASSES[direction]
        factor = max(cls.in_rate, cls.out_rate) // min(cls.in_rate, cls.out_rate)
        assert (len(cls.taps), cls.ring_out) == {"inbound": (52, 50), "outbound": (78, 26)}[direction]
        assert len(cls.taps) % factor == 0
        assert not cls.taps.flags.writeable

    @pytest.mark.parametrize("direction", DIRECTIONS)
    def test_the_filters_are_minimum_phase_so_the_band_arrives_within_half_a_millisecond(self, direction):
        cls = FIR_CLASSES[direction]
        band = np.arange(300, 3401, 10.0)
        delay = group_delay_ms(cls, band)
        # A linear-phase filter of this length would delay everything by 1.6 ms.
        assert 0 < delay.min() and delay.max() <= 0.5
        assert group_delay_ms(cls, np.array([1000.0]))[0] <= 0.2
        # Minimum phase: the energy comes first. Half of it within 0.25 ms, the peak
        # within 0.3 ms (a linear-phase filter puts both at its middle).
        rate = max(cls.in_rate, cls.out_rate)
        energy = np.cumsum(cls.taps**2) / np.sum(cls.taps**2)
        assert np.argmax(energy >= 0.5) / rate <= 0.25e-3
        assert np.argmax(np.abs(cls.taps)) / rate <= 0.3e-3

    @pytest.mark.parametrize("direction", DIRECTIONS)
    def test_the_taps_reject_everything_from_4_6_khz_by_50_db_and_pass_the_band_within_1_db(self, direction):
        cls = FIR_CLASSES[direction]
        rate = max(cls.in_rate, cls.out_rate)
        gain = cls.out_rate / cls.in_rate if cls.out_rate > cls.in_rate else 1.0
        response = np.abs(np.fft.rfft(cls.taps, 1 << 16)) / gain
        freqs = np.fft.rfftfreq(1 << 16, 1 / rate)
        db = 20 * np.log10(np.maximum(response, 1e-12))
        band = db[(freqs >= 300) & (freqs <= 3400)]
        assert band.max() - band.min() <= 1.0 and np.abs(band).max() <= 0.5
        assert db[freqs >= 4600].max() <= -50

    def test_the_upsampler_branches_have_unity_gain_so_8_khz_is_an_exact_zero(self):
        taps = FirUpsampler2x.taps
        assert taps[0::2].sum() == pytest.approx(1, abs=1e-12)
        assert taps[1::2].sum() == pytest.approx(1, abs=1e-12)
        assert abs(frequency_response(FirUpsampler2x, np.array([8000.0]))[0]) <= 1e-12

    @pytest.mark.parametrize("direction", DIRECTIONS)
    def test_the_taps_are_whole_multiples_of_2_to_the_minus_30_and_each_branch_sums_to_exactly_1(self, direction):
        # What makes every output sum exact from integer input, in any order (see
        # "How the FIRs stream cheaply" in telephony/audio/resample.py).
        cls = FIR_CLASSES[direction]
        units = cls.taps * 2.0**30
        assert cls.taps.dtype == np.float64 and np.array_equal(units, np.round(units))
        branches = {"inbound": [units[0::2], units[1::2]], "outbound": [units]}[direction]
        for branch in branches:
            assert sum(int(u) for u in branch) == 2**30
        assert np.abs(units).max() < 2**30

    @pytest.mark.parametrize("direction", DIRECTIONS)
    def test_each_polyphase_branch_has_unity_gain_at_dc_so_a_constant_stays_constant(self, direction):
        cls = FIR_CLASSES[direction]
        in_rate = cls.in_rate
        out = stream_through(cls(), np.full(in_rate, 1000, dtype=np.int16), in_rate // 50)
        steady = out[len(out) // 4 : -len(out) // 4]
        assert np.all(steady == 1000)


class TestFirStreaming:
    """The specification, measured on the streaming objects."""

    @pytest.mark.parametrize("direction", DIRECTIONS)
    def test_a_sample_waits_at_most_3_ms_inside_the_resampler(self, direction):
        in_rate, out_rate = DIRECTIONS[direction]
        deficit_ms, delay_ms = measure_holdback_ms(make_resampler("fir", direction), in_rate, out_rate)
        assert deficit_ms == 0  # nothing held back: every chunk comes out whole at once
        assert 0 < delay_ms <= 0.5  # the filter's delay, inside the signal (linear phase: 1.5)
        assert deficit_ms + delay_ms <= 3.0

    @pytest.mark.parametrize("direction", DIRECTIONS)
    def test_every_20ms_chunk_comes_out_as_20ms_at_once_from_the_first(self, direction):
        in_rate, out_rate = DIRECTIONS[direction]
        resampler = make_resampler("fir", direction)
        outs = [len(resampler.process(part)) for part in chunks(speech_at(in_rate), in_rate // 50)]
        assert set(outs[:-1]) == {out_rate // 50}

    @pytest.mark.parametrize("direction", DIRECTIONS)
    def test_odd_sized_chunks_come_out_in_full_too_with_the_decimation_phase_carried_over(self, direction):
        in_rate, _ = DIRECTIONS[direction]
        resampler = make_resampler("fir", direction)
        fed = got = 0
        for part in chunks(speech_at(in_rate)[:20000], ODD_SIZES):
            got += len(resampler.process(part))
            fed += len(part)
            assert got == fir_output_length(direction, fed) - FIR_CLASSES[direction].ring_out

    def test_a_40ms_model_chunk_becomes_exactly_two_20ms_frames(self):
        resampler = FirDecimator3x()
        assert [len(resampler.process(part)) for part in chunks(speech_at(24000)[:9600], 960)] == [320] * 10

    @pytest.mark.parametrize("kind", KINDS)
    def test_the_decimator_keeps_every_alias_out_of_the_telephone_band_by_50_db(self, kind):
        reference = steady_spectrum(outbound_resampler(kind), 24000, 8000, 1000).sum()
        worst = -np.inf
        for freq in ALIAS_TONES:
            spectrum = steady_spectrum(outbound_resampler(kind), 24000, 8000, freq)
            in_band = spectrum[: bin_of(3400) + 1].sum()
            worst = max(worst, 10 * np.log10(max(in_band, 1e-12) / reference))
        assert worst <= -50, f"an alias came out at {worst:.1f} dB"

    @pytest.mark.parametrize("kind", KINDS)
    def test_the_upsampler_keeps_images_of_the_telephone_band_down_by_50_db(self, kind):
        worst = -np.inf
        for freq in BAND_TONES:
            spectrum = steady_spectrum(inbound_resampler(kind), 8000, 16000, freq)
            image = spectrum[bin_of(4600) :].sum()  # 8 kHz - 3.4 kHz and up
            worst = max(worst, 10 * np.log10(max(image, 1e-12) / spectrum[bin_of(freq)]))
        assert worst <= -50, f"an image came out at {worst:.1f} dB"

    @pytest.mark.parametrize("kind", KINDS)
    @pytest.mark.parametrize("direction", DIRECTIONS)
    def test_the_passband_is_flat_within_1_db_from_300_to_3400_hz(self, kind, direction):
        in_rate, out_rate = DIRECTIONS[direction]
        amplitude = 16000
        gains_db = []
        for freq in BAND_TONES:
            spectrum = steady_spectrum(make_resampler(kind, direction), in_rate, out_rate, freq, amplitude)
            level = 2 * np.sqrt(spectrum[bin_of(freq)]) / (out_rate // 2)
            gains_db.append(20 * np.log10(level / amplitude))
        assert max(gains_db) - min(gains_db) <= 1.0
        assert max(abs(g) for g in gains_db) <= 0.5

    @pytest.mark.parametrize("chunk", [None, ODD_SIZES], ids=["20ms", "odd-sizes"])
    @pytest.mark.parametrize("direction", DIRECTIONS)
    def test_streaming_matches_filtering_the_whole_signal_at_once(self, direction, chunk):
        in_rate, _ = DIRECTIONS[direction]
        signal = speech_at(in_rate)
        streamed = stream_through(make_resampler("fir", direction), signal, chunk or in_rate // 50)
        reference = fir_one_shot(signal, direction)
        assert streamed.dtype == np.int16 and len(streamed) == len(reference)
        assert snr_db(reference, streamed) >= 60
        assert np.abs(streamed.astype(np.int32) - reference).max() <= 1  # rounding only

    @pytest.mark.parametrize("direction", DIRECTIONS)
    def test_the_fir_agrees_with_soxr_hq_inside_the_telephone_band_once_given_its_own_phase(self, direction):
        # soxr HQ is linear phase and time-aligned; the FIR's phase is minimum. Apply
        # the FIR's own (unit-magnitude in the band) response to soxr's output and
        # what is left to compare is the resampling itself.
        in_rate, out_rate = DIRECTIONS[direction]
        signal = speech_at(in_rate)
        streamed = stream_through(make_resampler("fir", direction), signal, in_rate // 50).astype(np.float64)
        reference = soxr.resample(signal, in_rate, out_rate, quality="HQ").astype(np.float64)
        n_fft = 1 << int(np.ceil(np.log2(len(streamed) + 1)))
        freqs = np.fft.rfftfreq(n_fft, 1 / out_rate)
        band = (freqs >= 300) & (freqs <= 3400)
        fir_band = np.fft.rfft(streamed, n_fft)[band]
        soxr_band = np.fft.rfft(reference, n_fft)[band] * frequency_response(FIR_CLASSES[direction], freqs[band])
        assert snr_db(np.abs(soxr_band), np.abs(fir_band)) >= 50  # the magnitude alone
        noise = np.sum(np.abs(soxr_band - fir_band) ** 2)
        assert 10 * np.log10(np.sum(np.abs(soxr_band) ** 2) / noise) >= 50  # and with the phase

    @pytest.mark.parametrize("length", [1, 2, 3, 4, 5, 100, 479, 480, 481, 12001, 12002])
    @pytest.mark.parametrize("direction", DIRECTIONS)
    def test_flush_makes_the_total_the_rate_ratio_of_the_input_plus_the_ring_out(self, direction, length):
        in_rate, _ = DIRECTIONS[direction]
        resampler = make_resampler("fir", direction)
        signal = tone(in_rate, 2.0)[:length]
        body = [resampler.process(part) for part in chunks(signal, in_rate // 50)]
        tail = resampler.flush()
        assert sum(map(len, body)) == fir_output_length(direction, length) - FIR_CLASSES[direction].ring_out
        assert len(tail) == FIR_CLASSES[direction].ring_out
        assert np.array_equal(np.concatenate(body + [tail]), fir_one_shot(signal, direction))

    @pytest.mark.parametrize("direction", DIRECTIONS)
    def test_flush_releases_the_ring_out_of_the_last_samples_and_then_nothing_is_left(self, direction):
        in_rate, _ = DIRECTIONS[direction]
        cls = FIR_CLASSES[direction]
        signal = speech_at(in_rate)[: in_rate // 2]
        resampler = make_resampler("fir", direction)
        for part in chunks(signal, in_rate // 50):
            resampler.process(part)
        tail = resampler.flush()
        assert len(tail) == cls.ring_out and np.abs(tail).max() > 0
        # The whole response: feeding more silence after the signal adds only zeros.
        longer = fir_one_shot(np.concatenate([signal, np.zeros(in_rate // 10, dtype=np.int16)]), direction)
        n = fir_output_length(direction, len(signal))
        assert not longer[n:].any()

    @pytest.mark.parametrize("direction", DIRECTIONS)
    def test_flush_with_nothing_fed_returns_nothing(self, direction):
        resampler = make_resampler("fir", direction)
        assert resampler.flush().size == 0
        resampler.process(tone(DIRECTIONS[direction][0], 0.02))
        resampler.flush()
        assert resampler.flush().size == 0

    @pytest.mark.parametrize("direction", DIRECTIONS)
    def test_reset_leaves_history_and_phase_exactly_as_new(self, direction):
        in_rate, _ = DIRECTIONS[direction]
        signal = speech_at(in_rate)
        used = make_resampler("fir", direction)
        used.process(tone(in_rate, 0.1)[:1001])  # leaves a tail and an odd decimation phase
        used.reset()
        fresh = make_resampler("fir", direction)
        assert np.array_equal(stream_through(used, signal, 480), stream_through(fresh, signal, 480))

    @pytest.mark.parametrize("direction", DIRECTIONS)
    def test_long_chunks_and_many_chunk_lengths_stream_like_20ms_chunks(self, direction):
        # Past the preallocated buffer (1024 samples) and the cache of per-length views.
        in_rate, _ = DIRECTIONS[direction]
        signal = np.tile(speech_at(in_rate), 3)
        sizes = [5000, 1, 9000, 1023, 1024, 1025, 3] + list(range(1, 100))
        assert np.array_equal(
            stream_through(make_resampler("fir", direction), signal, in_rate // 50),
            stream_through(make_resampler("fir", direction), signal, sizes),
        )

    @pytest.mark.parametrize("direction", DIRECTIONS)
    def test_wider_input_in_the_history_still_saturates(self, direction):
        # process() takes any dtype; int16 chunks after it must not overflow the
        # saturation lookup.
        in_rate, _ = DIRECTIONS[direction]
        loud = np.full(100, 1e6)
        quiet = tone(in_rate, 0.02)
        resampler = make_resampler("fir", direction)
        first = resampler.process(loud)
        out = resampler.process(quiet)
        exact = fir_one_shot_float(np.concatenate([loud, quiet]), direction)[len(first) : len(first) + len(out)]
        assert (exact > 32767.5).any()
        assert np.all(out[exact > 32767.5] == 32767) and np.all(out[exact < -32768.5] == -32768)

    @pytest.mark.parametrize("direction", DIRECTIONS)
    def test_the_block_products_are_exactly_the_convolution_with_the_taps_even_at_full_scale(self, direction):
        # Full-scale noise makes the largest sums: the worst case for exactness. The
        # float output before rounding, chunk by chunk (private `_filter`), against
        # one np.convolve with the same taps: equal, not just close.
        in_rate, _ = DIRECTIONS[direction]
        signal = np.random.default_rng(7).integers(-32768, 32768, 20000).astype(np.int16)
        resampler = make_resampler("fir", direction)
        streamed = np.concatenate([resampler._filter(part).copy() for part in chunks(signal, FULL_SCALE_SIZES)])
        body = fir_output_length(direction, len(signal)) - FIR_CLASSES[direction].ring_out
        assert len(streamed) == body
        assert np.array_equal(streamed, fir_one_shot_float(signal, direction)[:body])

    @pytest.mark.parametrize("sizes", [None, FULL_SCALE_SIZES, [1024, 1, 1024, 2, 1024, 2049, 4097]])
    @pytest.mark.parametrize("direction", DIRECTIONS)
    def test_full_scale_output_is_bit_identical_however_the_input_is_chunked(self, direction, sizes):
        # Chunks that are not whole blocks or multiples of 3, at every decimation
        # phase, and long ones that make the buffer grow.
        in_rate, _ = DIRECTIONS[direction]
        signal = np.random.default_rng(8).integers(-32768, 32768, 20000).astype(np.int16)
        streamed = stream_through(make_resampler("fir", direction), signal, sizes or in_rate // 50)
        assert np.array_equal(streamed, fir_one_shot(signal, direction))

    @pytest.mark.parametrize("direction", DIRECTIONS)
    def test_an_infinite_sample_is_forgotten_once_it_has_left_the_history(self, direction):
        # Samples left past a shorter chunk are read into discarded outputs, with zero
        # coefficients; an inf there would make every output of its block NaN.
        in_rate, _ = DIRECTIONS[direction]
        spoiled = np.zeros(1000)
        spoiled[1:900] = np.inf
        resampler, clean = make_resampler("fir", direction), make_resampler("fir", direction)
        with np.errstate(invalid="ignore"):
            resampler.process(spoiled)
        clean.process(np.zeros(1000))
        after, sizes = tone(in_rate, 0.2), [1, 7, 100, 161]
        assert np.array_equal(stream_through(resampler, after, sizes), stream_through(clean, after, sizes))


class TestResamplers:
    """The `Resampler` contract, for every implementation."""

    @pytest.mark.parametrize("direction", DIRECTIONS)
    def test_soxr_speech_streamed_in_20ms_chunks_matches_one_shot(self, direction):
        in_rate, out_rate = DIRECTIONS[direction]
        signal = speech_at(in_rate)
        streamed = stream_through(SoxrResampler(in_rate, out_rate), signal, in_rate // 50)
        one_shot = soxr.resample(signal, in_rate, out_rate, quality="HQ")
        assert streamed.dtype == np.int16
        assert len(streamed) == len(one_shot)
        assert snr_db(one_shot, streamed) >= 50

    @pytest.mark.parametrize("direction", DIRECTIONS)
    def test_soxr_flush_returns_the_held_back_tail(self, direction):
        in_rate, out_rate = DIRECTIONS[direction]
        resampler = SoxrResampler(in_rate, out_rate)
        signal = tone(in_rate, 1.0)
        body = np.concatenate([resampler.process(c) for c in chunks(signal, in_rate // 50)])
        tail = resampler.flush()
        expected = len(signal) * out_rate // in_rate
        assert len(body) < expected
        assert len(tail) > 0
        assert abs(len(body) + len(tail) - expected) <= 1

    @pytest.mark.parametrize("direction", DIRECTIONS)
    def test_fir_holds_nothing_back_and_flush_returns_only_the_ring_out(self, direction):
        in_rate, out_rate = DIRECTIONS[direction]
        resampler = make_resampler("fir", direction)
        signal = tone(in_rate, 1.0)
        body = np.concatenate([resampler.process(c) for c in chunks(signal, in_rate // 50)])
        tail = resampler.flush()
        assert len(body) == len(signal) * out_rate // in_rate
        assert len(tail) == FIR_CLASSES[direction].ring_out

    @pytest.mark.parametrize("kind", KINDS)
    def test_resampler_is_usable_again_after_flush(self, kind):
        resampler = outbound_resampler(kind)
        signal = speech_at(24000)
        first = stream_through(resampler, signal, 480)
        second = stream_through(resampler, signal, 480)
        assert np.array_equal(first, second)

    @pytest.mark.parametrize("kind", KINDS)
    @pytest.mark.parametrize("direction", DIRECTIONS)
    def test_reset_leaves_no_stale_tail(self, kind, direction):
        in_rate, _ = DIRECTIONS[direction]
        resampler = make_resampler(kind, direction)
        for part in chunks(tone(in_rate, 0.5), in_rate // 50):
            resampler.process(part)
        resampler.reset()
        silence = np.zeros(in_rate // 50, dtype=np.int16)
        after = [resampler.process(silence) for _ in range(25)] + [resampler.flush()]
        after = np.concatenate(after)
        assert len(after) > 0
        assert np.abs(after).max() <= (0 if kind == "fir" else 1)

    @pytest.mark.parametrize("kind", KINDS)
    @pytest.mark.parametrize("direction", DIRECTIONS)
    def test_empty_chunk_gives_empty_int16_output(self, kind, direction):
        out = make_resampler(kind, direction).process(np.zeros(0, dtype=np.int16))
        assert out.size == 0 and out.dtype == np.int16

    @pytest.mark.parametrize("kind", KINDS)
    @pytest.mark.parametrize("direction", DIRECTIONS)
    def test_digital_silence_comes_out_exactly_silent(self, kind, direction):
        # soxr's int16 mode would dither it into +-1 noise.
        in_rate, out_rate = DIRECTIONS[direction]
        out = stream_through(make_resampler(kind, direction), np.zeros(in_rate, dtype=np.int16), in_rate // 50)
        ring_out = FIR_CLASSES[direction].ring_out if kind == "fir" else 0
        assert len(out) == out_rate + ring_out and not out.any()

    @pytest.mark.parametrize("kind", KINDS)
    @pytest.mark.parametrize("direction", DIRECTIONS)
    def test_output_does_not_depend_on_how_the_input_is_chunked(self, kind, direction):
        in_rate, _ = DIRECTIONS[direction]
        signal = speech_at(in_rate)
        assert np.array_equal(
            stream_through(make_resampler(kind, direction), signal, in_rate // 50),
            stream_through(make_resampler(kind, direction), signal, ODD_SIZES),
        )

    @pytest.mark.parametrize("kind", KINDS)
    def test_full_scale_overshoot_saturates_instead_of_wrapping(self, kind):
        square = np.where(np.sin(2 * np.pi * 200 * np.arange(24000) / 24000) >= 0, 32767, -32768)
        square = square.astype(np.int16)
        out = stream_through(outbound_resampler(kind), square, 480)
        if kind == "fir":
            exact = fir_one_shot_float(square, "outbound")
        else:
            exact = soxr.resample(square.astype(np.float64), 24000, 8000, quality="HQ")
        assert (exact > 32767).any() and (exact < -32768).any()
        assert np.all(out[exact > 32767] == 32767)
        assert np.all(out[exact < -32768] == -32768)

    def test_the_upsampler_saturates_instead_of_wrapping_too(self):
        square = np.where(np.sin(2 * np.pi * 200 * np.arange(8000) / 8000) >= 0, 32767, -32768)
        square = square.astype(np.int16)
        out = stream_through(FirUpsampler2x(), square, 160)
        exact = fir_one_shot_float(square, "inbound")
        assert (exact > 32767).any() and (exact < -32768).any()
        assert np.all(out[exact > 32767] == 32767)
        assert np.all(out[exact < -32768] == -32768)


# --- framing ------------------------------------------------------------------------


class TestFramer:
    def test_odd_sized_pushes_produce_only_whole_frames_in_order(self):
        stream = bytes(i % 251 for i in range(160 * 7 + 37))
        framer = Framer()
        frames = []
        for size in (1, 159, 3, 500, 77, 160, 321):
            frames += framer.push(stream[:size])
            stream = stream[size:]
        frames += framer.push(stream)
        assert all(len(f) == 160 for f in frames)
        assert len(frames) == 7
        assert framer.pending_bytes == 37
        assert b"".join(frames) == bytes(i % 251 for i in range(160 * 7))

    def test_a_short_push_is_carried_to_the_next(self):
        framer = Framer()
        assert framer.push(b"\x01" * 100) == []
        assert framer.push(b"\x02" * 100) == [b"\x01" * 100 + b"\x02" * 60]
        assert framer.pending_bytes == 40

    def test_flush_pads_the_remainder_with_mulaw_silence(self):
        framer = Framer()
        framer.push(b"\x10" * 170)
        assert framer.flush() == b"\x10" * 10 + b"\xff" * 150
        assert framer.pending_bytes == 0

    def test_flush_with_nothing_pending_returns_none(self):
        framer = Framer()
        framer.push(b"\x10" * 320)
        assert framer.flush() is None

    def test_reset_drops_the_partial_frame(self):
        framer = Framer()
        framer.push(b"\x10" * 50)
        framer.reset()
        assert framer.flush() is None
        assert framer.push(b"\x20" * 160) == [b"\x20" * 160]


# --- inbound: Twilio -> Live --------------------------------------------------------


class TestInboundAudio:
    @pytest.mark.parametrize("kind", KINDS)
    def test_each_20ms_frame_becomes_640_bytes_on_average(self, kind):
        inbound = InboundAudio(inbound_resampler(kind))
        signal = speech_at(8000)
        frames = [ulaw_encode(c) for c in chunks(signal[: 160 * 200], 160)]
        out = [inbound.convert(base64.b64encode(f).decode()) for f in frames]
        total = sum(len(o) for o in out)
        # soxr holds back a block; the FIR nothing; nothing else goes missing.
        held_back = {"fir": 0, "soxr-hq": 2 * 1700}[kind]
        assert 640 * 200 - held_back <= total <= 640 * 200
        assert all(len(o) % 2 == 0 for o in out)

    def test_the_default_fir_returns_every_frame_whole_from_the_first(self):
        inbound = InboundAudio()
        payload = base64.b64encode(ulaw_encode(tone(8000, 0.02))).decode()
        sizes = [len(inbound.convert(payload)) for _ in range(10)]
        assert sizes == [640] * 10

    @pytest.mark.parametrize("kind", KINDS)
    def test_output_is_the_decoded_speech_at_16k(self, kind):
        signal = speech_at(8000)
        ulaw = ulaw_encode(signal)
        inbound = InboundAudio(inbound_resampler(kind))
        out = b"".join(inbound.convert(base64.b64encode(f).decode()) for f in chunks(ulaw, 160))
        streamed = np.frombuffer(out, dtype="<i2")
        reference = one_shot(kind, ulaw_decode(ulaw), 8000, 16000)[: len(streamed)]
        assert snr_db(reference, streamed) >= 50

    def test_digital_silence_stays_silent(self):
        inbound = InboundAudio()
        out = b"".join(inbound.convert(base64.b64encode(b"\xff" * 160).decode()) for _ in range(20))
        assert len(out) > 0 and set(out) == {0}

    @pytest.mark.parametrize("payload", ["not base64!", "////A", "//8=x", "ab c", "é"])
    def test_invalid_base64_is_a_malformed_message(self, payload):
        with pytest.raises(MalformedMessage):
            InboundAudio().convert(payload)

    def test_empty_payload_is_a_malformed_message(self):
        with pytest.raises(MalformedMessage):
            InboundAudio().convert("")

    def test_non_string_payload_is_a_malformed_message(self):
        with pytest.raises(MalformedMessage):
            InboundAudio().convert(None)

    def test_the_fir_path_is_exactly_decode_then_process(self):
        # InboundAudio decodes straight into the FIR's buffer; same bytes as the steps.
        ulaw = ulaw_encode(speech_at(8000)) + bytes(range(256))
        inbound, resampler = InboundAudio(), FirUpsampler2x()
        for part in chunks(ulaw, [160, 1, 161, 7, 480]):
            expected = resampler.process(ulaw_decode(part)).astype("<i2").tobytes()
            assert inbound.convert(base64.b64encode(part).decode()) == expected

    def test_a_bad_frame_does_not_disturb_the_stream(self):
        good = base64.b64encode(ulaw_encode(tone(8000, 0.02))).decode()
        clean, disturbed = InboundAudio(), InboundAudio()
        expected = b"".join(clean.convert(good) for _ in range(30))
        got = []
        for i in range(30):
            if i == 10:
                with pytest.raises(MalformedMessage):
                    disturbed.convert("%%%")
            got.append(disturbed.convert(good))
        assert b"".join(got) == expected


# --- outbound: Live -> Twilio -------------------------------------------------------


class TestOutboundAudio:
    @pytest.mark.parametrize("kind", KINDS)
    def test_model_audio_becomes_160_byte_base64_payloads(self, kind):
        outbound = OutboundAudio(outbound_resampler(kind))
        pcm = speech_at(24000)[:-1].tobytes()  # not a multiple of 3 samples
        payloads = [p for c in chunks(pcm, 960) for p in outbound.convert(c)] + outbound.end_turn()
        frames = decoded(payloads)
        assert all(len(f) == 160 for f in frames)
        n = len(pcm) // 2
        # soxr: round(n / 3) samples; the FIR: one per 3rd input sample plus its ring-out.
        samples_8k = round(n / 3) if kind == "soxr-hq" else fir_output_length("outbound", n)
        assert len(frames) == -(-samples_8k // 160)

    @pytest.mark.parametrize("kind", KINDS)
    def test_turn_audio_matches_one_shot_resample_and_encode(self, kind):
        pcm = speech_at(24000)
        outbound = OutboundAudio(outbound_resampler(kind))
        payloads = [p for c in chunks(pcm.tobytes(), 960) for p in outbound.convert(c)]
        payloads += outbound.end_turn()
        streamed = ulaw_decode(b"".join(decoded(payloads)))
        reference = ulaw_decode(ulaw_encode(one_shot(kind, pcm, 24000, 8000)))
        assert snr_db(reference, streamed[: len(reference)]) >= 30  # mu-law flips a few codes
        assert set(b"".join(decoded(payloads))[len(reference) :]) <= {0xFF}

    def test_the_default_fir_sends_every_frame_as_soon_as_its_audio_arrives(self):
        outbound = OutboundAudio()
        sizes = [len(outbound.convert(c)) for c in chunks(tone(24000, 0.2).tobytes(), 960)]
        assert sizes == [1] * 10  # 20 ms in, 20 ms out, from the first chunk
        assert outbound.pending_bytes == 0

    def test_a_40ms_model_chunk_goes_out_as_two_whole_frames_with_nothing_pending(self):
        # Live sends 40 ms chunks (960 samples at 24 kHz, 1920 bytes).
        outbound = OutboundAudio()
        for chunk in chunks(speech_at(24000)[: 960 * 10].tobytes(), 1920):
            assert len(outbound.convert(chunk)) == 2
            assert outbound.pending_bytes == 0
        # The turn's end adds the ring-out: one more frame, padded with silence.
        last = decoded(outbound.end_turn())
        assert len(last) == 1 and last[0][FirDecimator3x.ring_out :] == b"\xff" * (160 - FirDecimator3x.ring_out)

    @pytest.mark.parametrize("kind", KINDS)
    def test_odd_length_chunks_give_the_same_payloads_as_one_big_chunk(self, kind):
        pcm = speech_at(24000).tobytes()
        whole = OutboundAudio(outbound_resampler(kind))
        expected = whole.convert(pcm) + whole.end_turn()
        odd = OutboundAudio(outbound_resampler(kind))
        got = []
        sizes = [1, 961, 7, 2, 959, 333, 1, 1]
        pos = 0
        while pos < len(pcm):
            size = sizes[len(got) % len(sizes)]
            got.append(odd.convert(pcm[pos : pos + size]))
            pos += size
        got_payloads = [p for batch in got for p in batch] + odd.end_turn()
        assert got_payloads == expected

    def test_the_fir_path_is_exactly_process_then_encode(self):
        # OutboundAudio encodes the FIR's float output straight to mu-law; same frames.
        pcm = np.concatenate([speech_at(24000), np.full(960, 32767, np.int16), np.full(960, -32768, np.int16)])
        outbound, resampler, framer = OutboundAudio(), FirDecimator3x(), Framer()
        for part in chunks(pcm, [480, 960, 1, 7, 2000]):
            expected = framer.push(ulaw_encode(resampler.process(part)))
            assert decoded(outbound.convert(part.tobytes())) == expected
        assert decoded(outbound.end_turn()) == framer.push(ulaw_encode(resampler.flush())) + [framer.flush()]

    def test_end_turn_pads_the_last_frame_and_leaves_nothing_pending(self):
        outbound = OutboundAudio()
        outbound.convert(tone(24000, 0.1).tobytes())  # 800 samples at 8k: 5 frames
        payloads = outbound.end_turn()
        assert outbound.pending_bytes == 0
        assert all(len(f) == 160 for f in decoded(payloads))
        assert outbound.end_turn() == []

    @pytest.mark.parametrize("kind", KINDS)
    def test_pending_bytes_counts_the_partial_frame(self, kind):
        outbound = OutboundAudio(outbound_resampler(kind))
        sent = 0
        for c in chunks(tone(24000, 0.5).tobytes(), 960):
            sent += len(outbound.convert(c))
            assert 0 <= outbound.pending_bytes < 160
        assert sent * 160 + outbound.pending_bytes <= 4000  # the resampler holds the rest
        tail = decoded(outbound.end_turn())
        # soxr's drain makes up the 4000 samples; the FIR's adds its ring-out.
        total = 4000 if kind == "soxr-hq" else fir_output_length("outbound", 12000)
        assert (sent + len(tail)) * 160 == -(-total // 160) * 160

    @pytest.mark.parametrize("kind", KINDS)
    def test_next_turn_after_end_turn_is_like_a_fresh_call(self, kind):
        pcm = speech_at(24000).tobytes()
        outbound = OutboundAudio(outbound_resampler(kind))
        first = [p for c in chunks(pcm, 960) for p in outbound.convert(c)] + outbound.end_turn()
        second = [p for c in chunks(pcm, 960) for p in outbound.convert(c)] + outbound.end_turn()
        assert first == second

    @pytest.mark.parametrize("kind", KINDS)
    def test_interruption_reset_lets_no_stale_audio_out(self, kind):
        outbound = OutboundAudio(outbound_resampler(kind))
        for c in chunks(tone(24000, 0.5).tobytes(), 960):
            outbound.convert(c)
        outbound.convert(b"\x01")  # an odd byte in flight too
        outbound.reset()
        assert outbound.pending_bytes == 0
        silence = bytes(960)
        payloads = [p for _ in range(25) for p in outbound.convert(silence)] + outbound.end_turn()
        frames = decoded(payloads)
        assert frames and all(len(f) == 160 for f in frames)
        assert np.abs(ulaw_decode(b"".join(frames))).max() <= 8  # mu-law's smallest steps

    def test_empty_chunk_gives_no_payloads(self):
        assert OutboundAudio().convert(b"") == []
