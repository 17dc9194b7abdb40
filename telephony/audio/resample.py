"""Streaming int16 resamplers between the Twilio and Live rates.

The default is a pair of short polyphase minimum-phase FIR filters
(``FirUpsampler2x``, ``FirDecimator3x``; taps from `filter_design`): causal, so
every chunk comes back whole at once, with the speech band 0.13-0.4 ms late
inside the signal, where streaming soxr holds back 40-60 ms. ``SoxrResampler`` is
kept as the quality reference. No I/O, no asyncio, no logging.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import numpy as np
import soxr

from .filter_design import decimator_taps, upsampler_taps
from .mulaw import LINEAR_TO_ULAW, ULAW_TO_LINEAR
from .rates import LIVE_INPUT_RATE, LIVE_OUTPUT_RATE, TWILIO_RATE

__all__ = [
    "Resampler",
    "FirUpsampler2x",
    "FirDecimator3x",
    "SoxrResampler",
    "RESAMPLERS",
    "inbound_resampler",
    "outbound_resampler",
]

_S16LE = np.dtype("<i2")
# dtype objects rather than types: numpy converts a type on every call (~0.1 µs).
_UINT8 = np.dtype(np.uint8)
_INTP = np.dtype(np.intp)
_EMPTY_PCM = np.zeros(0, dtype=np.int16)

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
# The taps, and why minimum phase, are in `filter_design`.
# --------------------------------------------------------------------------------------


# How the FIRs stream cheaply. A 20 ms frame is only 160-480 samples, so the cost is
# per call, not arithmetic: numpy's (~0.2-0.4 µs each) and BLAS's (~10 ns per dot
# product asked for, however short). The implementation keeps both few per frame, and
# no output bit depends on how the sums are computed:
#
# - Dyadic taps: every tap is a whole multiple of 2^-30 (`filter_design`: a change of a few
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
    taps: np.ndarray = upsampler_taps()
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

    def ulaw_to_s16le(self, ulaw: bytes) -> bytes:
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
    taps: np.ndarray = decimator_taps()
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

    def to_ulaw(self, pcm: np.ndarray) -> bytes:
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
            return LINEAR_TO_ULAW_SATURATED[np.rint(out, out).astype(_INTP)].tobytes()
        except IndexError:  # history from wider input given to process()
            return LINEAR_TO_ULAW.take(_to_int16(out).view(np.uint16)).tobytes()

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
LINEAR_TO_ULAW_SATURATED: np.ndarray = LINEAR_TO_ULAW.take(_SATURATE.view(np.uint16))
#: Mu-law code -> linear value as float64 (exact), for decoding into the FIR buffer.
_ULAW_TO_FLOAT: np.ndarray = ULAW_TO_LINEAR.astype(np.float64)
for _table in (_SATURATE, _SATURATE_LE, LINEAR_TO_ULAW_SATURATED, _ULAW_TO_FLOAT):
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
