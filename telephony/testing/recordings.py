"""Recorded Twilio Media Streams calls: build, write and read ``.jsonl`` recordings.

A recording is the list of messages Twilio sends on a bidirectional ``<Connect><Stream>``
socket, one JSON object per line, byte-for-byte in Twilio's wire shape
(docs/twilio-media-streams.md §2):

- ``connected`` (no sequenceNumber), then ``start`` with ``sequenceNumber`` ``"1"``;
- ``media`` every 20 ms with 160 µ-law bytes, ``track`` ``"inbound"``, and ``chunk`` /
  ``timestamp`` / ``sequenceNumber`` as **strings** (pitfall §8.4: fixtures with numbers
  hide parser bugs that real Twilio traffic would expose);
- ``dtmf`` with ``track`` ``"inbound_track"`` (with the suffix, unlike media);
- ``stop`` last.

The caller's side of a call is described as a list of segments (``Silence``, ``Speech``,
``Tone``, ``Dtmf``). All segments are rendered into one continuous 8 kHz stream and then
cut into 20 ms frames, so segment boundaries on multiples of 20 ms land exactly on frame
boundaries.

Clock convention: media frame *k* (0-based) carries the audio of
``[k*20, k*20+20)`` ms of the rendered stream and has ``timestamp`` ``str(20*(k+1))``,
i.e. the timestamp is the time at which the frame's audio *ends* (the first timestamp is
therefore ``"20"``, never ``"0"``, as in real captures). A ``Dtmf`` event is emitted right
after the media frame covering the end of its key press: Twilio reports a digit once it
has recognised the tone, and it strips the tone itself from the media (the caller's media
carries line noise during the press).

Everything is deterministic: SIDs and comfort noise come from ``seed``, so regenerating a
fixture reproduces it byte for byte.
"""

from __future__ import annotations

import base64
import json
import random
import wave
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, Iterable, Sequence, Union

import numpy as np

SAMPLE_RATE = 8000
FRAME_MS = 20
FRAME_BYTES = SAMPLE_RATE * FRAME_MS // 1000  # 160 µ-law bytes = 20 ms
FIRST_TIMESTAMP_MS = FRAME_MS  # real captures never start at 0 (8..155 ms seen)

DEFAULT_FROM = "+15551230101"
DEFAULT_TO = "+15559870000"

__all__ = [
    "Silence",
    "Speech",
    "Tone",
    "Dtmf",
    "Segment",
    "build_messages",
    "write_recording",
    "read_recording",
    "media_payloads",
    "SAMPLE_RATE",
    "FRAME_BYTES",
]


# --------------------------------------------------------------------------- segments


@dataclass(frozen=True)
class Silence:
    """Line silence.

    ``level_dbfs`` is the RMS of low Gaussian comfort noise relative to full scale (a real
    PSTN line is never digitally silent, and VAD that only works on ``0xFF`` would be
    fooled). ``None`` gives digital silence: every byte ``0xFF``.
    """

    seconds: float
    level_dbfs: float | None = -60.0


@dataclass(frozen=True)
class Speech:
    """``wav[start:end]`` seconds of a real speech recording (mono 16-bit, any rate).

    The whole file is resampled to 8 kHz with ``soxr.resample`` in one call (no chunk
    edges), then sliced, so slice boundaries are exact to the 8 kHz sample.
    """

    wav: Path
    start: float = 0.0
    end: float | None = None
    gain_db: float = 0.0


@dataclass(frozen=True)
class Tone:
    """A pure sine; ``level_dbfs`` is its peak relative to full scale (AES17 convention)."""

    freq: float
    seconds: float
    level_dbfs: float = -12.0


@dataclass(frozen=True)
class Dtmf:
    """A key press: ``duration_ms`` of line noise in the media, then one ``dtmf`` event."""

    digit: str
    duration_ms: int = 100

    def __post_init__(self) -> None:
        if self.digit not in set("0123456789*#"):
            raise ValueError(f"DTMF digit must be one of 0-9 * #, got {self.digit!r}")


Segment = Union[Silence, Speech, Tone, Dtmf]


# --------------------------------------------------------------------------- rendering


def _samples(seconds: float) -> int:
    if seconds < 0:
        raise ValueError(f"segment length must be >= 0 s, got {seconds}")
    return int(round(seconds * SAMPLE_RATE))


def _noise(n: int, level_dbfs: float | None, rng: np.random.Generator) -> np.ndarray:
    if level_dbfs is None:
        return np.zeros(n, dtype=np.float64)
    rms = 32767.0 * 10 ** (level_dbfs / 20)
    return rng.standard_normal(n) * rms


@lru_cache(maxsize=8)
def _speech_8k(path: str) -> np.ndarray:
    """The whole WAV as float64 samples at 8 kHz (cached: fixtures slice one file twice)."""
    import soxr  # imported here so reading recordings never needs soxr

    with wave.open(path, "rb") as w:
        if w.getsampwidth() != 2:
            raise ValueError(f"{path}: expected 16-bit PCM, got {8 * w.getsampwidth()}-bit")
        if w.getnchannels() != 1:
            raise ValueError(f"{path}: expected mono, got {w.getnchannels()} channels")
        rate = w.getframerate()
        pcm = np.frombuffer(w.readframes(w.getnframes()), dtype="<i2").astype(np.float64)
    if rate != SAMPLE_RATE:
        pcm = soxr.resample(pcm, rate, SAMPLE_RATE)
    pcm.setflags(write=False)
    return pcm


def _render(segments: Sequence[Segment], rng: np.random.Generator) -> tuple[np.ndarray, list[tuple[int, str]]]:
    """Render segments to one int16 stream; return it and ``(end_sample, digit)`` presses."""
    parts: list[np.ndarray] = []
    presses: list[tuple[int, str]] = []
    pos = 0
    for seg in segments:
        if isinstance(seg, Silence):
            chunk = _noise(_samples(seg.seconds), seg.level_dbfs, rng)
        elif isinstance(seg, Tone):
            n = _samples(seg.seconds)
            amp = 32767.0 * 10 ** (seg.level_dbfs / 20)
            chunk = amp * np.sin(2 * np.pi * seg.freq * np.arange(n) / SAMPLE_RATE)
        elif isinstance(seg, Speech):
            pcm = _speech_8k(str(Path(seg.wav)))
            i0 = _samples(seg.start)
            i1 = len(pcm) if seg.end is None else _samples(seg.end)
            if not 0 <= i0 < i1 <= len(pcm):
                raise ValueError(
                    f"Speech slice {seg.start}..{seg.end} s is outside {seg.wav} "
                    f"({len(pcm) / SAMPLE_RATE:.3f} s)"
                )
            chunk = pcm[i0:i1] * 10 ** (seg.gain_db / 20)
        elif isinstance(seg, Dtmf):
            # Twilio strips the tone from a bidirectional stream: the media is line noise.
            chunk = _noise(_samples(seg.duration_ms / 1000), -60.0, rng)
            presses.append((pos + len(chunk), seg.digit))
        else:
            raise TypeError(f"unknown segment {seg!r}")
        parts.append(chunk)
        pos += len(chunk)
    audio = np.concatenate(parts) if parts else np.zeros(0)
    # Pad the tail to a whole frame with quiet noise: Twilio only ever sends 160-byte frames.
    tail = (-len(audio)) % FRAME_BYTES
    if tail:
        audio = np.concatenate([audio, _noise(tail, -60.0, rng)])
    return np.clip(np.round(audio), -32768, 32767).astype(np.int16), presses


def _sid(prefix: str, rng: random.Random) -> str:
    return prefix + "".join(rng.choice("0123456789abcdef") for _ in range(32))


# --------------------------------------------------------------------------- messages


def build_messages(
    segments: Iterable[Segment],
    *,
    call_sid: str | None = None,
    stream_sid: str | None = None,
    account_sid: str | None = None,
    custom_parameters: dict[str, str] | None = None,
    seed: int = 0,
) -> list[dict[str, Any]]:
    """Render ``segments`` into the exact messages Twilio would send for that caller.

    Returns ``connected``, ``start``, the ``media`` frames with ``dtmf`` events mixed in,
    and ``stop``. SIDs not given are derived from ``seed``; ``custom_parameters`` defaults
    to ``{"CallSid": call_sid, "From": ..., "To": ...}`` (what a typical TwiML passes
    through ``<Parameter>``).
    """
    from telephony.audio import ulaw_encode

    segments = list(segments)
    sid_rng = random.Random(seed)
    account_sid = account_sid or _sid("AC", sid_rng)
    call_sid = call_sid or _sid("CA", sid_rng)
    stream_sid = stream_sid or _sid("MZ", sid_rng)
    if custom_parameters is None:
        custom_parameters = {"CallSid": call_sid, "From": DEFAULT_FROM, "To": DEFAULT_TO}

    pcm, presses = _render(segments, np.random.default_rng(seed))
    ulaw = ulaw_encode(pcm)

    seq = 0

    def next_seq() -> str:
        nonlocal seq
        seq += 1
        return str(seq)

    messages: list[dict[str, Any]] = [
        {"event": "connected", "protocol": "Call", "version": "1.0.0"},
        {
            "event": "start",
            "sequenceNumber": next_seq(),
            "start": {
                "accountSid": account_sid,
                "streamSid": stream_sid,
                "callSid": call_sid,
                "tracks": ["inbound"],
                "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": SAMPLE_RATE, "channels": 1},
                "customParameters": dict(custom_parameters),
            },
            "streamSid": stream_sid,
        },
    ]

    def dtmf(digit: str) -> dict[str, Any]:
        return {
            "event": "dtmf",
            "sequenceNumber": next_seq(),
            "streamSid": stream_sid,
            "dtmf": {"track": "inbound_track", "digit": digit},
        }

    pending = list(presses)
    while pending and pending[0][0] <= 0:  # a press before any audio
        messages.append(dtmf(pending.pop(0)[1]))
    n_frames = len(ulaw) // FRAME_BYTES
    for k in range(n_frames):
        payload = ulaw[k * FRAME_BYTES : (k + 1) * FRAME_BYTES]
        messages.append(
            {
                "event": "media",
                "sequenceNumber": next_seq(),
                "media": {
                    "track": "inbound",
                    "chunk": str(k + 1),
                    "timestamp": str(FIRST_TIMESTAMP_MS + FRAME_MS * k),
                    "payload": base64.b64encode(payload).decode("ascii"),
                },
                "streamSid": stream_sid,
            }
        )
        frame_end = (k + 1) * FRAME_BYTES
        while pending and pending[0][0] <= frame_end:
            messages.append(dtmf(pending.pop(0)[1]))
    messages.append(
        {
            "event": "stop",
            "sequenceNumber": next_seq(),
            "streamSid": stream_sid,
            "stop": {"accountSid": account_sid, "callSid": call_sid},
        }
    )
    return messages


def write_recording(path: Path | str, messages: Iterable[dict[str, Any]]) -> None:
    """Write one compact JSON object per line (Twilio's own separators), UTF-8, LF."""
    with open(path, "w", encoding="utf-8", newline="\n") as f:
        for msg in messages:
            f.write(json.dumps(msg, separators=(",", ":")))
            f.write("\n")


def read_recording(path: Path | str) -> list[dict[str, Any]]:
    """Read a ``.jsonl`` recording; blank lines are ignored, a bad line names its number."""
    messages = []
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                msg = json.loads(line)
            except json.JSONDecodeError as exc:
                raise ValueError(f"{path}:{lineno}: not JSON: {exc}") from None
            if not isinstance(msg, dict) or "event" not in msg:
                raise ValueError(f"{path}:{lineno}: not a Twilio message (no 'event'): {line[:80]!r}")
            messages.append(msg)
    return messages


def media_payloads(messages: Iterable[dict[str, Any]]) -> bytes:
    """The caller's µ-law audio in a recording, concatenated (handy for analysis)."""
    return b"".join(
        base64.b64decode(m["media"]["payload"]) for m in messages if m.get("event") == "media"
    )
