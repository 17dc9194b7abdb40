"""What the Call core is told: events from Live and from the adapter.

Twilio's events live in `twilio_protocol`; what the core answers with lives
in `actions`. Everything here is a plain frozen dataclass with no SDK types,
so the core can be driven by tests directly.
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
class LiveSendFailed:
    """Sending to the Live session raised (the adapter has logged it). `unsent` holds
    the sends that did not go out, the failed one first, so the next session gets them."""

    error: str
    unsent: tuple[Any, ...] = ()
    code: int | None = None  # the close code, when the send found the socket closed


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
    """A tool (transfer_call) asked to hand the caller to `destination` after the hand-off.

    `warm`: hold the caller in a conference and brief the human with `summary` first
    (transfer.py); otherwise a cold `<Dial>`."""

    name: str
    destination: str
    warm: bool = False
    summary: str = ""


@dataclass(frozen=True)
class AnsweredBy:
    """Twilio's asynchronous answering-machine verdict for this outbound call (its
    AnsweredBy: human, machine_start, machine_end_beep, machine_end_silence,
    machine_end_other, fax, unknown), routed here by CallSid from any instance."""

    verdict: str


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
