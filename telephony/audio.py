"""Audio between Twilio and Gemini Live: G.711 mu-law, resampling, 20 ms framing.

Twilio Media Streams carry 8 kHz G.711 mu-law, base64-encoded, in 160-byte (20 ms)
payloads. Gemini Live takes 16 kHz and returns 24 kHz signed 16-bit little-endian PCM.
So every call needs two paths, each run once per 20 ms frame:

    inbound   base64 -> mu-law -> int16 8 kHz -> resample -> s16le 16 kHz   (InboundAudio)
    outbound  s16le 24 kHz -> resample -> int16 8 kHz -> mu-law -> 160-byte frames -> base64
                                                                              (OutboundAudio)

This is the hot path of the bridge, so there are no per-sample Python loops: the codec
is two lookup tables built once at import, and everything else is numpy views and
``binascii``. No I/O, no asyncio, no logging: the adapters decide what to do with a
``MalformedMessage``.

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
    "SoxrResampler",
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

    This is the seam for swapping soxr for a lower-latency filter: the audio paths
    only ever call these three methods.
    """

    def process(self, pcm: np.ndarray) -> np.ndarray:
        """Resample the next chunk; may return fewer samples than the ratio implies
        (the filter holds some back) and makes up for it on later calls."""
        ...

    def flush(self) -> np.ndarray:
        """Return everything held back, as if the signal ended here (end of a model
        turn). The resampler stays usable; the next chunk starts a fresh signal."""
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
    (8k->16k: ~1,660 samples every 5th 20 ms frame; 24k->8k: ~490 samples every 3rd).
    The averages are exact; the bursts cost latency, which a later FIR replaces.
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


def _to_int16(samples: np.ndarray) -> np.ndarray:
    """Round to nearest and saturate (the filter can overshoot full scale)."""
    if not samples.size:
        return _EMPTY_PCM
    np.rint(samples, out=samples)
    np.clip(samples, -32768, 32767, out=samples)
    return samples.astype(np.int16)


#: Resampler implementations selectable with the RESAMPLER setting.
RESAMPLERS = ("soxr-hq",)


def inbound_resampler(kind: str = "soxr-hq") -> Resampler:
    """Twilio 8 kHz -> Live input 16 kHz."""
    if kind == "soxr-hq":
        return SoxrResampler(TWILIO_RATE, LIVE_INPUT_RATE)
    raise ValueError(f"unknown resampler {kind!r} (expected one of {RESAMPLERS})")


def outbound_resampler(kind: str = "soxr-hq") -> Resampler:
    """Live output 24 kHz -> Twilio 8 kHz."""
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
        if not buffer and len(ulaw) == size:  # the common case: one whole frame
            return [bytes(ulaw)]
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

    __slots__ = ("_resampler",)

    def __init__(self, resampler: Resampler | None = None) -> None:
        self._resampler = resampler if resampler is not None else inbound_resampler()

    def convert(self, payload_b64: str) -> bytes:
        """Base64 mu-law 8 kHz -> s16le 16 kHz bytes.

        The output is 4x the decoded length on average, but soxr releases it in
        bursts, so a given call may return b"". Raises ``MalformedMessage`` for
        anything that is not non-empty standard base64.
        """
        try:
            # strict_mode: reject stray characters and bad padding instead of
            # silently dropping them, which would shift every later sample.
            ulaw = binascii.a2b_base64(payload_b64, strict_mode=True)
        except (binascii.Error, ValueError, TypeError) as exc:
            raise MalformedMessage(f"media payload is not valid base64: {exc}") from None
        if not ulaw:
            raise MalformedMessage("media payload is empty")
        pcm16k = self._resampler.process(_ULAW_TO_LINEAR.take(np.frombuffer(ulaw, dtype=np.uint8)))
        return pcm16k.astype(_S16LE, copy=False).tobytes()

    def reset(self) -> None:
        """Drop resampler history (only for a new stream; gaps do not need it)."""
        self._resampler.reset()


class OutboundAudio:
    """One per call: Live's 24 kHz s16le output -> base64 160-byte Twilio payloads."""

    __slots__ = ("_resampler", "_framer", "_odd_byte")

    def __init__(self, resampler: Resampler | None = None) -> None:
        self._resampler = resampler if resampler is not None else outbound_resampler()
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
        pcm8k = self._resampler.process(np.frombuffer(pcm24, dtype=_S16LE))
        return self._frames(pcm8k)

    def end_turn(self) -> list[str]:
        """Drain the resampler and send the last partial frame padded with silence.

        A lone odd byte left over is half a sample and is dropped. The object is
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
