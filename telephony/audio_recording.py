"""Call audio, opt-in (RECORD_AUDIO=true): one stereo WAV per call, caller left, agent right.

Why the agent's side is placed "as heard" rather than as sent: we send agent
audio faster than real time and Twilio plays it from a buffer, and a barge-in
`clear` throws away what was still queued. A recording of what we sent would
hold words the caller never heard, at the wrong moments. So the caller's
stream is the clock (Twilio sends a 20 ms frame every 20 ms, silence
included): agent audio starts playing at the caller position where it was
sent, or after what is already queued, and a clear cuts the agent's track at
the current caller position.

Why μ-law in memory until the end: the tap runs on the audio path, so each
frame costs one base64 decode and one append (8 KB a second per side); the
WAV (16-bit stereo) is decoded and written once, in a thread, after the call.

Retention: files older than RECORDING_RETENTION_DAYS are deleted at start-up
and once a day (`delete_expired`). Recording a call may need the consent of
everyone on it (see docs/operations.md, "Call audio").
"""

from __future__ import annotations

import binascii
import logging
import os
import re
import time
import wave
from pathlib import Path

import numpy as np

from .audio import ULAW_SILENCE, ulaw_decode

__all__ = ["CallAudio", "AudioRecordings", "SAMPLE_RATE"]

log = logging.getLogger(__name__)

SAMPLE_RATE = 8000
#: Call sids become file names: nothing but these characters, ever.
_SAFE_SID = re.compile(r"[A-Za-z0-9_-]{1,64}")
#: Decoded and written this many samples at a time (a minute), so an hour-long call needs no big buffer.
_CHUNK = SAMPLE_RATE * 60


class CallAudio:
    """Both sides of one call, as μ-law, aligned on the caller's stream. Fed by the core (`Call.tap`)."""

    def __init__(self) -> None:
        self.caller_track = bytearray()
        self.agent_track = bytearray()

    def caller(self, payload_b64: str) -> None:
        try:
            self.caller_track += binascii.a2b_base64(payload_b64)
        except binascii.Error:
            pass  # the core reports the bad frame

    def agent(self, payloads_b64: list[str]) -> None:
        gap = len(self.caller_track) - len(self.agent_track)
        if gap > 0:  # nothing queued at Twilio: this audio starts playing now
            self.agent_track += bytes((ULAW_SILENCE,)) * gap
        for payload in payloads_b64:
            self.agent_track += binascii.a2b_base64(payload)

    def cleared(self) -> None:
        """Twilio dropped what it had not played yet."""
        del self.agent_track[len(self.caller_track):]

    def write_wav(self, path: Path) -> None:
        n = max(len(self.caller_track), len(self.agent_track))
        caller = bytes(self.caller_track) + bytes((ULAW_SILENCE,)) * (n - len(self.caller_track))
        agent = bytes(self.agent_track) + bytes((ULAW_SILENCE,)) * (n - len(self.agent_track))
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_suffix(".wav.partial")
        with wave.open(str(partial), "wb") as out:
            out.setnchannels(2)
            out.setsampwidth(2)
            out.setframerate(SAMPLE_RATE)
            for i in range(0, n, _CHUNK):
                frames = np.empty((min(_CHUNK, n - i), 2), dtype="<i2")
                frames[:, 0] = ulaw_decode(caller[i:i + _CHUNK])
                frames[:, 1] = ulaw_decode(agent[i:i + _CHUNK])
                out.writeframes(frames.tobytes())
        os.replace(partial, path)  # a half-written file never looks like a recording


class AudioRecordings:
    """The folder of call recordings and its retention."""

    def __init__(self, folder: Path | str, retention_days: float):
        self.folder = Path(folder)
        self.retention_days = retention_days

    def path_for(self, call_sid: str) -> Path | None:
        if not _SAFE_SID.fullmatch(call_sid or ""):
            return None
        return self.folder / f"{call_sid}.wav"

    def save(self, call_sid: str | None, audio: CallAudio) -> Path | None:
        """Write the call's WAV (blocking: run it in a thread)."""
        path = self.path_for(call_sid or "")
        if path is None or not audio.caller_track:
            return None
        try:
            audio.write_wav(path)
        except OSError as exc:
            log.warning("could not write the recording of call %s: %s", call_sid, exc)
            return None
        log.info("call %s recorded to %s", call_sid, path)
        return path

    def delete_expired(self, now: float | None = None) -> int:
        """Delete recordings older than the retention period; return how many went."""
        cutoff = (time.time() if now is None else now) - self.retention_days * 86400
        deleted = 0
        try:
            entries = list(self.folder.glob("*.wav"))
        except OSError:
            return 0
        for path in entries:
            try:
                if path.stat().st_mtime < cutoff:
                    path.unlink()
                    deleted += 1
            except OSError:
                continue
        if deleted:
            log.info("deleted %d call recording(s) older than %g days", deleted, self.retention_days)
        return deleted
