"""The two per-call audio paths, Twilio -> Live and Live -> Twilio, run once per 20 ms frame.

    inbound   base64 -> mu-law -> int16 8 kHz -> resample -> s16le 16 kHz   (InboundAudio)
    outbound  s16le 24 kHz -> resample -> int16 8 kHz -> mu-law -> 160-byte frames -> base64
                                                                              (OutboundAudio)

With the default FIRs each path takes the resampler's fused fast path (decode
straight into the filter's buffer; encode straight from its rounded output), so
the int16 stage is skipped where it can be.
"""

from __future__ import annotations

import binascii

import numpy as np

from telephony.errors import MalformedMessage

from .framing import Framer
from .mulaw import LINEAR_TO_ULAW, ULAW_TO_LINEAR
from .resample import FirDecimator3x, FirUpsampler2x, Resampler, inbound_resampler, outbound_resampler

__all__ = ["InboundAudio", "OutboundAudio"]

_S16LE = np.dtype("<i2")


class InboundAudio:
    """One per call: a Twilio ``media.payload`` -> bytes for Live's realtime input."""

    # _ulaw_to_s16le: the FIR's fused decode-and-resample, or None for other resamplers.
    __slots__ = ("_resampler", "_ulaw_to_s16le")

    def __init__(self, resampler: Resampler | None = None) -> None:
        self._resampler = resampler if resampler is not None else inbound_resampler()
        fir = type(self._resampler) is FirUpsampler2x
        self._ulaw_to_s16le = self._resampler.ulaw_to_s16le if fir else None

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
        pcm16k = self._resampler.process(ULAW_TO_LINEAR.take(np.frombuffer(ulaw, dtype=np.uint8)))
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
        self._to_ulaw = self._resampler.to_ulaw if fir else None
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
        ulaw = LINEAR_TO_ULAW.take(pcm8k.view(np.uint16)).tobytes()
        b2a = binascii.b2a_base64
        return [b2a(frame, newline=False).decode("ascii") for frame in self._framer.push(ulaw)]
