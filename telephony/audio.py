"""Audio between Twilio and Gemini Live: G.711 mu-law, resampling, 20 ms framing.

Twilio Media Streams carry 8 kHz G.711 mu-law, base64-encoded, in 160-byte (20 ms)
payloads. Gemini Live takes 16 kHz and returns 24 kHz signed 16-bit little-endian PCM.
So every call needs two paths, each run once per 20 ms frame:

    inbound   base64 -> mu-law -> int16 8 kHz -> resample -> s16le 16 kHz   (InboundAudio)
    outbound  s16le 24 kHz -> resample -> int16 8 kHz -> mu-law -> 160-byte frames -> base64
                                                                              (OutboundAudio)

This is the hot path of the bridge, so there are no per-sample Python loops: the codec
is two lookup tables built once at import, the resamplers are short polyphase
minimum-phase FIR filters designed once at import (``FirUpsampler2x``,
``FirDecimator3x``: causal, so every chunk comes back whole at once, with the speech
band 0.13-0.4 ms late inside the signal, where streaming soxr holds back 40-60 ms),
and everything else is numpy views and ``binascii``. No I/O, no asyncio, no logging:
the adapters decide what to do with a ``MalformedMessage``.

The stdlib ``audioop`` is not used (it is gone in Python 3.13); the codec below is
bit-exact with it (see tests/test_audio.py).
"""

from __future__ import annotations

import binascii
from typing import Protocol, runtime_checkable

import numpy as np
import soxr

from telephony.errors import MalformedMessage

__all__ = [
    "ulaw_decode",
    "ulaw_encode",
    "Resampler",
    "FirUpsampler2x",
    "FirDecimator3x",
    "SoxrResampler",
    "RESAMPLERS",
    "inbound_resampler",
    "outbound_resampler",
    "Framer",
    "InboundAudio",
    "OutboundAudio",
    "TWILIO_RATE",
    "LIVE_INPUT_RATE",
    "LIVE_OUTPUT_RATE",
]

TWILIO_RATE = 8_000
LIVE_INPUT_RATE = 16_000
LIVE_OUTPUT_RATE = 24_000

_S16LE = np.dtype("<i2")
# dtype objects rather than types: numpy converts a type on every call (~0.1 µs).
_UINT8 = np.dtype(np.uint8)
_INTP = np.dtype(np.intp)
_EMPTY_PCM = np.zeros(0, dtype=np.int16)

# --------------------------------------------------------------------------------------
# G.711 mu-law
#
# The reference is the ITU-T G.711 algorithm as CPython's audioop implements it
# (Modules/audioop.c, after the Sun g711.c). Written for one sample it reads:
#
#     def encode(sample16):                       # -32768 .. 32767
#         pcm = sample16 >> 2                     # 14-bit; arithmetic (floor) shift
#         if pcm < 0: pcm, mask = -pcm, 0x7F
#         else:       mask = 0xFF
#         pcm = min(pcm, CLIP) + (BIAS >> 2)      # CLIP never bites on 14-bit input
#         seg = first i with pcm <= SEG_UEND[i]   # 8 when above every end
#         if seg >= 8: return 0x7F ^ mask         # out of range: the loudest code
#         return ((seg << 4) | ((pcm >> (seg + 1)) & 0xF)) ^ mask
#
#     def decode(code):
#         u = ~code & 0xFF
#         t = (((u & 0x0F) << 3) + BIAS) << ((u & 0x70) >> 4)
#         return BIAS - t if u & 0x80 else t - BIAS
#
# Note the shift to 14 bits happens *before* taking the magnitude, so -1 encodes like
# -4, not like +1: a "16-bit" formulation that takes abs() first differs on negative
# values, which is why we mirror the C code step by step below.
#
# Both functions are run vectorised over every possible input once, at import.
# --------------------------------------------------------------------------------------

_BIAS = 0x84
_CLIP = 32635
_SEG_UEND = np.array([0x3F, 0x7F, 0xFF, 0x1FF, 0x3FF, 0x7FF, 0xFFF, 0x1FFF], dtype=np.int32)


def _ulaw_encode_all(samples16: np.ndarray) -> np.ndarray:
    """The scalar encoder above, one numpy operation per line."""
    pcm = samples16.astype(np.int32) >> 2
    negative = pcm < 0
    mask = np.where(negative, 0x7F, 0xFF)
    pcm = np.minimum(np.abs(pcm), _CLIP) + (_BIAS >> 2)
    seg = np.searchsorted(_SEG_UEND, pcm, side="left")  # first i with pcm <= end[i]
    code = (seg << 4) | ((pcm >> np.minimum(seg + 1, 8)) & 0xF)
    code = np.where(seg >= 8, 0x7F, code)
    return (code ^ mask).astype(np.uint8)


def _ulaw_decode_all(codes: np.ndarray) -> np.ndarray:
    """The scalar decoder above, one numpy operation per line."""
    u = ~codes.astype(np.int32) & 0xFF
    t = (((u & 0x0F) << 3) + _BIAS) << ((u & 0x70) >> 4)
    return np.where(u & 0x80, _BIAS - t, t - _BIAS).astype(np.int16)


# Lookups use ndarray.take(), a little faster than fancy indexing on 160-element frames.
# Indexed by the code byte.
_ULAW_TO_LINEAR: np.ndarray = _ulaw_decode_all(np.arange(256))
# Indexed by the sample's bit pattern as uint16, so 0..32767 then -32768..-1.
_LINEAR_TO_ULAW: np.ndarray = _ulaw_encode_all(np.arange(65536, dtype=np.uint16).view(np.int16))
_ULAW_TO_LINEAR.setflags(write=False)
_LINEAR_TO_ULAW.setflags(write=False)

ULAW_SILENCE = 0xFF  # decodes to 0


def ulaw_decode(data: bytes) -> np.ndarray:
    """Mu-law bytes -> int16 samples (a new array, one sample per byte)."""
    return _ULAW_TO_LINEAR.take(np.frombuffer(data, dtype=np.uint8))


def ulaw_encode(samples: np.ndarray) -> bytes:
    """Int16 samples -> mu-law bytes (one byte per sample).

    Other integer dtypes are converted with numpy's wrapping cast, so clip first if
    the values may leave the int16 range.
    """
    samples = np.asarray(samples)
    if samples.dtype != np.int16:
        samples = samples.astype(np.int16)
    return _LINEAR_TO_ULAW.take(samples.view(np.uint16)).tobytes()


# --------------------------------------------------------------------------------------
# Resampling
# --------------------------------------------------------------------------------------


@runtime_checkable
class Resampler(Protocol):
    """A streaming int16 mono resampler that keeps its history between calls.

    The audio paths only ever call these three methods, so implementations can be
    swapped per call (the RESAMPLER setting): ``"fir"`` (the default, low latency) or
    ``"soxr-hq"`` (the reference).
    """

    def process(self, pcm: np.ndarray) -> np.ndarray:
        """Resample the next chunk. The FIRs return exactly the ratio's worth at once;
        soxr may return fewer samples (it holds some back) and makes up later."""
        ...

    def flush(self) -> np.ndarray:
        """Return everything still to come, as if the signal ended here (end of a model
        turn): soxr's held-back samples, the FIRs' ring-out. The resampler stays
        usable; the next chunk starts a fresh signal."""
        ...

    def reset(self) -> None:
        """Drop all history (interruption): nothing from before comes out afterwards."""
        ...


class SoxrResampler:
    """`Resampler` over ``soxr.ResampleStream`` (mono; int16 in and out).

    One instance lives for a whole call and direction, so its filter history spans
    the gaps between Twilio frames: resetting it on a gap would click.

    The stream runs in float32 on the raw int16 values, and we round and clip on the
    way out. soxr's own int16 mode adds +-1 LSB TPDF dither from a running RNG, which
    makes digital silence come out as noise (-1 then becomes a non-silent mu-law code)
    and makes the output depend on how the input happened to be chunked. Float32 holds
    every int16 exactly; the conversion costs about a microsecond per frame.

    Latency note: at "HQ", soxr works in blocks and its output comes in bursts
    (8k->16k: ~1,660 samples every 5th 20 ms frame; 24k->8k: ~490 samples every 3rd),
    so in steady state it holds back ~64 ms (8k->16k) and ~43 ms (24k->8k) of audio
    on average, up to ~115 / ~73 ms just before a burst. The Python binding only offers
    the five quality presets; none is both clean and prompt (LQ still holds back
    ~33/~23 ms, QQ folds aliases in at 0 dB). Hence the FIR resamplers below are the
    default and this class is kept as the quality reference.
    """

    __slots__ = ("in_rate", "out_rate", "quality", "_stream")

    def __init__(self, in_rate: int, out_rate: int, quality: str = "HQ") -> None:
        self.in_rate = in_rate
        self.out_rate = out_rate
        self.quality = quality
        self._stream = soxr.ResampleStream(in_rate, out_rate, 1, dtype="float32", quality=quality)

    def process(self, pcm: np.ndarray) -> np.ndarray:
        if not pcm.size:
            return _EMPTY_PCM
        return _to_int16(self._stream.resample_chunk(pcm.astype(np.float32)))

    def flush(self) -> np.ndarray:
        tail = self._stream.resample_chunk(_EMPTY_FLOAT, last=True)
        # After last=True soxr refuses more input; clear() makes it reusable.
        self._stream.clear()
        return _to_int16(tail)

    def reset(self) -> None:
        self._stream.clear()

    def __repr__(self) -> str:
        return f"SoxrResampler({self.in_rate}, {self.out_rate}, quality={self.quality!r})"


_EMPTY_FLOAT = np.zeros(0, dtype=np.float32)
_EMPTY_FLOAT64 = np.zeros(0, dtype=np.float64)


def _to_int16(samples: np.ndarray) -> np.ndarray:
    """Round to nearest and saturate (the filter can overshoot full scale).

    Works in place on a float array it owns. ``np.minimum``/``np.maximum`` rather than
    ``np.clip``, which costs a microsecond more per call in numpy 2.
    """
    if not samples.size:
        return _EMPTY_PCM
    np.rint(samples, out=samples)
    np.minimum(samples, 32767.0, out=samples)
    np.maximum(samples, -32768.0, out=samples)
    return samples.astype(np.int16)


# --------------------------------------------------------------------------------------
# Low-latency FIR resamplers (the default)
#
# Both conversions are by integer factors (8k -> 16k is 2x up, 24k -> 8k is 3x down)
# and both meet at the same telephone band: the caller's audio is band-limited to
# 300-3400 Hz by the network, and anything the 8 kHz side carries must stay below its
# 4 kHz Nyquist. So one specification serves both filters:
#
#     passband 0-3400 Hz, stopband from 4600 Hz (= 8000 - 3400), >= 50 dB
#
# 4600 Hz is the edge that matters in both directions: going down, a tone at 4.6 kHz
# folds onto 8000 - 4600 = 3.4 kHz, the top of the band; going up, 3.4 kHz content
# images to 4.6 kHz.
#
# Streaming: plain causal filters. Each object keeps the input history its taps
# reach back over, so a chunk's output is exactly what one convolution over the whole
# signal would give, however the signal is chunked, and a chunk of n samples yields
# exactly n x ratio samples at once: 160 -> 320, 480 -> 160 (for the decimator, one
# output per input instant divisible by 3 counted from the reset, so odd-sized
# chunks carry the phase over). Nothing is trimmed or held back; the filter's delay
# lives inside the signal instead. That is what keeps the framing whole: a 40 ms
# model chunk (960 samples at 24 kHz) becomes exactly two 20 ms Twilio frames with
# nothing left pending. (Trimming the first delay's worth of output to time-align it
# looks harmless but shifts every frame boundary by the delay: each model chunk then
# left 18.5 ms pending, and half of all onsets waited for the next chunk.)
# flush() pushes zeros through to release the ring-out (`ring_out` samples, the
# response to the last input samples) and resets.
#
# Design, once at import (numpy only), in two steps:
#
# 1. A linear-phase prototype: Kaiser-windowed sinc cut at 4 kHz, for twice the
#    rejection we design for (2 x 58 = 116 dB), with Kaiser's formulas
#    (order >= (A - 7.95) / (2.285 dw), beta = 0.1102 (A - 8.7)): 105 taps at 16 kHz,
#    157 at 24 kHz.
# 2. Its minimum-phase counterpart, by the homomorphic (cepstral) method: fold the
#    real cepstrum of half the log magnitude onto positive quefrencies. The result has
#    the square root of the prototype's magnitude response (so 116 dB -> 58 dB, 55 dB
#    measured after truncation; ripple halves too) and half its length: 52 and 78 taps
#    (the last tap, ~1e-4, is dropped to make a whole number of polyphase branches).
#
# Why minimum phase: a linear-phase filter delays every frequency by half its length
# (1.5 ms for the 58 dB designs); a minimum-phase filter with the same kind of
# magnitude response delays the telephone band by only 0.13-0.44 ms (group delay from
# 300 Hz to 3.4 kHz; 0.14 ms up and 0.17 ms down at 1 kHz). That matters because audio
# moves in whole chunks: a sound whose onset lands in the last filter delay of a
# chunk leaves with the next one (20 ms later inbound, 40 ms later outbound). Measured with
# benchmarks/latency.py, the causal linear-phase filters made 8.8 % of caller onsets
# and 3.3 % of model onsets wait a whole chunk (p99 22 ms inbound, 41 ms outbound);
# minimum phase, 1.6 % and 0.5 % (p99 21 ms and 2-5 ms). The passband stays flat
# within 0.002 dB; what changes is a dispersion of a few tenths of a millisecond
# towards the band edge, the same kind of phase every analogue filter on a phone line
# already has, and far below what the ear resolves in speech. Cost: no zero taps to
# skip (the half-band / third-band structure is gone), so every polyphase branch is
# full length: 1-2 microseconds more per frame.
# --------------------------------------------------------------------------------------

#: Top of the telephone passband (ITU-T G.712: 300-3400 Hz).
TELEPHONE_BAND_TOP_HZ = 3400
#: 8000 - 3400: folds onto (down) or images from (up) the top of the band.
_STOPBAND_HZ = TWILIO_RATE - TELEPHONE_BAND_TOP_HZ
#: Rejection we design for (the tests hold the filters to 50 dB).
_DESIGN_REJECTION_DB = 58.0
#: The minimum-phase step takes the square root of the magnitude: halves the dB.
_PROTOTYPE_REJECTION_DB = 2 * _DESIGN_REJECTION_DB
#: FFT size of the cepstral step. The cepstrum's time aliasing moves the taps by < 1e-4
#: and the rejection by < 0.1 dB against 2^16, at a tenth of the import time (3 ms).
_CEPSTRUM_FFT = 1 << 14


def _kaiser_beta(rejection_db: float) -> float:
    """Kaiser's empirical window parameter for a given stopband rejection (dB)."""
    a = rejection_db
    if a > 50:
        return 0.1102 * (a - 8.7)
    if a >= 21:
        return 0.5842 * (a - 21) ** 0.4 + 0.07886 * (a - 21)
    return 0.0


def _design_lowpass(rate: int, factor: int, rejection_db: float) -> np.ndarray:
    """Linear-phase Kaiser-windowed sinc at `rate`, cut at 4 kHz (= rate / (2 * factor)).

    The half-length is rounded up to a multiple of `factor` and the rounding is spent
    on a stronger window; the taps at multiples of `factor` from the centre are
    exactly zero (an M-th band filter). Gain 1 at DC.
    """
    transition = 2 * np.pi * (_STOPBAND_HZ - TELEPHONE_BAND_TOP_HZ) / rate  # rad/sample
    min_order = (rejection_db - 7.95) / (2.285 * transition)
    half = factor * int(np.ceil(min_order / (2 * factor)))
    beta = _kaiser_beta(2.285 * transition * 2 * half + 7.95)
    offsets = np.arange(-half, half + 1)
    taps = np.sinc(offsets / factor) * np.kaiser(2 * half + 1, beta)
    taps[(offsets % factor == 0) & (offsets != 0)] = 0.0  # sinc's zeros, exactly
    return taps / taps.sum()


def _minimum_phase(prototype: np.ndarray) -> np.ndarray:
    """The minimum-phase filter whose magnitude is the square root of `prototype`'s.

    Homomorphic method: for a minimum-phase filter, log|H| and the phase are a
    Hilbert pair, so its complex cepstrum is causal. Take the real cepstrum of
    log(sqrt|H|), fold the negative quefrencies onto the positive ones (double them,
    zero the rest) and exponentiate back. The prototype's stopband zeros sit on the
    unit circle, where the log is -inf; a floor far below the stopband avoids that.
    Returns (len(prototype) + 1) // 2 taps, where the energy has died out.
    """
    n = _CEPSTRUM_FFT
    magnitude = np.abs(np.fft.fft(prototype, n))
    magnitude += 1e-7 * magnitude[magnitude > 0].min()
    cepstrum = np.fft.ifft(0.5 * np.log(magnitude)).real
    fold = np.zeros(n)
    fold[0] = fold[n // 2] = 1.0
    fold[1 : n // 2] = 2.0
    taps = np.fft.ifft(np.exp(np.fft.fft(cepstrum * fold))).real
    return taps[: (len(prototype) + 1) // 2]


#: The FIR taps are whole multiples of 2^-_TAP_BITS (see "How the FIRs stream cheaply").
_TAP_BITS = 30


def _dyadic(taps: np.ndarray) -> np.ndarray:
    """`taps` rounded to whole multiples of 2^-30, summing to exactly 1.

    The rounding moves each tap by at most 2^-31 (5e-10); what it leaves of the sum
    (a few 2^-30) goes onto the largest tap, where it matters least.
    """
    scale = float(1 << _TAP_BITS)
    q = np.round(taps * scale)
    q[np.argmax(np.abs(q))] += scale - q.sum()  # integers below 2^53: exact
    return q / scale


def _upsampler_taps() -> np.ndarray:
    """52 minimum-phase taps at 16 kHz for 2x, each polyphase branch at unity DC gain.

    The filter runs over the zero-stuffed input, so its gain is 2, one per branch.
    Making each branch sum to exactly 1 (a change of ~1e-4) puts an exact zero at
    8 kHz, so a constant input comes out constant (mismatched branches would leave a
    faint 8 kHz ripple). `_dyadic` keeps each branch's sum exactly 1.
    """
    taps = _minimum_phase(_design_lowpass(LIVE_INPUT_RATE, 2, _PROTOTYPE_REJECTION_DB))
    taps = taps[: len(taps) // 2 * 2].copy()
    taps[0::2] = _dyadic(taps[0::2] / taps[0::2].sum())
    taps[1::2] = _dyadic(taps[1::2] / taps[1::2].sum())
    return taps


def _decimator_taps() -> np.ndarray:
    """78 minimum-phase taps at 24 kHz for 3x (three branches of 26), gain 1 at DC."""
    taps = _minimum_phase(_design_lowpass(LIVE_OUTPUT_RATE, 3, _PROTOTYPE_REJECTION_DB))
    taps = taps[: len(taps) // 3 * 3]
    return _dyadic(taps / taps.sum())


# How the FIRs stream cheaply. A 20 ms frame is only 160-480 samples, so the cost is
# per call, not arithmetic: numpy's (~0.2-0.4 µs each) and BLAS's (~10 ns per dot
# product asked for, however short). The implementation keeps both few per frame, and
# no output bit depends on how the sums are computed:
#
# - Dyadic taps: every tap is a whole multiple of 2^-30 (`_dyadic`: a change of a few
#   1e-9 at most, and each upsampler branch and the whole decimator still sum to
#   exactly 1). The input is integer-valued (int16, or decoded mu-law), so every
#   product and every partial sum is a whole number of 2^-30 units, fewer than
#   2.75 x 2^15 x 2^30 < 2^47 of them (2.75: the largest sum of |taps| per output):
#   float64 holds each one exactly and no addition ever rounds. So the result cannot
#   depend on the order of summation: BLAS's kernels (blocking, FMA, vector width,
#   whatever the machine), np.convolve (the tests' reference) and any chunking give
#   the same bits.
# - One matrix product per chunk. The outputs are computed in blocks (16 input
#   instants = 32 outputs up, 16 outputs down); a block's inputs are one contiguous
#   window of the buffer, and its outputs are that window times a constant
#   `_matrix` (window x outputs, the taps shifted along its columns, zeros elsewhere).
#   The windows are the rows of one strided view (overlapping; np.dot copies them
#   for BLAS), so a whole chunk is one np.dot: one gemm instead of a dot per output
#   and branch. The last block's window reaches up to `_overhang` samples past the
#   chunk into the buffer; those outputs are discarded, and the causal taps meet the
#   samples there only with zeros. So the buffer must hold finite values there:
#   zeros from allocation, then past chunks (process() clears them after non-int16
#   input, which might be inf or NaN, as 0 x NaN is NaN).
# - The input history and the chunk live in one preallocated float64 buffer (history
#   first), so there is no concatenate; the views each chunk length needs (the chunk's
#   slot, the windows, the output) are built once per length and cached. After
#   filtering, the last `_history_len` samples move to the front.
# - Rounding: np.rint, then one lookup in a saturating table indexed by the rounded
#   value (negative indices count from the end) instead of minimum + maximum + astype.
#   From int16 input the output cannot leave +-_FIR_BOUND (32768 x the largest sum of
#   |taps| per output), so the table covers it; other input (or history from it)
#   falls back to `_to_int16`. The outbound table goes straight to mu-law.
# - The paths skip the int16 stage where they can: InboundAudio decodes mu-law with a
#   float table straight into the upsampler's buffer, OutboundAudio encodes the
#   decimator's rounded output straight to mu-law.


def _saturating_index_table(bound: int) -> np.ndarray:
    """int16 t with t[v] == clip(v, -32768, 32767) for every integer -bound <= v < bound
    (numpy indexing: negative v counts from the end)."""
    v = np.arange(2 * bound)
    v[bound:] -= 2 * bound
    return np.clip(v, -32768, 32767).astype(np.int16)


def _block_matrix(branches: tuple[np.ndarray, ...], block: int, newest: int, step: int) -> np.ndarray:
    """The (window x outputs) matrix of one block: a window of inputs times it is the
    block's outputs.

    Output j of instant b (b < block) is sum_k branches[j][k] x[newest + step b - k],
    positions in the window; it is column len(branches) b + j, which holds the
    branch reversed, ending at row newest + step b, and zeros elsewhere.
    """
    window = newest + step * (block - 1) + 1
    matrix = np.zeros((window, block * len(branches)))
    for b in range(block):
        end = newest + step * b + 1
        for j, taps in enumerate(branches):
            matrix[end - len(taps) : end, len(branches) * b + j] = taps[::-1]
    matrix.setflags(write=False)
    return matrix


#: Chunk length a FIR's buffer first holds (Live sends 960 samples); it grows for longer ones.
_FIR_CAPACITY = 1024
#: The most views cached per FIR (one entry per chunk length, and phase when decimating).
_FIR_PLANS = 64


class _StreamingFir:
    """What both FIR resamplers share: causal streaming, and a flush that emits the
    ring-out (`ring_out` samples, the response to the last input) then resets.

    Subclasses keep their history in preallocated arrays (`_allocate`, `reset`) and
    define `_filter`, the float output of one chunk.
    """

    ring_out: int
    _flush_zeros: int
    _history_len: int
    #: Buffer past the chunk that the last block's window may read (see above).
    _overhang: int
    __slots__ = ()

    def __init__(self) -> None:
        self._allocate(_FIR_CAPACITY)
        self.reset()

    def process(self, pcm: np.ndarray) -> np.ndarray:
        if not len(pcm):
            return _EMPTY_PCM
        self._fed = True
        out = self._filter(pcm)
        if pcm.dtype == np.int16:  # then the output stays inside the saturating table
            try:
                return _SATURATE[np.rint(out, out).astype(_INTP)]
            except IndexError:  # history from wider input (process() takes any dtype)
                pass
        else:  # might not be finite: keep it out of later blocks' overhang
            self._buffer[self._history_len :] = 0.0
        return _to_int16(out)

    def flush(self) -> np.ndarray:
        """The ring-out (`ring_out` samples), then a reset; nothing if nothing was fed."""
        if not self._fed:
            return _EMPTY_PCM
        tail = self._filter(np.zeros(self._flush_zeros, dtype=np.float64))
        self.reset()
        return _to_int16(tail[: self.ring_out])

    def reset(self) -> None:  # pragma: no cover - each filter defines its state
        raise NotImplementedError

    def _allocate(self, capacity: int) -> None:  # pragma: no cover
        """Fresh zeroed state for chunks of up to `capacity` samples (drops the views)."""
        raise NotImplementedError

    def _make_room(self, n: int) -> None:
        """Before planning an n-sample chunk: grow the buffer if it cannot hold one
        (keeping the history), and keep the cache of views bounded."""
        h, spare = self._history_len, self._overhang
        if h + n + spare > len(self._buffer):
            history = self._buffer[:h].copy()
            self._allocate(max(n, 2 * (len(self._buffer) - h - spare)))
            self._buffer[:h] = history
        if len(self._plans) >= _FIR_PLANS:
            self._plans.clear()

    def _filter(self, pcm: np.ndarray) -> np.ndarray:  # pragma: no cover
        raise NotImplementedError


class FirUpsampler2x(_StreamingFir):
    """`Resampler` 8 kHz -> 16 kHz (caller -> Live): a 52-tap minimum-phase FIR.

    Causal and prompt: every chunk of n samples comes back as 2n samples at once; the
    band arrives 0.13-0.4 ms late inside the signal (0.14 ms at 1 kHz). Polyphase:
    the zeros stuffed between input samples are never multiplied; even and odd output
    samples come from two 26-tap branches over the input. Computed in blocks of 16
    input instants, 32 outputs from a 41-sample window: a 20 ms frame is one
    (10 x 41) @ (41 x 32) matrix product.
    """

    in_rate = TWILIO_RATE
    out_rate = LIVE_INPUT_RATE
    #: The filter at 16 kHz over the zero-stuffed input (gain 2; whole multiples of
    #: 2^-30, each branch summing to exactly 1; read-only).
    taps: np.ndarray = _upsampler_taps()
    taps.setflags(write=False)

    _history_len = len(taps) // 2 - 1  # 25 input samples
    #: Samples flush() returns: the response to the last input, to its end (3.1 ms).
    ring_out = 2 * _history_len

    # Output 2m + j = sum_k taps[2k + j] x[m - k]: branch j is taps[j::2]. A block of
    # input instants m = block a + b (b < block) reads x[block a - 25 ..], a window
    # that starts at buf[block a] and holds x[m] at position 25 + b; its outputs come
    # out interleaved (2b, 2b + 1), so the rows of blocks read on as the output.
    # (16: the fastest block here, and 160 samples make whole blocks.)
    _block = 16
    _matrix = _block_matrix((taps[0::2], taps[1::2]), _block, newest=_history_len, step=1)
    _window = len(_matrix)  # 41
    _overhang = _window - 1 - _history_len  # the last window starts inside the chunk

    # _buffer: the history, room for a chunk, the overhang (float64); _output: the
    # float output, a row per block; _plans: chunk length -> views into both.
    __slots__ = ("_buffer", "_output", "_plans", "_fed")

    _flush_zeros = _history_len

    def reset(self) -> None:
        # The rest is overwritten before use, or only read into discarded outputs.
        self._buffer[: self._history_len] = 0.0
        self._fed = False

    def _allocate(self, capacity: int) -> None:
        self._buffer = np.zeros(self._history_len + capacity + self._overhang, dtype=np.float64)
        self._output = np.empty((-(-capacity // self._block), 2 * self._block), dtype=np.float64)
        self._plans = {}

    def _plan(self, n: int) -> tuple:
        """The views an n-sample chunk needs: (slot, windows, their output rows, the
        output, history, its next contents)."""
        h = self._history_len
        self._make_room(n)
        buf = self._buffer
        blocks = -(-n // self._block)
        windows = np.lib.stride_tricks.sliding_window_view(buf, self._window)[:: self._block][:blocks]
        rows = self._output[:blocks]
        plan = (buf[h : h + n], windows, rows, rows.reshape(-1)[: 2 * n], buf[:h], buf[n : n + h])
        self._plans[n] = plan
        return plan

    def _filter(self, pcm: np.ndarray) -> np.ndarray:
        """Causal filter output for this chunk (float, 2 samples per input sample; a
        view of `_output`, valid until the next call)."""
        n = len(pcm)
        slot, windows, rows, out, history, tail = self._plans.get(n) or self._plan(n)
        slot[...] = pcm  # float64 whatever the input dtype
        np.dot(windows, self._matrix, out=rows)
        history[...] = tail
        return out

    def _ulaw_to_s16le(self, ulaw: bytes) -> bytes:
        """``process(ulaw_decode(ulaw))`` as s16le bytes, decoding into the buffer.

        `_filter` written out again: on this path a Python call is worth saving.
        """
        n = len(ulaw)
        slot, windows, rows, out, history, tail = self._plans.get(n) or self._plan(n)
        # mode="clip" (codes are always in range): take() buffers `out` in "raise" mode.
        _ULAW_TO_FLOAT.take(np.frombuffer(ulaw, _UINT8), out=slot, mode="clip")
        self._fed = True
        np.dot(windows, self._matrix, out=rows)
        history[...] = tail
        try:
            return _SATURATE_LE[np.rint(out, out).astype(_INTP)].tobytes()
        except IndexError:  # history from wider input given to process()
            return _to_int16(out).astype(_S16LE, copy=False).tobytes()

    def __repr__(self) -> str:
        return f"FirUpsampler2x({len(self.taps)} taps, minimum phase)"


class FirDecimator3x(_StreamingFir):
    """`Resampler` 24 kHz -> 8 kHz (Live -> caller): a 78-tap minimum-phase FIR.

    Causal and prompt: 480 samples in, 160 out, at once; the band arrives 0.16-0.44 ms
    late inside the signal (0.17 ms at 1 kHz). Only every 3rd output of the filter is
    computed, in blocks of 16 outputs from a 123-sample window: 480 samples in are one
    (10 x 123) @ (123 x 16) matrix product. Which input sample is "every 3rd"
    carries over between chunks whose length is not a multiple of 3, so the output
    count after N input samples is ceil(N / 3).
    """

    in_rate = LIVE_OUTPUT_RATE
    out_rate = TWILIO_RATE
    #: The lowpass at 24 kHz (whole multiples of 2^-30 summing to exactly 1; read-only).
    taps: np.ndarray = _decimator_taps()
    taps.setflags(write=False)

    _history_len = len(taps) - 1  # 77 input samples
    #: Samples flush() returns: the response to the last input, to its end (3.25 ms).
    ring_out = len(taps) // 3

    # Output at input index g: sum_k taps[k] x[g - k]. A block's outputs sit 3 input
    # samples apart, at g = g0 + 3b (b < block); its window starts at g0 - 77 and
    # holds x[g] at position 77 + 3b. Blocks start 3 x block samples apart.
    # (16: the fastest block here, and 480 samples make whole blocks.)
    _block = 16
    _matrix = _block_matrix((taps,), _block, newest=_history_len, step=3)
    _window = len(_matrix)  # 123
    _overhang = _window - 1 - _history_len  # the last window starts inside the chunk

    # _buffer: the history, room for a chunk, the overhang (float64); _output: the
    # float output, a row per block; _plans: (chunk length, phase) -> views into both.
    __slots__ = ("_buffer", "_output", "_plans", "_phase", "_fed")

    _flush_zeros = 3 * ring_out  # holds ring_out output instants whatever the phase

    def reset(self) -> None:
        # The rest is overwritten before use, or only read into discarded outputs.
        self._buffer[: self._history_len] = 0.0
        self._phase = 0  # index in the next chunk of the next output instant
        self._fed = False

    def _allocate(self, capacity: int) -> None:
        self._buffer = np.zeros(self._history_len + capacity + self._overhang, dtype=np.float64)
        self._output = np.empty((-(-capacity // (3 * self._block)), self._block), dtype=np.float64)
        self._plans = {}

    def _plan(self, n: int, phase: int) -> tuple:
        """The views an n-sample chunk whose first output instant is sample `phase`
        needs: (slot, history, its next contents, windows, their output rows, the
        output; the last three None when the chunk has no output instant)."""
        h = self._history_len
        self._make_room(n)
        buf = self._buffer
        count = (n - phase + 2) // 3
        windows = rows = out = None
        if count > 0:
            # The first output instant is buf[h + phase]: its window starts at phase.
            blocks = -(-count // self._block)
            step = 3 * self._block
            windows = np.lib.stride_tricks.sliding_window_view(buf[phase:], self._window)[::step][:blocks]
            rows = self._output[:blocks]
            out = rows.reshape(-1)[:count]
        plan = self._plans[3 * n + phase] = (buf[h : h + n], buf[:h], buf[n : n + h], windows, rows, out)
        return plan

    def _filter(self, pcm: np.ndarray) -> np.ndarray:
        """Causal filter output at every 3rd input instant within this chunk (float;
        a view of `_output`, valid until the next call)."""
        n = len(pcm)
        phase = self._phase
        self._phase = (phase - n) % 3
        slot, history, tail, windows, rows, out = self._plans.get(3 * n + phase) or self._plan(n, phase)
        slot[...] = pcm  # float64 whatever the input dtype
        if out is None:
            history[...] = tail
            return _EMPTY_FLOAT64
        np.dot(windows, self._matrix, out=rows)
        history[...] = tail
        return out

    def _to_ulaw(self, pcm: np.ndarray) -> bytes:
        """``ulaw_encode(process(pcm))`` for int16 `pcm`, without the int16 stage.

        `_filter` written out again: on this path a Python call is worth saving.
        """
        self._fed = True
        n = len(pcm)
        phase = self._phase
        self._phase = (phase - n) % 3
        slot, history, tail, windows, rows, out = self._plans.get(3 * n + phase) or self._plan(n, phase)
        slot[...] = pcm
        if out is None:
            history[...] = tail
            return b""
        np.dot(windows, self._matrix, out=rows)
        history[...] = tail
        try:
            return _LINEAR_TO_ULAW_SATURATED[np.rint(out, out).astype(_INTP)].tobytes()
        except IndexError:  # history from wider input given to process()
            return _LINEAR_TO_ULAW.take(_to_int16(out).view(np.uint16)).tobytes()

    def __repr__(self) -> str:
        return f"FirDecimator3x({len(self.taps)} taps, minimum phase)"


#: |output| bound of both FIRs for int16 input: 32768 x the largest sum of |taps| that
#: makes one output (2.75, the decimator's), plus a margin.
_TAPS_PER_OUTPUT = (FirUpsampler2x.taps[0::2], FirUpsampler2x.taps[1::2], FirDecimator3x.taps)
_FIR_BOUND = 2 + int(32768 * max(np.abs(taps).sum() for taps in _TAPS_PER_OUTPUT))
#: Rounded FIR output -> saturated int16 (see "How the FIRs stream cheaply").
_SATURATE: np.ndarray = _saturating_index_table(_FIR_BOUND)
_SATURATE_LE: np.ndarray = _SATURATE.astype(_S16LE, copy=False)
#: Rounded FIR output -> mu-law code of the saturated value.
_LINEAR_TO_ULAW_SATURATED: np.ndarray = _LINEAR_TO_ULAW.take(_SATURATE.view(np.uint16))
#: Mu-law code -> linear value as float64 (exact), for decoding into the FIR buffer.
_ULAW_TO_FLOAT: np.ndarray = _ULAW_TO_LINEAR.astype(np.float64)
for _table in (_SATURATE, _SATURATE_LE, _LINEAR_TO_ULAW_SATURATED, _ULAW_TO_FLOAT):
    _table.setflags(write=False)
del _table


#: Resampler implementations selectable with the RESAMPLER setting (first = default).
RESAMPLERS = ("fir", "soxr-hq")


def inbound_resampler(kind: str = "fir") -> Resampler:
    """Twilio 8 kHz -> Live input 16 kHz."""
    if kind == "fir":
        return FirUpsampler2x()
    if kind == "soxr-hq":
        return SoxrResampler(TWILIO_RATE, LIVE_INPUT_RATE)
    raise ValueError(f"unknown resampler {kind!r} (expected one of {RESAMPLERS})")


def outbound_resampler(kind: str = "fir") -> Resampler:
    """Live output 24 kHz -> Twilio 8 kHz."""
    if kind == "fir":
        return FirDecimator3x()
    if kind == "soxr-hq":
        return SoxrResampler(LIVE_OUTPUT_RATE, TWILIO_RATE)
    raise ValueError(f"unknown resampler {kind!r} (expected one of {RESAMPLERS})")


# --------------------------------------------------------------------------------------
# Framing
# --------------------------------------------------------------------------------------


class Framer:
    """Cuts a mu-law stream into exact 160-byte (20 ms at 8 kHz) payloads.

    Twilio plays whatever it gets, but marks and clears are counted in frames and
    fixed-size frames keep that accounting (and playback pacing) exact. A partial
    frame waits for the next push.
    """

    FRAME_BYTES = 160
    __slots__ = ("_buffer",)

    def __init__(self) -> None:
        self._buffer = bytearray()

    @property
    def pending_bytes(self) -> int:
        """Bytes held in the partial frame (0..159)."""
        return len(self._buffer)

    def push(self, ulaw: bytes) -> list[bytes]:
        size = self.FRAME_BYTES
        buffer = self._buffer
        if not buffer and not len(ulaw) % size:  # the common case: whole frames
            if len(ulaw) == size:
                return [bytes(ulaw)]
            return [bytes(ulaw[i : i + size]) for i in range(0, len(ulaw), size)]
        buffer += ulaw
        whole = len(buffer) - len(buffer) % size
        if not whole:
            return []
        frames = [bytes(buffer[i : i + size]) for i in range(0, whole, size)]
        del buffer[:whole]
        return frames

    def flush(self) -> bytes | None:
        """The partial frame padded with mu-law silence, or None when there is none."""
        if not self._buffer:
            return None
        frame = bytes(self._buffer).ljust(self.FRAME_BYTES, bytes((ULAW_SILENCE,)))
        self._buffer.clear()
        return frame

    def reset(self) -> None:
        self._buffer.clear()


# --------------------------------------------------------------------------------------
# The two per-call paths
# --------------------------------------------------------------------------------------


class InboundAudio:
    """One per call: a Twilio ``media.payload`` -> bytes for Live's realtime input."""

    # _ulaw_to_s16le: the FIR's fused decode-and-resample, or None for other resamplers.
    __slots__ = ("_resampler", "_ulaw_to_s16le")

    def __init__(self, resampler: Resampler | None = None) -> None:
        self._resampler = resampler if resampler is not None else inbound_resampler()
        fir = type(self._resampler) is FirUpsampler2x
        self._ulaw_to_s16le = self._resampler._ulaw_to_s16le if fir else None

    def convert(self, payload_b64: str) -> bytes:
        """Base64 mu-law 8 kHz -> s16le 16 kHz bytes.

        With the FIR the output is exactly 4x the decoded length, every call from the
        first (20 ms in, 20 ms out); soxr releases its output in bursts, so with soxr
        a given call may return b"". Raises
        ``MalformedMessage`` for anything that is not non-empty standard base64.
        """
        try:
            # strict_mode: reject stray characters and bad padding instead of
            # silently dropping them, which would shift every later sample.
            ulaw = binascii.a2b_base64(payload_b64, strict_mode=True)
        except (binascii.Error, ValueError, TypeError) as exc:
            raise MalformedMessage(f"media payload is not valid base64: {exc}") from None
        if not ulaw:
            raise MalformedMessage("media payload is empty")
        fast = self._ulaw_to_s16le
        if fast is not None:
            return fast(ulaw)
        pcm16k = self._resampler.process(_ULAW_TO_LINEAR.take(np.frombuffer(ulaw, dtype=np.uint8)))
        return pcm16k.astype(_S16LE, copy=False).tobytes()

    def reset(self) -> None:
        """Drop resampler history (only for a new stream; gaps do not need it)."""
        self._resampler.reset()


class OutboundAudio:
    """One per call: Live's 24 kHz s16le output -> base64 160-byte Twilio payloads."""

    # _to_ulaw: the FIR's fused resample-and-encode, or None for other resamplers.
    __slots__ = ("_resampler", "_to_ulaw", "_framer", "_odd_byte")

    def __init__(self, resampler: Resampler | None = None) -> None:
        self._resampler = resampler if resampler is not None else outbound_resampler()
        fir = type(self._resampler) is FirDecimator3x
        self._to_ulaw = self._resampler._to_ulaw if fir else None
        self._framer = Framer()
        self._odd_byte = b""

    @property
    def pending_bytes(self) -> int:
        """Mu-law bytes held in the partial frame (not yet sent)."""
        return self._framer.pending_bytes

    def convert(self, pcm24: bytes) -> list[str]:
        """Resample, encode and frame one chunk of model audio.

        Chunks need not be sample-aligned: an odd trailing byte waits for the next one.
        """
        if self._odd_byte:
            pcm24 = self._odd_byte + pcm24
            self._odd_byte = b""
        if len(pcm24) & 1:
            self._odd_byte = pcm24[-1:]
            pcm24 = pcm24[:-1]
        if not pcm24:
            return []
        to_ulaw = self._to_ulaw
        if to_ulaw is not None:
            b2a = binascii.b2a_base64
            frames = self._framer.push(to_ulaw(np.frombuffer(pcm24, _S16LE)))
            # decode(): base64 is ASCII, and UTF-8 is the codec's fast path.
            return [b2a(frame, newline=False).decode() for frame in frames]
        pcm8k = self._resampler.process(np.frombuffer(pcm24, dtype=_S16LE))
        return self._frames(pcm8k)

    def end_turn(self) -> list[str]:
        """Drain the resampler and send the last partial frame padded with silence.

        With the FIR the drain is its ring-out (3.25 ms), so a turn of whole 20 ms
        frames ends with one more, mostly silent, frame. A lone odd byte left over is
        half a sample and is dropped. The object is
        ready for the next turn.
        """
        self._odd_byte = b""
        payloads = self._frames(self._resampler.flush())
        last = self._framer.flush()
        if last is not None:
            payloads.append(binascii.b2a_base64(last, newline=False).decode("ascii"))
        return payloads

    def reset(self) -> None:
        """Interruption: forget everything in flight so no stale audio comes out later."""
        self._resampler.reset()
        self._framer.reset()
        self._odd_byte = b""

    def _frames(self, pcm8k: np.ndarray) -> list[str]:
        if not pcm8k.size:
            return []
        if pcm8k.dtype != np.int16:  # a Resampler should return int16; be safe anyway
            pcm8k = pcm8k.astype(np.int16)
        ulaw = _LINEAR_TO_ULAW.take(pcm8k.view(np.uint16)).tobytes()
        b2a = binascii.b2a_base64
        return [b2a(frame, newline=False).decode("ascii") for frame in self._framer.push(ulaw)]
