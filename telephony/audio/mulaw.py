"""G.711 mu-law, the codec of Twilio Media Streams, as two lookup tables.

No per-sample Python: both directions are built once at import by running the
reference algorithm vectorised over every possible input, then each frame is one
``take()``. The stdlib ``audioop`` is not used (it is gone in Python 3.13); this
codec is bit-exact with it (see tests/test_audio.py).
"""

from __future__ import annotations

import numpy as np

__all__ = ["ULAW_SILENCE", "ULAW_TO_LINEAR", "LINEAR_TO_ULAW", "ulaw_decode", "ulaw_encode"]

# --------------------------------------------------------------------------------------
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
ULAW_TO_LINEAR: np.ndarray = _ulaw_decode_all(np.arange(256))
# Indexed by the sample's bit pattern as uint16, so 0..32767 then -32768..-1.
LINEAR_TO_ULAW: np.ndarray = _ulaw_encode_all(np.arange(65536, dtype=np.uint16).view(np.int16))
ULAW_TO_LINEAR.setflags(write=False)
LINEAR_TO_ULAW.setflags(write=False)

ULAW_SILENCE = 0xFF  # decodes to 0


def ulaw_decode(data: bytes) -> np.ndarray:
    """Mu-law bytes -> int16 samples (a new array, one sample per byte)."""
    return ULAW_TO_LINEAR.take(np.frombuffer(data, dtype=np.uint8))


def ulaw_encode(samples: np.ndarray) -> bytes:
    """Int16 samples -> mu-law bytes (one byte per sample).

    Other integer dtypes are converted with numpy's wrapping cast, so clip first if
    the values may leave the int16 range.
    """
    samples = np.asarray(samples)
    if samples.dtype != np.int16:
        samples = samples.astype(np.int16)
    return LINEAR_TO_ULAW.take(samples.view(np.uint16)).tobytes()

