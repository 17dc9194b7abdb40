"""What the Call core answers with: the actions the adapter (`bridge`) carries out.

Kept apart from `events` so the two directions of the core's interface read
apart: events go in, actions come out. Plain frozen dataclasses with no SDK
types, so tests can assert on them directly.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

@dataclass(frozen=True)
class SendToTwilio:
    """Text frames for the Twilio socket, in order (already framed: media, mark, clear)."""

    messages: tuple[str, ...]


@dataclass(frozen=True)
class ConnectLive:
    """Open the Live session now that we know which call this is."""


@dataclass(frozen=True)
class SendAudioToLive:
    pcm: bytes  # 16 kHz s16le


@dataclass(frozen=True)
class SendTextToLive:
    text: str


@dataclass(frozen=True)
class SendToolResponse:
    call_id: str
    name: str
    response: dict[str, Any]
    scheduling: str | None = None  # SILENT, WHEN_IDLE, INTERRUPT; None sends none


@dataclass(frozen=True)
class RunTool:
    call_id: str
    name: str
    args: dict[str, Any]


@dataclass(frozen=True)
class CancelTool:
    call_id: str


@dataclass(frozen=True)
class StartTimer:
    """Feed `TimerFired(name)` back after `seconds`; starting a running timer restarts it."""

    name: str
    seconds: float


@dataclass(frozen=True)
class CancelTimer:
    name: str


@dataclass(frozen=True)
class ResumeLive:
    """Close the current Live socket (if any), wait `delay_s`, and reconnect with the
    newest resumption handle."""

    reason: str
    delay_s: float = 0.0


@dataclass(frozen=True)
class EndCall:
    """Finish the call. `apologize` means the caller must hear why (we failed them)."""

    reason: str
    apologize: bool = False
    close_code: int = 1000
    hangup: bool = False  # end the phone call itself, not only our stream
    transfer_to: str | None = None  # hand the call to this number instead
    move: bool = False  # not an end: another instance carries the call on from its checkpoint
    transfer_name: str | None = None  # the team's name, for the warm transfer's briefing and the record
    transfer_summary: str | None = None  # set (possibly empty) for a warm transfer: the human's briefing


Action = (
    SendToTwilio | ConnectLive | SendAudioToLive | SendTextToLive | SendToolResponse | RunTool | CancelTool
    | StartTimer | CancelTimer | ResumeLive | EndCall
)
