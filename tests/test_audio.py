"""Audio conversion: codec, resampling, framing and the two per-call paths.

Covers twilio-media-streams.md §2 "media" and §3 "media" (8 kHz mu-law, 160-byte
frames, 0xFF silence) and gemini-live.md §6 "Audio" (16 kHz in, 24 kHz out, s16le).
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


def chunks(data, size: int):
    return [data[i : i + size] for i in range(0, len(data), size)]


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


def stream_through(resampler: Resampler, signal: np.ndarray, chunk: int) -> np.ndarray:
    out = [resampler.process(part) for part in chunks(signal, chunk)]
    out.append(resampler.flush())
    return np.concatenate(out)


class TestResamplers:
    def test_factories_give_the_two_call_directions(self):
        inbound, outbound = inbound_resampler(), outbound_resampler()
        assert isinstance(inbound, Resampler) and isinstance(outbound, Resampler)
        assert (inbound.in_rate, inbound.out_rate) == (8000, 16000)
        assert (outbound.in_rate, outbound.out_rate) == (24000, 8000)

    @pytest.mark.parametrize(("in_rate", "out_rate"), [(8000, 16000), (24000, 8000)])
    def test_speech_streamed_in_20ms_chunks_matches_one_shot(self, in_rate, out_rate):
        signal = speech_at(in_rate)
        streamed = stream_through(SoxrResampler(in_rate, out_rate), signal, in_rate // 50)
        one_shot = soxr.resample(signal, in_rate, out_rate, quality="HQ")
        assert streamed.dtype == np.int16
        assert len(streamed) == len(one_shot)
        assert snr_db(one_shot, streamed) >= 50

    @pytest.mark.parametrize(("in_rate", "out_rate"), [(8000, 16000), (24000, 8000)])
    def test_flush_returns_the_held_back_tail(self, in_rate, out_rate):
        resampler = SoxrResampler(in_rate, out_rate)
        signal = tone(in_rate, 1.0)
        body = np.concatenate([resampler.process(c) for c in chunks(signal, in_rate // 50)])
        tail = resampler.flush()
        expected = len(signal) * out_rate // in_rate
        assert len(body) < expected
        assert len(tail) > 0
        assert abs(len(body) + len(tail) - expected) <= 1

    def test_resampler_is_usable_again_after_flush(self):
        resampler = SoxrResampler(24000, 8000)
        signal = speech_at(24000)
        first = stream_through(resampler, signal, 480)
        second = stream_through(resampler, signal, 480)
        assert np.array_equal(first, second)

    @pytest.mark.parametrize(("in_rate", "out_rate"), [(8000, 16000), (24000, 8000)])
    def test_reset_leaves_no_stale_tail(self, in_rate, out_rate):
        resampler = SoxrResampler(in_rate, out_rate)
        for part in chunks(tone(in_rate, 0.5), in_rate // 50):
            resampler.process(part)
        resampler.reset()
        silence = np.zeros(in_rate // 50, dtype=np.int16)
        after = [resampler.process(silence) for _ in range(25)] + [resampler.flush()]
        after = np.concatenate(after)
        assert len(after) > 0
        assert np.abs(after).max() <= 1

    def test_empty_chunk_gives_empty_output(self):
        assert SoxrResampler(8000, 16000).process(np.zeros(0, dtype=np.int16)).size == 0

    @pytest.mark.parametrize(("in_rate", "out_rate"), [(8000, 16000), (24000, 8000)])
    def test_digital_silence_comes_out_exactly_silent(self, in_rate, out_rate):
        # soxr's int16 mode would dither it into +-1 noise.
        resampler = SoxrResampler(in_rate, out_rate)
        out = stream_through(resampler, np.zeros(in_rate, dtype=np.int16), in_rate // 50)
        assert len(out) == out_rate and not out.any()

    def test_output_does_not_depend_on_how_the_input_is_chunked(self):
        signal = speech_at(24000)
        assert np.array_equal(
            stream_through(SoxrResampler(24000, 8000), signal, 480),
            stream_through(SoxrResampler(24000, 8000), signal, 1234),
        )

    def test_full_scale_overshoot_saturates_instead_of_wrapping(self):
        square = np.where(np.sin(2 * np.pi * 200 * np.arange(24000) / 24000) >= 0, 32767, -32768)
        square = square.astype(np.int16)
        out = stream_through(SoxrResampler(24000, 8000), square, 480)
        exact = soxr.resample(square.astype(np.float64), 24000, 8000, quality="HQ")
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
    def test_each_20ms_frame_becomes_640_bytes_on_average(self):
        inbound = InboundAudio()
        signal = speech_at(8000)
        frames = [ulaw_encode(c) for c in chunks(signal[: 160 * 200], 160)]
        out = [inbound.convert(base64.b64encode(f).decode()) for f in frames]
        total = sum(len(o) for o in out)
        # The resampler holds back its delay; nothing else goes missing.
        assert 640 * 200 - 2 * 1700 <= total <= 640 * 200
        assert all(len(o) % 2 == 0 for o in out)

    def test_output_is_the_decoded_speech_at_16k(self):
        signal = speech_at(8000)
        ulaw = ulaw_encode(signal)
        inbound = InboundAudio()
        out = b"".join(inbound.convert(base64.b64encode(f).decode()) for f in chunks(ulaw, 160))
        streamed = np.frombuffer(out, dtype="<i2")
        one_shot = soxr.resample(ulaw_decode(ulaw), 8000, 16000, quality="HQ")[: len(streamed)]
        assert snr_db(one_shot, streamed) >= 50

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
    def test_model_audio_becomes_160_byte_base64_payloads(self):
        outbound = OutboundAudio()
        pcm = speech_at(24000).tobytes()
        payloads = [p for c in chunks(pcm, 960) for p in outbound.convert(c)] + outbound.end_turn()
        frames = decoded(payloads)
        assert all(len(f) == 160 for f in frames)
        samples_8k = len(pcm) // 2 // 3
        assert len(frames) == -(-samples_8k // 160)

    def test_turn_audio_matches_one_shot_resample_and_encode(self):
        pcm = speech_at(24000)
        outbound = OutboundAudio()
        payloads = [p for c in chunks(pcm.tobytes(), 960) for p in outbound.convert(c)]
        payloads += outbound.end_turn()
        streamed = ulaw_decode(b"".join(decoded(payloads)))
        one_shot = ulaw_decode(ulaw_encode(soxr.resample(pcm, 24000, 8000, quality="HQ")))
        assert snr_db(one_shot, streamed[: len(one_shot)]) >= 30  # mu-law flips a few codes
        assert set(b"".join(decoded(payloads))[len(one_shot) :]) <= {0xFF}

    def test_odd_length_chunks_give_the_same_payloads_as_one_big_chunk(self):
        pcm = speech_at(24000).tobytes()
        whole = OutboundAudio()
        expected = whole.convert(pcm) + whole.end_turn()
        odd = OutboundAudio()
        got = []
        sizes = [1, 961, 7, 2, 959, 333, 1, 1]
        pos = 0
        while pos < len(pcm):
            size = sizes[len(got) % len(sizes)]
            got.append(odd.convert(pcm[pos : pos + size]))
            pos += size
        got_payloads = [p for batch in got for p in batch] + odd.end_turn()
        assert got_payloads == expected

    def test_end_turn_pads_the_last_frame_and_leaves_nothing_pending(self):
        outbound = OutboundAudio()
        outbound.convert(tone(24000, 0.1).tobytes())  # 800 samples at 8k: 5 frames
        payloads = outbound.end_turn()
        assert outbound.pending_bytes == 0
        assert all(len(f) == 160 for f in decoded(payloads))
        assert outbound.end_turn() == []

    def test_pending_bytes_counts_the_partial_frame(self):
        outbound = OutboundAudio()
        sent = 0
        for c in chunks(tone(24000, 0.5).tobytes(), 960):
            sent += len(outbound.convert(c))
            assert 0 <= outbound.pending_bytes < 160
        assert sent * 160 + outbound.pending_bytes <= 4000  # the resampler holds the rest
        tail = decoded(outbound.end_turn())
        assert (sent + len(tail)) * 160 == 4000

    def test_next_turn_after_end_turn_is_like_a_fresh_call(self):
        pcm = speech_at(24000).tobytes()
        outbound = OutboundAudio()
        first = [p for c in chunks(pcm, 960) for p in outbound.convert(c)] + outbound.end_turn()
        second = [p for c in chunks(pcm, 960) for p in outbound.convert(c)] + outbound.end_turn()
        assert first == second

    def test_interruption_reset_lets_no_stale_audio_out(self):
        outbound = OutboundAudio()
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
