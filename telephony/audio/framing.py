"""Exact 20 ms payloads for Twilio out of a mu-law stream of any chunking."""

from __future__ import annotations

from .mulaw import ULAW_SILENCE

__all__ = ["Framer"]


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
