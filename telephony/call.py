"""The heart of one phone call, without I/O.

`Call.handle(event)` takes an event from Twilio (`twilio_protocol`), from the
Live session or from the adapter (`events`) and returns the actions to
perform, in order. It never awaits and never reads a clock, so every
transition happens in one place and can be tested by feeding events.

Its state, each part in one place:

- `Phase`, the call as a whole::

    AWAITING_START --start--> CONNECTING --LiveReady--> LISTENING <--> AGENT_SPEAKING
          any --stop / Live failure / abuse--> ENDING --(adapter done)--> ENDED

- `LiveLink`, the Live session::

    NONE --start--> CONNECTING --LiveReady--> READY --goAway / drop--> SWITCHING --LiveReady--> READY

- `Turn`, the agent turn now playing (open, drained, its late audio being discarded);
- `Watchdog` (IDLE, ARMED, NUDGED), and the `Timer`s the adapter runs for the core;
- `Ending`, the end decided but waiting for the goodbye (or hand-off) to be heard;
- `moving`: the server drains and the call waits for a quiet moment to move to
  another instance (`snapshot` is what it carries there, `restore` takes it in).
- `Detection`, an outbound call's answering-machine verdict: while it is awaited the
  model is told nothing and hears nothing; a machine gets the voicemail message.

Playback truth comes from Twilio marks: a mark follows every chunk of agent
audio we send, and its echo means the audio before it has been played. A
`clear` makes Twilio echo every pending mark at once, so marks outstanding at
a clear are counted as cleared, not heard.
"""

from __future__ import annotations

import base64
import enum
import logging
from collections import deque
from dataclasses import dataclass

from . import actions as act
from . import events as ev
from . import twilio_protocol as tw
from .audio import InboundAudio, OutboundAudio
from .errors import InvalidCallState, MalformedMessage, StreamMismatch
from .speech_end import SpeechEndDetector

log = logging.getLogger(__name__)

#: Bytes of 8 kHz mu-law per second: the unit of "how much the caller heard".
ULAW_BYTES_PER_SECOND = 8000
#: Caller audio kept while a Live session is opening or being replaced (5 s of 20 ms frames).
BUFFERED_FRAMES = 250
#: Live close codes that mean the request itself is wrong: reconnecting would loop.
FATAL_LIVE_CODES = frozenset({1007, 1008})
#: Delays before each reconnection attempt; past the last one the call ends with an apology.
RECONNECT_BACKOFF_S = (0.0, 0.25, 0.5, 1.0, 2.0, 4.0)
#: Sessions in a row that end before they are healthy (closed, a send failed, goAway)
#: before the call ends with the apology: a model that closes every session at once, or
#: a send that raises on every fresh one, must not keep the call and its Live minutes spinning.
MAX_UNHEALTHY_SESSIONS = 3
#: A session is healthy once it relayed this many caller frames (5 s) or completed a turn:
#: its end starts a new count.
HEALTHY_SESSION_FRAMES = 250
#: Switch sessions this long before a goAway deadline at the latest.
GOAWAY_MARGIN_S = 2.0
#: How long the goodbye at MAX_CALL_SECONDS may take before we hang up regardless.
GOODBYE_GRACE_S = 15.0
#: After `interrupted`, audio is dropped until the interrupted turn's `turnComplete`
#: (docs/gemini-live.md §12). Should that never come, dropping stops after this long: late
#: chunks of the old turn trail the interruption by a few hundred ms, while the answer to
#: the caller can only start after they stop talking (silence_duration_ms, 500 ms, plus
#: the model's latency), and if that answer starts inside the window the watchdog nudges.
DISCARD_LIMIT_S = 2.0
OUTBOUND_GREETING = (
    "You placed this phone call and the person has just answered. The purpose of the call: {purpose}. "
    "Greet them in one short sentence, say who you are and why you are calling."
)
#: Prompts to the model, not words for the caller: each asks for the conversation's own
#: language, so an agent speaking Spanish (agents.py) answers them in Spanish.
NUDGE_TEXT = ("(The caller is waiting and has heard nothing. Please answer them now, "
              "in the language of the conversation.)")
GOODBYE_TEXT = (
    "(The maximum length of this call has been reached. Tell the caller politely, in one short "
    "sentence and in the language of the conversation, that you have to end the call now, and say goodbye.)"
)
#: What a fresh session is told when a resumption handle was refused (or never came):
#: it has none of the old session's context, only what both sides said so far.
CARRY_OVER_TEXT = (
    "This phone call is already under way; the connection to you was replaced and you lost "
    "your memory of it. Here is what has been said so far. Do not greet the caller again; "
    "continue the conversation from where it stopped.\n{conversation}"
)
#: Characters of the conversation carried into a fresh session: the most recent part.
#: The system instruction is sent with every setup, so it must not grow with the call.
CARRY_OVER_CHARS = 6000
#: Bad frames tolerated before a stream is treated as abusive and closed with 1008.
MAX_BAD_FRAMES = 50
#: Caller audio carried to the next instance when a call moves (what arrived after
#: the Live socket closed): 2 s of 20 ms frames.
CARRIED_FRAMES = 100
#: Told to the model on the next instance when the move cut a turn or a tool call short.
MOVED_TEXT = "(The phone line was switched to another server just now; the caller is still on the line. {what})"
CUT_TURN_TEXT = ('You were interrupted while saying: "{said}". The caller heard it up to: "{heard}". '
                 "Continue from there.")
CUT_TOOLS_TEXT = ("These function calls were cut short and their results are lost: {calls}. "
                  "Call them again if still needed.")
#: How long an outbound call waits for Twilio's answering-machine verdict before going on
#: as if a person answered: Twilio's MachineDetectionTimeout (30 s) plus its callback's way here.
AMD_TIMEOUT_S = 40.0
#: How long a warm transfer waits, once the hand-off has been heard, for a resumption handle
#: that covers it (the caller may come back to this session); past it, the last handle serves.
HANDLE_WAIT_S = 2.0
#: How long the voicemail message may take before we hang up regardless.
VOICEMAIL_GRACE_S = 60.0
#: Verdicts that mean an answering machine (with DetectMessageEnd, after its greeting).
MACHINE_VERDICTS = frozenset({"machine_start", "machine_end_beep", "machine_end_silence", "machine_end_other"})
VOICEMAIL_TEXT = (
    "You placed this phone call and reached an answering machine; its greeting has ended and it is "
    "recording now. Do not greet it as a person and do not ask questions. Leave this message in your "
    "own words, in a few short sentences, then stop: {message}"
)


class Phase(enum.Enum):
    AWAITING_START = "awaiting_start"
    CONNECTING = "connecting"
    LISTENING = "listening"
    AGENT_SPEAKING = "agent_speaking"
    ENDING = "ending"
    ENDED = "ended"


class LiveLink(enum.Enum):
    NONE = "none"
    CONNECTING = "connecting"
    READY = "ready"
    SWITCHING = "switching"  # a replacement session is being opened (goAway, drop, refused handle)


class Watchdog(enum.Enum):
    IDLE = "idle"
    ARMED = "armed"  # the model owes an answer: the timer runs
    NUDGED = "nudged"  # it fired and the model was nudged; not again until the next arming


class Timer(enum.StrEnum):
    """The timers the adapter runs for the core (`StartTimer`/`TimerFired` carry these names)."""

    MAX_CALL = "max_call"
    WATCHDOG = "watchdog"
    DISCARD = "discard"
    DTMF = "dtmf"
    GOAWAY = "goaway"
    GOODBYE_GRACE = "goodbye_grace"
    MOVE = "move"
    AMD = "amd"
    HANDLE_WAIT = "handle_wait"


class Detection(enum.Enum):
    """Answering-machine detection of an outbound call (Twilio's asynchronous AMD)."""

    OFF = "off"  # inbound, or not asked for
    DETECTING = "detecting"  # the verdict is awaited: the agent says nothing, hears nothing
    HUMAN = "human"  # a person (or an unknown verdict, or none in time): the conversation goes on
    MACHINE = "machine"  # a machine after its greeting: the voicemail message, then hang up
    FAX = "fax"


@dataclass
class Turn:
    """The agent turn now producing audio (`number` counts every turn of the call)."""

    number: int = 0
    open: bool = False  # its audio is being forwarded
    drained: bool = False  # its resampler tail went out (generationComplete)
    discarding: bool = False  # interrupted: its late audio is dropped until its turnComplete


@dataclass
class Ending:
    """An end decided by the agent (goodbye, transfer) or the call's limit: it takes
    effect once the turn `after_turn` has completed and its audio has been heard."""

    end: act.EndCall
    after_turn: int
    turn_complete: bool = False
    voicemail: bool = False  # the turn is the message left on an answering machine
    needs_handle: bool = False  # a warm transfer: wait for a handle issued after the hand-off
    handle_seen: bool = False
    waiting_for_handle: bool = False


@dataclass
class _Mark:
    name: str
    turn: int
    nbytes: int


@dataclass
class ToolRecord:
    call_id: str
    name: str
    outcome: str = "running"  # ok | error | cancelled | running
    latency_ms: float | None = None


class Call:
    """One call's state machine. Create one per Twilio stream."""

    def __init__(
        self,
        *,
        greeting: str | None,
        inbound: InboundAudio | None = None,
        outbound: OutboundAudio | None = None,
        watchdog_s: float | None = None,
        max_call_s: float | None = None,
        dtmf_timeout_s: float = 2.0,
        goodbye_timeout_s: float = GOODBYE_GRACE_S,
        discard_limit_s: float = DISCARD_LIMIT_S,
        voicemail_message: str | None = None,
        amd_timeout_s: float = AMD_TIMEOUT_S,
        opening: str | None = None,
        resumption_handle: str | None = None,
    ):
        self.greeting = greeting
        self.watchdog_s = watchdog_s
        self.max_call_s = max_call_s
        self.dtmf_timeout_s = dtmf_timeout_s
        self.goodbye_timeout_s = goodbye_timeout_s
        self.discard_limit_s = discard_limit_s
        # An outbound call's voicemail instruction (None: hang up on a machine without one).
        self.voicemail_message = voicemail_message
        self.amd_timeout_s = amd_timeout_s
        # A call coming back to the agent (a warm transfer that did not happen): the first
        # text its resumed session gets, instead of the greeting.
        self.opening = opening
        self.inbound = inbound or InboundAudio()
        self.outbound = outbound or OutboundAudio()
        self.phase = Phase.AWAITING_START
        self.stream_sid: str | None = None
        self.call_sid: str | None = None
        self.parameters: dict[str, str] = {}
        self._out: tw.Outbound | None = None

        # Playback accounting.
        self.current = Turn()
        self._mark_seq = 0
        self.marks_in_flight: deque[_Mark] = deque()
        self.marks_cleared: set[str] = set()
        self.sent_bytes = 0
        self.heard_bytes = 0
        self.cleared_bytes = 0
        self._turn_sent: dict[int, int] = {}
        self._turn_heard: dict[int, int] = {}

        # Pending work.
        self.pending_tools: dict[str, ToolRecord] = {}
        self._tool_args: dict[str, dict] = {}
        self.tool_calls: list[ToolRecord] = []
        self._buffered: deque[bytes] = deque(maxlen=BUFFERED_FRAMES)
        self._queued_responses: list[act.SendToolResponse | act.SendTextToLive] = []

        # The Live session.
        self.link = LiveLink.NONE
        self._ever_ready = False
        self._reconnect_attempts = 0
        self._attempt_handle: str | None = None  # the handle the pending reconnection uses
        self._unhealthy_sessions = 0  # sessions in a row that ended before they were healthy
        self._turn_completed = False  # the current session completed a turn: it is healthy
        self._frames_to_live = 0  # caller frames sent on the current session
        self._kept_frames = 0  # frames at the front of `_buffered` whose send failed
        self._kept_sends = 0  # the same at the front of `_queued_responses`
        self._go_away_seen = False  # this session announced its end: any close then resumes
        self._resume_at_boundary = False  # switch sessions at the next turn boundary (goAway)
        self.watchdog = Watchdog.IDLE
        self.ending: Ending | None = None
        self._keypad: list[str] = []
        self._answer_owed = False  # a tool response went to the model: its answer is a turn still to come
        self.moving = False  # a move was asked for: at the next quiet moment the call moves
        self.moves = 0  # how many times this call moved between instances
        self._resume_note: str | None = None  # told to the model once the session on this instance is ready
        self.cut_turn: dict | None = None  # the agent turn a move cut short, and what of it was heard
        self.cut_tools: list[dict] = []  # tool calls a move cut short

        # Facts for the summary.
        self.frames_in = 0
        self.frames_out = 0
        self.frames_dropped = 0
        self.bad_frames = 0
        self.interruptions = 0
        self.stale_audio_dropped = 0  # chunks of interrupted turns that never reached Twilio
        self.discards_timed_out = 0  # interrupted turns whose turnComplete never came
        self.reconnects = 0
        self.live_send_failures = 0
        self.sessions_resumed = 0  # reconnections that kept the context through a handle
        self.sessions_fresh = 0  # reconnections without one (refused or never issued)
        self.watchdog_nudges = 0
        self.digits: list[str] = []
        self.transcript: list[list[str]] = []  # [role, text]
        self._transcript_break = False  # a turn ended: the next text starts a new entry
        self.usage = {"prompt": 0, "response": 0, "total": 0, "thoughts": 0, "tool_use_prompt": 0, "cached": 0}
        self.usage_by_modality: dict[str, int] = {}
        self.resumption_handle: str | None = resumption_handle
        self._opening_sent = False
        self.detection = Detection.OFF
        self.answered_by: str | None = None
        self.message_left = False
        self.end_reason: str | None = None
        self._warned: set[str] = set()
        # Watching the call (observe.py): the end of the caller's speech, and both sides' audio when recorded.
        self.speech = SpeechEndDetector()
        self.tap = None  # an audio_recording.CallAudio while RECORD_AUDIO is on

    # ------------------------------------------------------------ public

    @property
    def turn(self) -> int:
        """How many agent turns the call has had."""
        return self.current.number

    @property
    def over(self) -> bool:
        """The call is ending or ended: nothing new starts."""
        return self.phase is Phase.ENDING or self.phase is Phase.ENDED

    def handle(self, event: object) -> list[act.Action]:
        """Advance the call by one event; return what the adapter must do, in order."""
        if self.phase is Phase.ENDED:
            return []
        method = self._handlers.get(type(event))
        if method is None:
            raise InvalidCallState(f"Call cannot handle {type(event).__name__}")
        return method(self, event)

    def bad_frame(self, error: MalformedMessage) -> list[act.Action]:
        """The adapter could not parse a frame. Drop it; close the stream if it keeps happening."""
        self.bad_frames += 1
        self._warn_once(f"bad:{type(error).__name__}:{str(error)[:30]}", "dropped a bad Twilio frame: %s", error)
        if self.bad_frames > MAX_BAD_FRAMES and not self.over:
            return self._end(f"too many bad frames from Twilio ({self.bad_frames})", close_code=1008)
        return []

    def ended(self) -> None:
        """The adapter has torn everything down."""
        self.phase = Phase.ENDED

    @property
    def carry_over(self) -> str | None:
        """Context for a session opened mid-call without a resumption handle (to add to
        its system instruction), or None when the session needs none.

        The system instruction, rather than a text turn: it is in place before the
        session hears any caller audio, and it makes the model speak no turn of its own
        (a text turn is answered, and on 3.8 a completed client turn interrupts).
        """
        if not self._ever_ready or self.resumption_handle is not None:
            return None
        lines = [f"{'Caller' if role == 'caller' else 'You'}: {text.strip()}" for role, text in self.transcript]
        conversation = "\n".join(lines)[-CARRY_OVER_CHARS:] or "(nothing yet)"
        return CARRY_OVER_TEXT.format(conversation=conversation)

    @property
    def amd_outcome(self) -> str | None:
        """What answered an outbound call with detection: human, machine, or message left."""
        if self.detection is Detection.OFF or self.detection is Detection.DETECTING:
            return None
        if self.detection is Detection.HUMAN:
            return "human"
        return "message left" if self.message_left else "machine"

    @property
    def heard_seconds(self) -> float:
        return self.heard_bytes / ULAW_BYTES_PER_SECOND

    def summary(self) -> dict[str, object]:
        return {
            "call_sid": self.call_sid,
            "stream_sid": self.stream_sid,
            "end_reason": self.end_reason,
            "frames_in": self.frames_in,
            "frames_out": self.frames_out,
            "frames_dropped": self.frames_dropped,
            "bad_frames": self.bad_frames,
            "agent_turns": self.turn,
            "interruptions": self.interruptions,
            "stale_audio_chunks_dropped": self.stale_audio_dropped,
            "interrupted_turns_without_turn_complete": self.discards_timed_out,
            "live_reconnects": self.reconnects,
            "live_sessions_resumed": self.sessions_resumed,
            "live_sessions_fresh": self.sessions_fresh,
            "watchdog_nudges": self.watchdog_nudges,
            "agent_audio_sent_s": round(self.sent_bytes / ULAW_BYTES_PER_SECOND, 2),
            "agent_audio_heard_s": round(self.heard_seconds, 2),
            "agent_audio_cleared_s": round(self.cleared_bytes / ULAW_BYTES_PER_SECOND, 2),
            "tool_calls": [
                {"name": t.name, "id": t.call_id, "outcome": t.outcome, "latency_ms": t.latency_ms}
                for t in self.tool_calls
            ],
            "digits": "".join(self.digits),
            "answered_by": self.answered_by,
            "amd_outcome": self.amd_outcome,
            "tokens": dict(self.usage, by_modality=dict(self.usage_by_modality)),
        }

    # ----------------------------------------------------- moving between instances

    def snapshot(self) -> dict[str, object]:
        """Everything another instance needs to carry the call on: the conversation,
        the newest resumption handle, the counters of the call record, keypad digits
        not yet given to the model, what the caller heard, and what a move cut short.
        Plain JSON; caller audio waiting for the model travels as base64."""
        return {
            "v": 1,
            "call_sid": self.call_sid,
            "parameters": dict(self.parameters),
            "resumption_handle": self.resumption_handle,
            "ever_ready": self._ever_ready,
            "opening_sent": self._opening_sent,
            "detection": self.detection.value,
            "answered_by": self.answered_by,
            "transcript": [list(t) for t in self.transcript],
            "turns": self.turn,
            "keypad": list(self._keypad),
            "digits": list(self.digits),
            "moves": self.moves,
            "counters": {name: getattr(self, name) for name in _COUNTERS},
            "usage": dict(self.usage),
            "usage_by_modality": dict(self.usage_by_modality),
            "tool_calls": [[t.call_id, t.name, t.outcome, t.latency_ms] for t in self.tool_calls],
            "cut_turn": self.cut_turn,
            "cut_tools": list(self.cut_tools),
            "caller_audio": [base64.b64encode(pcm).decode("ascii") for pcm in list(self._buffered)[-CARRIED_FRAMES:]],
        }

    def restore(self, snapshot: dict) -> None:
        """Take in the `snapshot` of a call that moved here (before its stream's start).

        The session this instance opens resumes with the snapshot's handle (a refused
        one opens a fresh session carrying the conversation, `carry_over`); it is a
        reconnection, so no greeting is said again."""
        self.parameters = dict(snapshot.get("parameters") or {})
        self.resumption_handle = snapshot.get("resumption_handle") or None
        self._attempt_handle = self.resumption_handle
        # A call moved before its first session was ready is greeted on the next instance.
        self._ever_ready = bool(snapshot.get("ever_ready", True))
        self._opening_sent = bool(snapshot.get("opening_sent", self._ever_ready))
        try:
            self.detection = Detection(snapshot.get("detection") or self.detection.value)
        except ValueError:
            pass
        self.answered_by = snapshot.get("answered_by") or self.answered_by
        self.transcript = [list(t) for t in snapshot.get("transcript") or []]
        self._transcript_break = True
        self.current.number = int(snapshot.get("turns") or 0)
        self._keypad = list(snapshot.get("keypad") or [])
        self.digits = list(snapshot.get("digits") or [])
        self.moves = int(snapshot.get("moves") or 0) + 1
        for name, value in (snapshot.get("counters") or {}).items():
            if name in _COUNTERS:
                setattr(self, name, value)
        self.usage.update(snapshot.get("usage") or {})
        self.usage_by_modality = dict(snapshot.get("usage_by_modality") or {})
        self.tool_calls = [ToolRecord(c[0], c[1], c[2], c[3]) for c in snapshot.get("tool_calls") or []]
        for pcm in snapshot.get("caller_audio") or []:
            self._buffered.append(base64.b64decode(pcm))
        notes = []
        cut = snapshot.get("cut_turn")
        if cut:
            notes.append(CUT_TURN_TEXT.format(said=cut.get("said", ""), heard=cut.get("heard", "")))
        tools = snapshot.get("cut_tools") or []
        if tools:
            calls = ", ".join(f"{t['name']}({_short(t.get('args') or {})})" for t in tools)
            notes.append(CUT_TOOLS_TEXT.format(calls=calls))
        self._resume_note = MOVED_TEXT.format(what=" ".join(notes)) if notes else None

    def _on_move_requested(self, event: ev.MoveRequested) -> list[act.Action]:
        if self.over or self.ending is not None or self.moving:
            return []  # an end already decided (a goodbye, a transfer) is kept
        self.moving = True
        if self._quiet():
            return self._move_now()
        log.info("call %s moves at the next quiet moment (in %.1f s at the latest)", self.call_sid, event.wait_s)
        return [act.StartTimer(Timer.MOVE, event.wait_s)]

    def _quiet(self) -> bool:
        """Nothing would be cut by moving now: no agent audio playing or owed, no tool running."""
        return (not self.current.open and not self.marks_in_flight and not self.pending_tools
                and not self._answer_owed and self.phase is not Phase.AWAITING_START)

    def _move_if_quiet(self) -> list[act.Action]:
        if self.moving and not self.over and self.ending is None and self._quiet():
            return self._move_now()
        return []

    def _move_now(self) -> list[act.Action]:
        """Hand the call over: note what is cut short (the model on the next instance is
        told), and end this stream as a move."""
        if self.current.open or self.marks_in_flight:
            said = self.transcript[-1][1].strip() if self.transcript and self.transcript[-1][0] == "agent" else ""
            sent = self._turn_sent.get(self.turn, 0)
            heard = self._turn_heard.get(self.turn, 0)
            part = said[: round(len(said) * heard / sent)] if sent else ""
            self.cut_turn = {"said": said[-500:], "heard": part[-500:],
                             "heard_s": round(heard / ULAW_BYTES_PER_SECOND, 2)}
        self.cut_tools = [{"id": t.call_id, "name": t.name, "args": self._tool_args.get(t.call_id, {})}
                          for t in self.pending_tools.values()]
        log.info("call %s moves to another instance now%s", self.call_sid,
                 " (cutting a turn short)" if self.cut_turn else "")
        return [act.CancelTimer(Timer.MOVE), *self._end("moved to another instance", move=True)]

    def _move_deadline(self) -> list[act.Action]:
        if self.moving and self.ending is None:
            return self._move_now()
        return []

    # ----------------------------------------------------- Twilio events

    def _on_connected(self, event: tw.Connected) -> list[act.Action]:
        log.info("twilio stream connected (protocol=%s version=%s)", event.protocol, event.version)
        return []

    def _on_start(self, event: tw.StreamStarted) -> list[act.Action]:
        if self.phase is not Phase.AWAITING_START:
            self._warn_once("dup-start", "ignored a second start event on stream %s", self.stream_sid)
            return []
        self.stream_sid = event.stream_sid
        self.call_sid = event.call_sid
        self.parameters = dict(event.custom_parameters)
        self._out = tw.Outbound(event.stream_sid)
        if not tw.looks_like_stream_sid(event.stream_sid):
            log.warning("stream sid %r is not of the MZ… form; carrying on", event.stream_sid)
        if (event.encoding, event.sample_rate, event.channels) != ("audio/x-mulaw", 8000, 1):
            fmt = f"{event.encoding} {event.sample_rate} Hz x{event.channels}"
            return self._end(f"unsupported media format {fmt}", apologize=True)
        self.phase = Phase.CONNECTING
        self.link = LiveLink.CONNECTING
        log.info("call %s started on stream %s", event.call_sid, event.stream_sid)
        actions: list[act.Action] = [act.ConnectLive()]
        if self.max_call_s:
            actions.append(act.StartTimer(Timer.MAX_CALL, self.max_call_s))
        if self.parameters.get("amd") == "pending":
            self.detection = Detection.DETECTING
            log.info("call %s: waiting for the answering-machine verdict before the agent speaks", event.call_sid)
            actions.append(act.StartTimer(Timer.AMD, self.amd_timeout_s))
        return actions

    def _on_caller_audio(self, event: tw.CallerAudio) -> list[act.Action]:
        if self.phase is Phase.AWAITING_START:
            self.frames_dropped += 1
            self._warn_once("media-before-start", "dropped media that arrived before the start event")
            return []
        if not self._same_stream(event.stream_sid):
            return self._mismatch()
        if self.over:
            return []
        try:
            pcm = self.inbound.convert(event.payload)
        except MalformedMessage as exc:
            return self.bad_frame(exc)
        self.frames_in += 1
        self.speech.feed(pcm)
        if self.tap is not None:
            self.tap.caller(event.payload)
        if self.detection is Detection.DETECTING:
            return []  # a machine's greeting must not start a conversation with it
        if self.link is not LiveLink.READY:
            if len(self._buffered) == self._buffered.maxlen:
                self.frames_dropped += 1
                self._warn_once("buffer-full", "caller audio buffer full while Live is unavailable; dropping the oldest")
            self._buffered.append(pcm)
            return []
        self._frames_to_live += 1
        return [act.SendAudioToLive(pcm)]

    def _on_mark(self, event: tw.MarkEchoed) -> list[act.Action]:
        if not self._same_stream(event.stream_sid):
            return self._mismatch()
        if event.name in self.marks_cleared:
            self.marks_cleared.discard(event.name)
            return []
        if not any(m.name == event.name for m in self.marks_in_flight):
            self._warn_once("unknown-mark", "ignored an echo of unknown mark %r", event.name)
            return []
        # Twilio plays in order, so this echo also confirms every earlier mark.
        while self.marks_in_flight:
            mark = self.marks_in_flight.popleft()
            self.heard_bytes += mark.nbytes
            self._turn_heard[mark.turn] = self._turn_heard.get(mark.turn, 0) + mark.nbytes
            if mark.name == event.name:
                break
        if not self.marks_in_flight and not self.current.open and self.phase is Phase.AGENT_SPEAKING:
            self.phase = Phase.LISTENING
        return self._end_if_goodbye_heard() or self._move_if_quiet()

    def _on_dtmf(self, event: tw.DtmfPressed) -> list[act.Action]:
        if not self._same_stream(event.stream_sid):
            return self._mismatch()
        if self.over:
            return []
        self.digits.append(event.digit)
        self._keypad.append(event.digit)
        if event.digit == "#":  # the caller is done typing
            return [act.CancelTimer(Timer.DTMF), *self._keypad_to_model()]
        return [act.StartTimer(Timer.DTMF, self.dtmf_timeout_s)]

    def _keypad_to_model(self) -> list[act.Action]:
        """Give the digits typed so far to the model as one short text turn."""
        if self.link is not LiveLink.READY:
            return [act.StartTimer(Timer.DTMF, self.dtmf_timeout_s)] if self._keypad else []  # try again later
        digits = [d for d in self._keypad if d != "#"] or self._keypad
        self._keypad = []
        if not digits:
            return []
        log.info("caller typed %d key(s) on the keypad", len(digits))
        return [act.SendTextToLive(f"(The caller typed {' '.join(digits)} on the keypad.)")]

    def _on_stop(self, event: tw.StreamStopped) -> list[act.Action]:
        if event.stream_sid is not None and not self._same_stream(event.stream_sid):
            return self._mismatch()
        return self._end("caller hung up")

    def _on_disconnected(self, event: ev.TwilioDisconnected) -> list[act.Action]:
        return self._end(f"Twilio socket closed without stop (code={event.code})")

    def _on_unknown(self, event: tw.UnknownEvent) -> list[act.Action]:
        self._warn_once(f"unknown:{event.name}", "ignored unknown Twilio event %r", event.name)
        return []

    # ------------------------------------------------------- Live events

    def _on_live_ready(self, event: ev.LiveReady) -> list[act.Action]:
        if self.over or self.phase is Phase.AWAITING_START:
            return []
        first = not self._ever_ready
        self._ever_ready = True
        self.link = LiveLink.READY
        self._reconnect_attempts = 0
        self._frames_to_live = self._kept_frames = self._kept_sends = 0
        self._turn_completed = self._go_away_seen = False
        if self.phase is Phase.CONNECTING:
            self.phase = Phase.LISTENING
        actions: list[act.Action] = []
        if first:
            actions.extend(self._first_words())
        else:
            self.reconnects += 1
            if self._attempt_handle is not None:
                self.sessions_resumed += 1
            else:
                self.sessions_fresh += 1
            self.current.discarding = False  # the old session's late audio cannot reach a new one
            log.info("Live session resumed (reconnect %d); replaying %d buffered frames", self.reconnects, len(self._buffered))
        # Nothing said or computed while switching is lost: audio first, in order, then tool results.
        actions.extend(act.SendAudioToLive(pcm) for pcm in self._buffered)
        self._buffered.clear()
        actions.extend(self._queued_responses)
        self._queued_responses.clear()
        if self._resume_note is not None:
            actions.append(act.SendTextToLive(self._resume_note))
            self._resume_note = None
            self._answer_owed = True
        if self._keypad:
            actions.append(act.StartTimer(Timer.DTMF, self.dtmf_timeout_s))
        return actions

    def _first_words(self) -> list[act.Action]:
        """What the model is told first, once: the greeting, the outbound purpose, the
        voicemail instruction, or the opening of a call back from a transfer; nothing
        while the answering-machine verdict is awaited."""
        if self._opening_sent or self.detection is Detection.DETECTING or self.link is not LiveLink.READY:
            return []
        self._opening_sent = True
        if self.detection is Detection.MACHINE:
            assert self.voicemail_message
            self.ending = Ending(act.EndCall("voicemail message left", hangup=True), self.turn + 1, voicemail=True)
            return [act.SendTextToLive(VOICEMAIL_TEXT.format(message=self.voicemail_message)),
                    act.StartTimer(Timer.GOODBYE_GRACE, VOICEMAIL_GRACE_S)]
        if self.opening:
            return [act.SendTextToLive(self.opening)]
        purpose = self.parameters.get("purpose")
        if purpose:
            return [act.SendTextToLive(OUTBOUND_GREETING.format(purpose=purpose[:400]))]
        return [act.SendTextToLive(self.greeting)] if self.greeting else []

    def _on_answered_by(self, event: ev.AnsweredBy) -> list[act.Action]:
        if self.detection is not Detection.DETECTING or self.over:
            return []
        verdict = event.verdict
        self.answered_by = verdict
        actions: list[act.Action] = [act.CancelTimer(Timer.AMD)]
        if verdict == "fax":
            self.detection = Detection.FAX
            return actions + self._end("answered by a fax machine", hangup=True)
        if verdict in MACHINE_VERDICTS:
            self.detection = Detection.MACHINE
            if not self.voicemail_message:
                return actions + self._end("answered by a machine; no voicemail message is configured", hangup=True)
            log.info("call %s answered by a machine (%s): leaving the voicemail message", self.call_sid, verdict)
            return actions + self._first_words()
        if verdict not in ("human", "unknown"):
            self._warn_once("verdict", "unknown answering-machine verdict %r; going on as with a person", verdict)
        self.detection = Detection.HUMAN
        log.info("call %s answered by %s: the agent speaks", self.call_sid, verdict)
        return actions + self._first_words()

    def _amd_overdue(self) -> list[act.Action]:
        if self.detection is not Detection.DETECTING:
            return []
        log.warning("no answering-machine verdict after %.0f s; going on as with a person", self.amd_timeout_s)
        self.detection = Detection.HUMAN
        return self._first_words()

    def _on_live_failed(self, event: ev.LiveFailed) -> list[act.Action]:
        if self.over:
            return []
        if not self._ever_ready and self.resumption_handle is not None and event.code in FATAL_LIVE_CODES:
            # A call back from a transfer whose handle expired: a fresh session, the same opening.
            log.warning("the returning call's resumption handle was refused (%s); opening a fresh session", event.reason)
            self.resumption_handle = None
            return self._reconnect(f"resumption refused, opening a fresh session: {event.reason}")
        if not self._ever_ready:
            return self._end(f"Live session could not be opened: {event.reason}", apologize=True)
        if event.code in FATAL_LIVE_CODES:
            if self._attempt_handle is None:  # a fresh session's setup refused: retrying would loop
                return self._end(f"Live session could not be opened: {event.reason}", apologize=True)
            # The handle was refused (expired, invalid, another model): the caller stays, and
            # a fresh session carries the conversation so far (`carry_over`).
            log.warning("resumption handle refused (code=%s, %s); opening a fresh session", event.code, event.reason)
            self.resumption_handle = None
            return self._reconnect(f"resumption refused, opening a fresh session: {event.reason}")
        return self._reconnect(f"resuming failed: {event.reason}")

    def _on_live_send_failed(self, event: ev.LiveSendFailed) -> list[act.Action]:
        if self.over:
            return []
        self.live_send_failures += 1
        self._keep_for_next_session(event.unsent)
        if self.link is not LiveLink.READY:
            return []  # already being replaced: the next session gets what was kept
        if event.code in FATAL_LIVE_CODES and not self._go_away_seen:  # as `_on_live_closed`
            return self._end(f"Live session closed (code={event.code}): {event.error}", apologize=True)
        return self._reconnect(f"sending to Live failed: {event.error}")

    def _keep_for_next_session(self, unsent: tuple) -> None:
        """What did not go out is older than anything buffered since the failure, and
        newer than what earlier failures kept: it goes between the two. The buffer keeps
        the newest `BUFFERED_FRAMES`, as it does while Live is away."""
        audio = [a.pcm for a in unsent if isinstance(a, act.SendAudioToLive)]
        if audio:
            frames = list(self._buffered)
            kept = min(self._kept_frames, len(frames))
            frames[kept:kept] = audio
            self._kept_frames = kept + len(audio)
            self.frames_dropped += max(0, len(frames) - BUFFERED_FRAMES)
            self._buffered.clear()
            self._buffered.extend(frames)
        others = [a for a in unsent if isinstance(a, (act.SendTextToLive, act.SendToolResponse))]
        self._queued_responses[self._kept_sends:self._kept_sends] = others
        self._kept_sends += len(others)

    def _on_live_closed(self, event: ev.LiveClosed) -> list[act.Action]:
        if self.over or self.link is LiveLink.SWITCHING:
            return []
        what = f"Live session closed (code={event.code}, {event.reason or 'no reason'})"
        # After a goAway the service closes with 1000, 1011 or even 1008 ("client failed to
        # close the connection after receiving a GoAway"): the session ended, not the request.
        if event.code in FATAL_LIVE_CODES and not self._go_away_seen:
            return self._end(what, apologize=True)
        log.warning("%s; resuming", what)
        return self._reconnect(what)

    def _on_server_stopping(self, event: ev.ServerStopping) -> list[act.Action]:
        return self._end("server shutting down", apologize=True)

    def _on_timer(self, event: ev.TimerFired) -> list[act.Action]:
        if self.over:
            return []
        return self._timer_handlers[Timer(event.name)](self)

    def _goaway_deadline(self) -> list[act.Action]:
        if self._resume_at_boundary and self.link is LiveLink.READY:
            return self._reconnect("goAway deadline reached before a turn boundary")
        return []

    def _watchdog_fired(self) -> list[act.Action]:
        if self.watchdog is Watchdog.NUDGED or self.link is not LiveLink.READY:
            self.watchdog = Watchdog.IDLE if self.watchdog is Watchdog.ARMED else self.watchdog
            return []
        self.watchdog = Watchdog.NUDGED
        self.watchdog_nudges += 1
        log.warning("model silent for %.1f s; nudging it once", self.watchdog_s or 0)
        return [act.SendTextToLive(NUDGE_TEXT)]

    def _discard_expired(self) -> list[act.Action]:
        if self.current.discarding:
            self.discards_timed_out += 1
            log.warning("no turnComplete %.1f s after an interruption; playing model audio again", self.discard_limit_s)
            self.current.discarding = False
        return []

    def _max_call_reached(self) -> list[act.Action]:
        if self.ending is not None:
            return []
        log.info("call reached its %.0f s limit; asking the agent to say goodbye", self.max_call_s or 0)
        # The goodbye is the model's answer to our prompt: a turn after the current one.
        actions = self._end_after_goodbye(act.EndCall("maximum call length reached", hangup=True), self.turn + 1)
        return [act.SendTextToLive(GOODBYE_TEXT), *actions]

    def _goodbye_overdue(self) -> list[act.Action]:
        if self.ending is None:
            return []
        log.info("the goodbye took longer than %.0f s; ending the call now", self.goodbye_timeout_s)
        return self._end_as(self.ending.end)

    def _on_hangup_requested(self, event: ev.HangupRequested) -> list[act.Action]:
        if self.over or self.ending is not None:
            return []
        log.info("the agent is ending the call (%s) once its goodbye has played", event.reason)
        # The goodbye is said in the turn that called the tool (or right after its result).
        return self._end_after_goodbye(act.EndCall(f"agent ended the call: {event.reason}", hangup=True), self.turn)

    def _on_transfer_requested(self, event: ev.TransferRequested) -> list[act.Action]:
        if self.over or self.ending is not None:
            return []
        log.info("transferring the call to %s once the hand-off has played", event.name)
        if event.warm:
            end = act.EndCall(f"warm transfer to {event.name}", transfer_to=event.destination,
                             transfer_name=event.name, transfer_summary=event.summary)
            actions = self._end_after_goodbye(end, self.turn)
            assert self.ending is not None
            self.ending.needs_handle = True
            return actions
        else:
            end = act.EndCall(f"transferred to {event.name}", transfer_to=event.destination, transfer_name=event.name)
        return self._end_after_goodbye(end, self.turn)

    def _on_model_audio(self, event: ev.ModelAudio) -> list[act.Action]:
        if self.phase not in (Phase.LISTENING, Phase.AGENT_SPEAKING):
            return []
        if self.current.discarding:
            self.stale_audio_dropped += 1
            return []
        actions = self._disarm_watchdog()
        payloads = self.outbound.convert(event.pcm)
        if not self.current.open:
            self.current.open = True
            self.current.drained = False
            self.current.number += 1
        if not payloads:
            return actions
        self.phase = Phase.AGENT_SPEAKING
        actions.append(self._media(payloads))
        return actions

    def _on_generation_complete(self, event: ev.GenerationComplete) -> list[act.Action]:
        return self._drain_turn()

    def _on_turn_complete(self, event: ev.TurnComplete) -> list[act.Action]:
        actions = self._drain_turn()
        self.current.open = False
        # The interrupted turn is over: what follows is a new turn. The "discard" timer is
        # left to fire into nothing; the next interruption restarts it.
        self.current.discarding = False
        self._transcript_break = True
        self._turn_completed = True
        if not self.marks_in_flight and self.phase is Phase.AGENT_SPEAKING:
            self.phase = Phase.LISTENING
        if self.ending is not None and self.turn >= self.ending.after_turn:
            self.ending.turn_complete = True
            actions.extend(self._end_if_goodbye_heard())
        self._answer_owed = False
        if self._resume_at_boundary and not self.pending_tools and not self.over:
            actions.extend(self._reconnect("goAway: switching sessions at a turn boundary"))
        actions.extend(self._move_if_quiet())
        return actions

    def _on_interrupted(self, event: ev.ModelInterrupted) -> list[act.Action]:
        if self.over or self.phase is Phase.AWAITING_START:
            return []
        self.interruptions += 1
        turn_sent = self._turn_sent.get(self.turn, 0)
        turn_heard = self._turn_heard.get(self.turn, 0)
        log.info(
            "caller interrupted turn %d: heard %.2f s of %.2f s sent",
            self.turn, turn_heard / ULAW_BYTES_PER_SECOND, turn_sent / ULAW_BYTES_PER_SECOND,
        )
        for mark in self.marks_in_flight:
            self.marks_cleared.add(mark.name)
            self.cleared_bytes += mark.nbytes
        self.marks_in_flight.clear()
        self.outbound.reset()
        if self.tap is not None:
            self.tap.cleared()
        self.current.open = False
        self.current.discarding = True
        self._transcript_break = True
        self.phase = Phase.LISTENING
        # Always clear, even if everything seems played: Twilio may still be buffering.
        assert self._out is not None
        return [act.SendToTwilio((self._out.clear(),)), act.StartTimer(Timer.DISCARD, self.discard_limit_s)]

    def _on_transcript(self, event: ev.Transcript) -> list[act.Action]:
        if not event.text:
            return []
        actions: list[act.Action] = []
        if event.role == "caller":
            # Not the end of the discard: input transcription has no ordering with the
            # model's output (docs/gemini-live.md §12), so late audio of the interrupted turn
            # can still follow it. Only that turn's turnComplete ends it.
            actions = self._arm_watchdog()
        if self.transcript and self.transcript[-1][0] == event.role and not self._transcript_break:
            self.transcript[-1][1] += event.text
        else:
            self.transcript.append([event.role, event.text])
        self._transcript_break = False
        return actions

    def _on_tool_call(self, event: ev.ToolCallRequested) -> list[act.Action]:
        if self.over:
            return []
        actions: list[act.Action] = self._disarm_watchdog()
        for fc in event.calls:
            record = ToolRecord(fc.call_id, fc.name)
            self.pending_tools[fc.call_id] = record
            self._tool_args[fc.call_id] = dict(fc.args)
            self.tool_calls.append(record)
            log.info("model called %s(%s) id=%s", fc.name, _short(fc.args), fc.call_id)
            actions.append(act.RunTool(fc.call_id, fc.name, dict(fc.args)))
        return actions

    def _on_tool_cancelled(self, event: ev.ToolCallCancelled) -> list[act.Action]:
        actions: list[act.Action] = []
        for call_id in event.call_ids:
            record = self.pending_tools.pop(call_id, None)
            if record is not None:
                record.outcome = "cancelled"
                log.info("model cancelled tool call %s (%s)", call_id, record.name)
                actions.append(act.CancelTool(call_id))
        return actions

    def _on_tool_finished(self, event: ev.ToolFinished) -> list[act.Action]:
        record = self.pending_tools.pop(event.call_id, None)
        if record is None:
            return []  # cancelled meanwhile: the model must not get a response
        record.outcome = "error" if "error" in event.response else "ok"
        record.latency_ms = round(event.elapsed_s * 1000, 1)
        if self.over:
            return []
        self._tool_args.pop(event.call_id, None)
        response = act.SendToolResponse(event.call_id, event.name, event.response, event.scheduling)
        if event.scheduling != "SILENT":
            self._answer_owed = True
        if self.link is not LiveLink.READY:
            self._queued_responses.append(response)  # delivered on the resumed session
            return []
        if event.scheduling == "SILENT":  # the model was told not to speak: silence is expected
            return [response]
        return [response, *self._arm_watchdog()]

    def _on_usage(self, event: ev.UsageReported) -> list[act.Action]:
        self.usage["prompt"] += event.prompt_tokens
        self.usage["response"] += event.response_tokens
        self.usage["total"] += event.total_tokens
        self.usage["thoughts"] += event.thoughts_tokens
        self.usage["tool_use_prompt"] += event.tool_use_prompt_tokens
        self.usage["cached"] += event.cached_tokens
        for modality, count in event.by_modality.items():
            self.usage_by_modality[modality] = self.usage_by_modality.get(modality, 0) + count
        return []

    def _on_resumption(self, event: ev.ResumptionUpdate) -> list[act.Action]:
        if event.resumable and event.handle:
            self.resumption_handle = event.handle
            if self.ending is not None and self.ending.needs_handle and self.ending.turn_complete:
                self.ending.handle_seen = True
                return self._end_if_goodbye_heard()
        return []

    def _handle_overdue(self) -> list[act.Action]:
        if self.ending is None or not self.ending.needs_handle:
            return []
        log.info("no resumption handle after the hand-off; the caller would come back to the last one")
        self.ending.handle_seen = True
        return self._end_if_goodbye_heard()

    def _on_go_away(self, event: ev.GoAway) -> list[act.Action]:
        log.info("Live session will close soon (time left: %s s)", event.time_left_s)
        self._go_away_seen = True
        if self.link is not LiveLink.READY or self.over:
            return []
        left = event.time_left_s
        busy = self.current.open or bool(self.pending_tools)
        if busy and (left is None or left > GOAWAY_MARGIN_S + 1.0):
            # Let the agent finish its sentence; switch at the turn boundary, or at the deadline.
            self._resume_at_boundary = True
            return [act.StartTimer(Timer.GOAWAY, (left - GOAWAY_MARGIN_S) if left is not None else 5.0)]
        return self._reconnect("goAway: switching sessions now")

    # ------------------------------------------------------------ helpers

    def _media(self, payloads: list[str]) -> act.SendToTwilio:
        assert self._out is not None
        out = self._out
        messages = [out.media(p) for p in payloads]
        if self.tap is not None:
            self.tap.agent(payloads)
        nbytes = 160 * len(payloads)
        self._mark_seq += 1
        mark = _Mark(f"t{self.turn}-{self._mark_seq}", self.turn, nbytes)
        self.marks_in_flight.append(mark)
        messages.append(out.mark(mark.name))
        self.frames_out += len(payloads)
        self.sent_bytes += nbytes
        self._turn_sent[self.turn] = self._turn_sent.get(self.turn, 0) + nbytes
        return act.SendToTwilio(tuple(messages))

    def _drain_turn(self) -> list[act.Action]:
        """Flush the resampler tail and partial frame so the last syllable plays now."""
        if not self.current.open or self.current.drained or self.current.discarding:
            return []
        self.current.drained = True
        payloads = self.outbound.end_turn()
        if not payloads or self.phase not in (Phase.LISTENING, Phase.AGENT_SPEAKING):
            return []
        self.phase = Phase.AGENT_SPEAKING
        return [self._media(payloads)]

    def _reconnect(self, reason: str) -> list[act.Action]:
        """Replace the Live session, keeping the conversation through the resumption handle."""
        actions = self._drain_turn()  # what the old session said still plays
        if self.link is LiveLink.READY:  # a session ends (a failure to open one is an attempt, below)
            healthy = self._turn_completed or self._frames_to_live >= HEALTHY_SESSION_FRAMES
            self._unhealthy_sessions = 0 if healthy else self._unhealthy_sessions + 1
            if self._unhealthy_sessions > MAX_UNHEALTHY_SESSIONS:
                why = f"{self._unhealthy_sessions} Live sessions in a row ended before they were healthy (the last: {reason})"
                log.error("call %s: %s; ending it with the apology", self.call_sid, why)
                return actions + self._end(why, apologize=True)
        self.current.open = False
        self._resume_at_boundary = False
        self.link = LiveLink.SWITCHING
        self._attempt_handle = self.resumption_handle
        self._reconnect_attempts += 1
        if self._reconnect_attempts > len(RECONNECT_BACKOFF_S):
            return actions + self._end(
                f"could not restore the Live session after {len(RECONNECT_BACKOFF_S)} attempts ({reason})", apologize=True
            )
        # Sessions that fail at once back off as failed attempts do: a passing fault gets time to clear.
        step = self._reconnect_attempts - 1 + max(self._unhealthy_sessions - 1, 0)
        delay = RECONNECT_BACKOFF_S[min(step, len(RECONNECT_BACKOFF_S) - 1)]
        actions.append(act.CancelTimer(Timer.GOAWAY))
        actions.append(act.ResumeLive(reason, delay))
        return actions

    def _arm_watchdog(self) -> list[act.Action]:
        if not self.watchdog_s or self.link is not LiveLink.READY:
            return []
        self.watchdog = Watchdog.ARMED
        return [act.StartTimer(Timer.WATCHDOG, self.watchdog_s)]

    def _disarm_watchdog(self) -> list[act.Action]:
        if self.watchdog is not Watchdog.ARMED:
            return []
        self.watchdog = Watchdog.IDLE
        return [act.CancelTimer(Timer.WATCHDOG)]

    def _end_after_goodbye(self, end: act.EndCall, after_turn: int) -> list[act.Action]:
        self.ending = Ending(end, after_turn)
        return [act.StartTimer(Timer.GOODBYE_GRACE, self.goodbye_timeout_s)]

    def _end_if_goodbye_heard(self) -> list[act.Action]:
        """The end waits for the goodbye's turn to complete and its last mark to echo."""
        ending = self.ending
        if ending is not None and ending.turn_complete and not self.marks_in_flight and not self.current.open:
            if ending.needs_handle and not ending.handle_seen and self.link is LiveLink.READY:
                if ending.waiting_for_handle:
                    return []
                ending.waiting_for_handle = True
                return [act.StartTimer(Timer.HANDLE_WAIT, HANDLE_WAIT_S)]
            if ending.voicemail:
                self.message_left = True
            return self._end_as(ending.end)
        return []

    def _end_as(self, end: act.EndCall) -> list[act.Action]:
        return self._end(end.reason, apologize=end.apologize, hangup=end.hangup, transfer=end if end.transfer_to else None)

    def _end(
        self, reason: str, *, apologize: bool = False, close_code: int = 1000, hangup: bool = False,
        transfer: act.EndCall | None = None, move: bool = False,
    ) -> list[act.Action]:
        if self.over:
            return []
        self.phase = Phase.ENDING
        self.end_reason = reason
        actions: list[act.Action] = [act.CancelTool(call_id) for call_id in self.pending_tools]
        for record in self.pending_tools.values():
            record.outcome = "cancelled"
        self.pending_tools.clear()
        if transfer is not None and transfer.transfer_to and not apologize:
            actions.append(act.EndCall(reason, close_code=close_code, transfer_to=transfer.transfer_to,
                                      transfer_name=transfer.transfer_name, transfer_summary=transfer.transfer_summary))
        else:
            actions.append(act.EndCall(reason, apologize=apologize, close_code=close_code, hangup=hangup, move=move))
        return actions

    def _same_stream(self, sid: str | None) -> bool:
        return sid is None or sid == self.stream_sid

    def _mismatch(self) -> list[act.Action]:
        return self.bad_frame(StreamMismatch(f"message for another stream (this call is {self.stream_sid})"))

    def _warn_once(self, key: str, msg: str, *args: object) -> None:
        if key not in self._warned:
            self._warned.add(key)
            log.warning(msg, *args)

    _timer_handlers = {
        Timer.GOAWAY: _goaway_deadline,
        Timer.WATCHDOG: _watchdog_fired,
        Timer.DISCARD: _discard_expired,
        Timer.DTMF: _keypad_to_model,
        Timer.MAX_CALL: _max_call_reached,
        Timer.GOODBYE_GRACE: _goodbye_overdue,
        Timer.MOVE: _move_deadline,
        Timer.AMD: _amd_overdue,
        Timer.HANDLE_WAIT: _handle_overdue,
    }

    _handlers = {
        tw.Connected: _on_connected,
        tw.StreamStarted: _on_start,
        tw.CallerAudio: _on_caller_audio,
        tw.MarkEchoed: _on_mark,
        tw.DtmfPressed: _on_dtmf,
        tw.StreamStopped: _on_stop,
        tw.UnknownEvent: _on_unknown,
        ev.TwilioDisconnected: _on_disconnected,
        ev.LiveReady: _on_live_ready,
        ev.LiveFailed: _on_live_failed,
        ev.LiveClosed: _on_live_closed,
        ev.LiveSendFailed: _on_live_send_failed,
        ev.ModelAudio: _on_model_audio,
        ev.GenerationComplete: _on_generation_complete,
        ev.TurnComplete: _on_turn_complete,
        ev.ModelInterrupted: _on_interrupted,
        ev.Transcript: _on_transcript,
        ev.ToolCallRequested: _on_tool_call,
        ev.ToolCallCancelled: _on_tool_cancelled,
        ev.ToolFinished: _on_tool_finished,
        ev.UsageReported: _on_usage,
        ev.ResumptionUpdate: _on_resumption,
        ev.GoAway: _on_go_away,
        ev.TimerFired: _on_timer,
        ev.ServerStopping: _on_server_stopping,
        ev.MoveRequested: _on_move_requested,
        ev.HangupRequested: _on_hangup_requested,
        ev.TransferRequested: _on_transfer_requested,
        ev.AnsweredBy: _on_answered_by,
    }


#: The counters of the call record that travel with a moved call.
_COUNTERS = (
    "frames_in", "frames_out", "frames_dropped", "bad_frames", "interruptions", "stale_audio_dropped",
    "discards_timed_out", "reconnects", "sessions_resumed", "sessions_fresh", "watchdog_nudges",
    "sent_bytes", "heard_bytes", "cleared_bytes",
)


def _short(args: dict) -> str:
    text = ", ".join(f"{k}={v!r}" for k, v in args.items())
    return text if len(text) <= 120 else text[:117] + "..."
