"""Watching one call: metrics, per-turn timings, trace spans and audio, from the bridge's hooks.

Why one observer beside the bridge rather than code in it: the bridge's job is
to move audio with as little as possible in the way, and several people change
it. It calls this module at a handful of points (a call begins and ends, the
caller stops speaking, a Live event has been handled, a tool finished, a frame
was bad) and this module turns those moments into everything we keep about a
call. It reads the core's public facts (`Call.turn`, `frames_out`,
`sent_bytes`, `interruptions`, `speech`) and never changes them.

A turn's response latency runs from the end of the caller's speech, as
`speech_end.SpeechEndDetector` saw it on the audio we relay, to the moment the
agent's first audio of the turn has been handed to Twilio's socket. A turn
with no caller speech before it (the greeting, a nudge) has no latency.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field
from typing import Any

from . import events as ev
from . import metrics as m
from .audio_recording import AudioRecordings, CallAudio

__all__ = ["Watch", "CallObserver", "TurnTiming"]

log = logging.getLogger(__name__)

ULAW_BYTES_PER_SECOND = 8000


@dataclass
class Watch:
    """What the server watches calls with; one per app (`create_app`)."""

    tracing: Any | None = None  # tracing.CallTracing, when OTEL_EXPORTER_OTLP_ENDPOINT is set
    recordings: AudioRecordings | None = None  # when RECORD_AUDIO is on
    tool_names: frozenset[str] = field(default_factory=frozenset)
    agent_names: frozenset[str] = field(default_factory=frozenset)  # configured agents: a bounded label

    def observe(self, call: Any, recorder: Any | None, agent: str | None = None) -> "CallObserver":
        return CallObserver(call, recorder, self, agent)


@dataclass
class TurnTiming:
    role: str  # "caller" or "agent"
    seq: int
    started_at: float
    ended_at: float | None = None
    response_latency_ms: float | None = None
    interrupted: bool = False
    speech_ended_at: float | None = None  # agent turns: the caller's end of speech they answer
    sent_bytes: int = 0

    def as_dict(self) -> dict[str, Any]:
        return {"role": self.role, "seq": self.seq, "started_at": self.started_at, "ended_at": self.ended_at,
                "response_latency_ms": self.response_latency_ms, "interrupted": self.interrupted}


class CallObserver:
    """Everything kept about one call beyond its record; created by the bridge, fed by its hooks."""

    def __init__(self, call: Any, recorder: Any | None, watch: Watch, agent: str | None = None):
        self.call = call
        self.agent = agent or "default"
        self.recorder = recorder
        self.watch = watch
        self.speech_ends = 0  # the detector's count last seen: the bridge compares it per frame
        self.timings: list[TurnTiming] = []
        self._began_at: float | None = None
        self._ended = False
        self._speech_end: float | None = None  # the caller's last end of speech not yet answered
        self._turn: TurnTiming | None = None
        self._turn_seen = 0
        self._caller_seq = 0
        self._interruptions_seen = 0
        self._span = None
        #: Both sides' audio while RECORD_AUDIO is on: the bridge hands it to the core as
        #: `Call.tap`, which feeds it; this observer only saves it when the call ends.
        self.audio: CallAudio | None = CallAudio() if watch.recordings is not None else None

    # ------------------------------------------------------------ the call

    def call_began(self) -> None:
        self._began_at = time.time()
        m.ACTIVE_CALLS.inc()
        if self.watch.tracing is not None:
            self._span = self.watch.tracing.call_span(self._began_at)

    def call_ended(self) -> None:
        """The bridge has torn the call down (safe to call twice)."""
        if self._ended or self._began_at is None:
            return
        self._ended = True
        now = time.time()
        self._close_turn(now, interrupted=False, cut=True)
        outcome = m.call_outcome(self.call.end_reason)
        agent_label = self.agent if not self.watch.agent_names or self.agent in self.watch.agent_names else "other"
        m.CALLS.labels(outcome, agent_label).inc()
        m.ACTIVE_CALLS.dec()
        if self._span is not None:
            agent = [t for t in self.timings if t.role == "agent"]
            ended = max([now] + [t.ended_at for t in agent if t.ended_at is not None])  # children end inside it
            self.watch.tracing.end_call(self._span, ended, {
                m_attr: value for m_attr, value in (
                    ("telephony.call_sid", self.call.call_sid), ("telephony.stream_sid", self.call.stream_sid),
                    ("telephony.agent", self.agent),
                    ("telephony.outcome", outcome), ("telephony.end_reason", self.call.end_reason),
                    ("telephony.agent_turns", len(agent)), ("telephony.interruptions", self.call.interruptions),
                    ("telephony.live_reconnects", self.call.reconnects),
                    ("telephony.answered_by", self.call.answered_by), ("telephony.amd_outcome", self.call.amd_outcome))})
        if self.audio is not None and self.call.call_sid:
            audio, self.audio = self.audio, None
            try:
                asyncio.get_running_loop().run_in_executor(None, self.watch.recordings.save, self.call.call_sid, audio)
            except RuntimeError:  # no loop (a test driving the bridge by hand): write now
                self.watch.recordings.save(self.call.call_sid, audio)

    # ------------------------------------------------------------ hooks of the bridge

    def caller_stopped_speaking(self) -> None:
        """The core's detector has counted a new end of the caller's speech."""
        detector = self.call.speech
        self.speech_ends = detector.ends
        now = time.time()
        started, ended = detector.wall_time(detector.last_start, now), detector.wall_time(detector.last_end, now)
        self._speech_end = ended
        self._caller_seq += 1
        timing = TurnTiming("caller", self._caller_seq, started, ended)
        self.timings.append(timing)
        self._record(timing)

    @property
    def caller_turns(self) -> int:
        """How many caller turns were timed (a moved call's next instance numbers on from here)."""
        return self._caller_seq

    def continue_from(self, caller_turns: int) -> None:
        """A call that moved here: its caller turns number on from the last instance's."""
        self._caller_seq = caller_turns

    def bad_frame(self, error: Exception) -> None:
        m.BAD_FRAMES.labels(type(error).__name__).inc()

    def live_event(self, event: object, received: float) -> None:
        """A Live event has been handled and its actions performed; `received` is
        `time.perf_counter()` when it arrived (only read for `interrupted`)."""
        kind = type(event)
        if kind is ev.ModelAudio:
            if self.call.turn != self._turn_seen:
                self._open_turn()
        elif kind is ev.TurnComplete:
            self._close_turn(time.time(), interrupted=False)
        elif kind is ev.ModelInterrupted:
            if self.call.interruptions != self._interruptions_seen:  # the core acted on it (a clear went out)
                self._interruptions_seen = self.call.interruptions
                m.BARGE_INS.inc()
                m.CLEAR_SECONDS.observe(time.perf_counter() - received)
                self._close_turn(time.time(), interrupted=True)
        elif kind is ev.GoAway:
            m.GOAWAYS.inc()

    def live_opened(self, resumed: bool) -> None:
        m.LIVE_SESSIONS.labels("resumed" if resumed else "opened").inc()

    def live_replaced(self, reason: str) -> None:
        m.LIVE_REPLACED.labels(m.replacement_cause(reason)).inc()

    def tool_finished(self, name: str, outcome: str, elapsed_s: float) -> None:
        tool = name if name in self.watch.tool_names else "unknown"  # the model names tools: keep labels bounded
        m.TOOL_CALLS.labels(tool, outcome).inc()
        m.TOOL_SECONDS.labels(tool).observe(elapsed_s)
        if self._span is not None:
            now = time.time()
            self.watch.tracing.child(self._span, f"tool {name}", now - elapsed_s, now, {
                "telephony.call_sid": self.call.call_sid, "telephony.tool": name, "telephony.tool_outcome": outcome,
                "error": outcome == "error"})

    # ------------------------------------------------------------ turns

    def _open_turn(self) -> None:
        """The first audio of an agent turn has just gone to Twilio."""
        now = time.time()
        self._close_turn(now, interrupted=False)
        self._turn_seen = self.call.turn
        latency = None
        if self._speech_end is not None:
            latency = round(max(0.0, now - self._speech_end) * 1000, 1)
            m.RESPONSE_SECONDS.observe(latency / 1000)
        self._turn = TurnTiming("agent", self.call.turn, now, response_latency_ms=latency,
                                speech_ended_at=self._speech_end, sent_bytes=self.call.sent_bytes)
        self._speech_end = None

    def _close_turn(self, now: float, *, interrupted: bool, cut: bool = False) -> None:
        turn, self._turn = self._turn, None
        if turn is None:
            return
        # As heard: the audio sent plays from the turn's start, unless a clear cut it short.
        played = (self.call.sent_bytes - turn.sent_bytes) / ULAW_BYTES_PER_SECOND
        turn.ended_at = min(turn.started_at + played, now) if interrupted or cut else turn.started_at + played
        turn.interrupted = interrupted
        self.timings.append(turn)
        self._record(turn)
        if self._span is not None:
            self.watch.tracing.child(
                self._span, "agent turn", turn.speech_ended_at or turn.started_at, turn.ended_at, {
                    "telephony.call_sid": self.call.call_sid, "telephony.turn": turn.seq,
                    "telephony.response_latency_ms": turn.response_latency_ms, "telephony.interrupted": interrupted})

    def _record(self, timing: TurnTiming) -> None:
        if self.recorder is not None and self.call.call_sid:
            self.recorder.turn_timing(self.call.call_sid, **timing.as_dict())
