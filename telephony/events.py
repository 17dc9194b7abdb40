"""The vocabulary of the Call core: events from Live and the adapter, and the actions it returns.

Twilio's events live in `twilio_protocol`. Everything here is a plain frozen
dataclass with no SDK types, so the core can be driven by tests directly.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

# ---------------------------------------------------------------- from Live


@dataclass(frozen=True)
class LiveReady:
    """The Live session answered setupComplete."""


@dataclass(frozen=True)
class LiveFailed:
    """The Live session could not be opened (timeout, refused, bad setup)."""

    reason: str
    code: int | None = None


@dataclass(frozen=True)
class ModelAudio:
    pcm: bytes  # 24 kHz s16le


@dataclass(frozen=True)
class Transcript:
    role: str  # "caller" or "agent"
    text: str


@dataclass(frozen=True)
class ModelInterrupted:
    """The caller started speaking over the agent (START_OF_ACTIVITY_INTERRUPTS)."""


@dataclass(frozen=True)
class GenerationComplete:
    """The model has stopped producing audio for this turn."""


@dataclass(frozen=True)
class TurnComplete:
    pass


@dataclass(frozen=True)
class FunctionCall:
    call_id: str
    name: str
    args: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class ToolCallRequested:
    calls: tuple[FunctionCall, ...]


@dataclass(frozen=True)
class ToolCallCancelled:
    call_ids: tuple[str, ...]


@dataclass(frozen=True)
class UsageReported:
    """`by_modality` also carries the billed extras under their own prefixes
    (``thoughts:TEXT``, ``tool_use:TEXT``, ``cached:AUDIO``...), so the cost can be
    estimated from it alone; the three counts below are the same tokens, for summaries.
    Thoughts are not in `total_tokens` on 3.8 Live, yet billed as output."""

    prompt_tokens: int = 0
    response_tokens: int = 0
    total_tokens: int = 0
    by_modality: dict[str, int] = field(default_factory=dict)
    thoughts_tokens: int = 0
    tool_use_prompt_tokens: int = 0
    cached_tokens: int = 0


@dataclass(frozen=True)
class ResumptionUpdate:
    handle: str | None
    resumable: bool


@dataclass(frozen=True)
class GoAway:
    time_left_s: float | None


@dataclass(frozen=True)
class LiveClosed:
    code: int | None
    reason: str = ""


# ------------------------------------------------------------- from adapter


@dataclass(frozen=True)
class TwilioDisconnected:
    """The Twilio socket closed (with or without a `stop` first)."""

    code: int | None = None


@dataclass(frozen=True)
class HangupRequested:
    """A tool (end_call) asked to end the call once the agent's goodbye has played."""

    reason: str


@dataclass(frozen=True)
class TransferRequested:
    """A tool (transfer_call) asked to hand the caller to `destination` after the hand-off."""

    name: str
    destination: str


@dataclass(frozen=True)
class ServerStopping:
    """The server is shutting down and the drain time is over: end the call politely."""


@dataclass(frozen=True)
class MoveRequested:
    """The server is draining and another instance can take the call: hand it over
    at the next quiet moment, or after `wait_s` at the latest."""

    wait_s: float


@dataclass(frozen=True)
class TimerFired:
    name: str


@dataclass(frozen=True)
class ToolFinished:
    call_id: str
    name: str
    response: dict[str, Any]
    elapsed_s: float = 0.0
    scheduling: str | None = None  # when the model speaks about it (tools.ToolRegistry.scheduling_for)


# ------------------------------------------------------------------ actions


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


Action = (
    SendToTwilio | ConnectLive | SendAudioToLive | SendTextToLive | SendToolResponse | RunTool | CancelTool
    | StartTimer | CancelTimer | ResumeLive | EndCall
)
