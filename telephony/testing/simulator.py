"""A caller on loopback: plays a recorded call at a server the way Twilio would.

``CallSimulator`` is Twilio's side of a bidirectional Media Stream
(docs/twilio-media-streams.md §1-§3). It connects to the server's WebSocket, sends a recording
with Twilio's timing and, at the same time, plays back what the server sends:

- ``connected`` and ``start`` go out at once; each ``media`` goes out at its
  ``timestamp`` (relative to the first media, divided by ``speed``) on an absolute
  monotonic clock, so a slow event loop never makes the caller drift (§3 "Size and
  pacing"); a ``dtmf`` goes out right after the media that precedes it; ``stop`` goes
  out one frame after the last media. Then the simulator waits up to ``linger`` seconds
  for the server to close, and closes itself otherwise.
- Every outgoing message after ``connected`` is renumbered from one counter, shared with
  the mark echoes the simulator injects, so ``sequenceNumber`` stays monotonic as on the
  real wire (§2: it "counts every message of every type"). Recorded ``mark`` lines are
  skipped: marks are echoed from what *this* server sends.
- What the server sends is validated as Twilio would (§3, §4): only text frames carrying
  JSON ``media`` / ``mark`` / ``clear`` with this call's ``streamSid`` and no extra
  fields. Anything else becomes a ``protocol_error`` event and is otherwise ignored
  (Twilio answers 31950 / 31951 and carries on).
- Playback is modelled like Twilio's buffer: received µ-law plays at
  ``8000 * speed`` bytes/s starting when it arrives (or when the audio ahead of it has
  played). A ``mark`` is echoed when playback reaches it, at once if nothing is buffered;
  ``clear`` drops the unplayed audio and echoes every pending mark immediately (§3 rule 1:
  an echo means "played *or* cleared").

The result is a ``SimulatedCall``: what the server sent, what the caller actually heard,
and a timeline of events for assertions and for humans.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import logging
import wave
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from telephony.testing.recordings import FRAME_BYTES, SAMPLE_RATE, read_recording

__all__ = ["CallSimulator", "SimulatedCall", "SimEvent"]

log = logging.getLogger(__name__)

#: Twilio refuses more than 10 minutes of buffered outbound audio (warning 31931).
MAX_BUFFERED_BYTES = 10 * 60 * SAMPLE_RATE
#: A new burst of agent audio (a ``media_in`` event) starts when audio arrives after the
#: buffer has been empty for this long; shorter gaps are jitter in a paced sender.
BURST_GAP_S = 0.2
#: Twilio's media-stream client announces itself like this.
TWILIO_USER_AGENT = "Twilio.TmeWs/1.0"

_OUTBOUND_KEYS = {
    "media": {"event", "streamSid", "media"},
    "mark": {"event", "streamSid", "mark"},
    "clear": {"event", "streamSid"},
}


@dataclass
class SimEvent:
    """One thing that happened on the simulated call; ``t`` is seconds since connect."""

    t: float
    kind: str
    detail: dict[str, Any] = field(default_factory=dict)

    def __str__(self) -> str:
        extra = " ".join(f"{k}={v!r}" for k, v in self.detail.items())
        return f"{self.t:7.2f}s  {self.kind} {extra}".rstrip()


@dataclass
class _Span:
    """Agent audio played back to back from ``t`` (bytes ``[0, played)`` were heard)."""

    t: float
    data: bytearray
    played: int | None = None  # set when the span is over (drained, cleared, call ended)


@dataclass
class SimulatedCall:
    """What happened on one simulated call.

    ``agent_audio`` is every µ-law byte the server sent, in order; ``played_audio`` only
    the bytes the caller heard (cleared and never-played audio excluded).
    """

    speed: float = 1.0
    stream_sid: str | None = None
    call_sid: str | None = None
    agent_audio: bytes = b""
    played_audio: bytes = b""
    media_frames: list[bytes] = field(default_factory=list)
    events: list[SimEvent] = field(default_factory=list)
    duration: float = 0.0
    started_at: float = 0.0
    """The loop's ``time()`` at connect (``time.monotonic()`` but on a virtual clock): the
    zero of every ``t`` here (to line up the emulator's times, taken on the same clock)."""
    spans: list[tuple[float, float, bytes]] = field(default_factory=list)
    """``(start, end, bytes)`` of each run of agent audio the caller heard."""

    # ---------------------------------------------------------------- summaries

    def of_kind(self, kind: str) -> list[SimEvent]:
        return [e for e in self.events if e.kind == kind]

    @property
    def clears(self) -> list[float]:
        """Times at which a ``clear`` arrived."""
        return [e.t for e in self.of_kind("clear")]

    @property
    def marks_received(self) -> list[str]:
        return [e.detail["name"] for e in self.of_kind("mark_in")]

    @property
    def marks_echoed(self) -> list[str]:
        return [e.detail["name"] for e in self.of_kind("mark_echo")]

    @property
    def protocol_errors(self) -> list[str]:
        return [e.detail["error"] for e in self.of_kind("protocol_error")]

    @property
    def close_code(self) -> int | None:
        closed = self.of_kind("closed")
        return closed[-1].detail.get("code") if closed else None

    @property
    def http_status(self) -> int | None:
        """The HTTP status the server refused the upgrade with (None: it was accepted)."""
        refused = self.of_kind("refused")
        return refused[-1].detail.get("status") if refused else None

    @property
    def close_reason(self) -> str | None:
        closed = self.of_kind("closed")
        return closed[-1].detail.get("reason") if closed else None

    @property
    def first_audio_at(self) -> float | None:
        media = self.of_kind("media_in")
        return media[0].t if media else None

    # ---------------------------------------------------------------- audio

    def audio_between(self, t0: float, t1: float) -> bytes:
        """The agent audio the caller *heard* between ``t0`` and ``t1`` (seconds since connect)."""
        rate = SAMPLE_RATE * self.speed
        out = bytearray()
        for start, _end, data in self.spans:
            i0 = max(0, int(round((t0 - start) * rate)))
            i1 = min(len(data), int(round((t1 - start) * rate)))
            if i1 > i0:
                out += data[i0:i1]
        return bytes(out)

    def to_wav(self, path: Path | str, *, played: bool = True) -> None:
        """Write the heard (or, with ``played=False``, all received) agent audio as a WAV."""
        from telephony.audio import ulaw_decode

        pcm = ulaw_decode(self.played_audio if played else self.agent_audio)
        with wave.open(str(path), "wb") as w:
            w.setnchannels(1)
            w.setsampwidth(2)
            w.setframerate(SAMPLE_RATE)
            w.writeframes(pcm.astype("<i2").tobytes())

    # ---------------------------------------------------------------- for humans

    def timeline(self) -> list[str]:
        """Readable lines, e.g. ``"  3.02s  agent audio starts"``, sorted by time."""
        rows: list[tuple[float, str]] = []
        for e in self.events:
            d = e.detail
            if e.kind == "sent_media":
                text = f"caller audio: {d['count']} frames ({d['count'] * 0.02:.2f} s of call time)"
            elif e.kind == "sent_dtmf":
                text = f"caller presses {d['digit']}"
            elif e.kind == "sent_stop":
                text = "caller hangs up (stop)"
            elif e.kind == "media_in":
                text = "agent audio starts"
            elif e.kind == "mark_in":
                text = f"mark {d['name']!r} received"
            elif e.kind == "mark_echo":
                how = "cleared" if d.get("cleared") else "played"
                text = f"mark {d['name']!r} echoed ({how})"
            elif e.kind == "clear":
                text = f"clear (dropped {d['dropped_bytes'] / SAMPLE_RATE:.2f} s of agent audio)"
            elif e.kind == "closed":
                text = f"closed by {d.get('by')} (code {d.get('code')}, reason {d.get('reason')!r})"
            elif e.kind == "protocol_error":
                text = f"PROTOCOL ERROR: {d['error']}"
            else:
                text = f"{e.kind} {d}"
            rows.append((e.t, text))
        for start, end, data in self.spans:
            rows.append((end, f"agent audio ends ({len(data) / SAMPLE_RATE:.2f} s heard)"))
        rows.sort(key=lambda r: r[0])
        return [f"{t:6.2f}s  {text}" for t, text in rows]


class CallSimulator:
    """Plays ``recording`` at the WebSocket ``url`` as Twilio would; see the module docstring.

    ``recording`` is a ``.jsonl`` path or a list of messages (``build_messages``).
    ``speed`` > 1 compresses time for both directions: the caller sends faster and the
    playback buffer drains faster, so marks come back proportionally sooner.
    """

    def __init__(
        self,
        url: str,
        recording: Path | str | list[dict[str, Any]],
        *,
        speed: float = 1.0,
        headers: dict[str, str] | None = None,
        linger: float = 2.0,
        max_size: int | None = 2**24,
    ) -> None:
        if speed <= 0:
            raise ValueError(f"speed must be > 0, got {speed}")
        self.url = url
        self.messages = read_recording(recording) if isinstance(recording, (str, Path)) else list(recording)
        for i, msg in enumerate(self.messages, 1):
            if msg.get("event") == "media":
                ts = (msg.get("media") or {}).get("timestamp")
                if not (isinstance(ts, str) and ts.isdigit()):
                    raise ValueError(f"recording message {i}: media.timestamp must be a digit string, got {ts!r}")
        self.speed = speed
        self.headers = headers
        self.linger = linger
        self.max_size = max_size
        start = next((m for m in self.messages if m.get("event") == "start"), None)
        self.stream_sid: str | None = (start or {}).get("streamSid") or next(
            (m["streamSid"] for m in self.messages if "streamSid" in m), None
        )
        self.call_sid: str | None = ((start or {}).get("start") or {}).get("callSid")

    # ------------------------------------------------------------------ public

    async def run(self) -> SimulatedCall:
        """Connect, play the whole call, return what happened. Never leaves tasks behind."""
        run = _Run(self)
        try:
            async with connect(
                self.url,
                additional_headers=self.headers,
                user_agent_header=TWILIO_USER_AGENT,
                max_size=self.max_size,
            ) as ws:
                await run.play(ws)
        except InvalidStatus as exc:  # refused at the handshake, as Twilio would see it
            run.record("refused", status=exc.response.status_code)
        return run.result()


class _Run:
    """The state of one simulated call (one per ``CallSimulator.run``)."""

    def __init__(self, sim: CallSimulator) -> None:
        self.sim = sim
        self.loop = asyncio.get_running_loop()
        self.t0 = 0.0
        self.rate = SAMPLE_RATE * sim.speed  # playback bytes per second
        self.events: list[SimEvent] = []
        self.seq = 0
        self.send_lock = asyncio.Lock()
        self.agent_audio = bytearray()
        self.media_frames: list[bytes] = []
        self.spans: list[_Span] = []
        self.pending_marks: list[tuple[int, str, float]] = []  # (offset in span, name, arrived)
        self.echo_queue: list[tuple[str, bool]] = []  # (name, cleared) waiting to be sent
        self.changed = asyncio.Event()
        self.drained_at: float | None = None
        self.sent_media: SimEvent | None = None
        self.overflow_reported = False
        self.closed_by: str | None = None

    # ------------------------------------------------------------------ clock

    def now(self) -> float:
        return self.loop.time() - self.t0

    def record(self, kind: str, **detail: Any) -> SimEvent:
        event = SimEvent(round(self.now(), 4), kind, detail)
        self.events.append(event)
        return event

    def protocol_error(self, error: str, raw: Any = None) -> None:
        snippet = raw if not isinstance(raw, (str, bytes)) else raw[:120]
        log.warning("server sent an invalid message: %s (%r)", error, snippet)
        self.record("protocol_error", error=error, raw=snippet)

    # ------------------------------------------------------------------ orchestration

    async def play(self, ws: ClientConnection) -> None:
        self.t0 = self.loop.time()
        async with asyncio.TaskGroup() as tg:
            receiver = tg.create_task(self.receive_loop(ws), name="sim-receive")
            player = tg.create_task(self.player_loop(ws), name="sim-player")
            sender = tg.create_task(self.send_loop(ws), name="sim-send")
            try:
                await asyncio.wait({receiver, sender}, return_when=asyncio.FIRST_COMPLETED)
                if not receiver.done():
                    # stop is out; give the server ``linger`` seconds to hang up first.
                    await asyncio.wait({receiver}, timeout=self.sim.linger)
                    if not receiver.done():
                        self.closed_by = "simulator"
                        await ws.close(1000)
                        await receiver
            finally:
                sender.cancel()
                player.cancel()
        self.finish(ws)

    def finish(self, ws: ClientConnection) -> None:
        now = self.now()
        for span in self.spans:
            if span.played is None:  # the call ended: whatever was not played never will be
                span.played = min(len(span.data), int((now - span.t) * self.rate))
        self.record(
            "closed",
            code=ws.close_code,
            reason=ws.close_reason,
            by=self.closed_by or "server",
        )

    def result(self) -> SimulatedCall:
        spans = [
            (s.t, s.t + s.played / self.rate, bytes(s.data[: s.played]))
            for s in self.spans
            if s.played
        ]
        return SimulatedCall(
            speed=self.sim.speed,
            stream_sid=self.sim.stream_sid,
            call_sid=self.sim.call_sid,
            agent_audio=bytes(self.agent_audio),
            played_audio=b"".join(data for _, _, data in spans),
            media_frames=self.media_frames,
            events=self.events,
            duration=round(self.now(), 4),
            started_at=self.t0,
            spans=spans,
        )

    # ------------------------------------------------------------------ caller → server

    async def send(self, ws: ClientConnection, msg: dict[str, Any]) -> None:
        """Number (if due) and send one message; the lock keeps numbers in wire order."""
        async with self.send_lock:
            if msg.get("event") != "connected":
                self.seq += 1
                msg = {**msg, "sequenceNumber": str(self.seq)}
            await ws.send(json.dumps(msg, separators=(",", ":")))

    async def send_loop(self, ws: ClientConnection) -> None:
        first_ts: int | None = None
        first_at = 0.0
        last_ts: int | None = None
        try:
            for msg in self.sim.messages:
                event = msg.get("event")
                if event == "mark":
                    continue  # echoes are generated from what this server sends
                if event == "media":
                    ts = int(msg["media"]["timestamp"])
                    if first_ts is None:
                        first_ts, first_at = ts, self.loop.time()
                    due = first_at + (ts - first_ts) / 1000 / self.sim.speed
                    await self.sleep_until(due)
                    last_ts = ts
                    await self.send(ws, msg)
                    if self.sent_media is None:  # the run's schedule, on this simulator's clock
                        self.sent_media = self.record("sent_media", count=0, first_due=round(due - self.t0, 4))
                    self.sent_media.detail["count"] += 1
                    self.sent_media.detail["last_due"] = round(due - self.t0, 4)
                    continue
                self.sent_media = None  # a later media run gets its own aggregate event
                due = None
                if event == "stop" and first_ts is not None and last_ts is not None:
                    frame_s = FRAME_BYTES / SAMPLE_RATE
                    due = first_at + ((last_ts - first_ts) / 1000 + frame_s) / self.sim.speed
                    await self.sleep_until(due)
                await self.send(ws, msg)
                if event == "dtmf":
                    self.record("sent_dtmf", digit=msg.get("dtmf", {}).get("digit"))
                elif event == "stop":
                    self.record("sent_stop", **({"due": round(due - self.t0, 4)} if due is not None else {}))
        except ConnectionClosed:
            pass  # the server hung up mid-call: the receiver records how

    async def sleep_until(self, deadline: float) -> None:
        delay = deadline - self.loop.time()
        if delay > 0:
            await asyncio.sleep(delay)

    # ------------------------------------------------------------------ server → caller

    async def receive_loop(self, ws: ClientConnection) -> None:
        try:
            async for raw in ws:
                self.on_message(raw)
                self.changed.set()
        except ConnectionClosed:
            pass

    def on_message(self, raw: str | bytes) -> None:
        if isinstance(raw, bytes):
            self.protocol_error("binary frame (Twilio 31950)", raw)
            return
        try:
            msg = json.loads(raw)
        except ValueError:
            self.protocol_error("not JSON (Twilio 31951)", raw)
            return
        if not isinstance(msg, dict):
            self.protocol_error("JSON is not an object (Twilio 31951)", raw)
            return
        event = msg.get("event")
        if event not in _OUTBOUND_KEYS:
            self.protocol_error(f"unsupported event {event!r} (Twilio 31951)", raw)
            return
        keys = set(msg)
        if keys != _OUTBOUND_KEYS[event]:
            extra, missing = sorted(keys - _OUTBOUND_KEYS[event]), sorted(_OUTBOUND_KEYS[event] - keys)
            self.protocol_error(f"{event}: extra fields {extra}, missing fields {missing} (Twilio 31951)", raw)
            return
        if msg["streamSid"] != self.sim.stream_sid:
            self.protocol_error(
                f"{event}: streamSid {msg['streamSid']!r} is not this call's {self.sim.stream_sid!r} (Twilio 31951)",
                raw,
            )
            return
        if event == "media":
            self.on_media(msg, raw)
        elif event == "mark":
            self.on_mark(msg, raw)
        else:
            self.on_clear()

    def on_media(self, msg: dict[str, Any], raw: str) -> None:
        media = msg["media"]
        if not isinstance(media, dict) or set(media) != {"payload"}:
            fields = sorted(media) if isinstance(media, dict) else type(media).__name__
            self.protocol_error(f"media: 'media' must hold only 'payload', got {fields} (Twilio 31951)", raw)
            return
        payload = media["payload"]
        try:
            if not isinstance(payload, str):
                raise ValueError
            data = base64.b64decode(payload, validate=True)  # standard alphabet only
        except (ValueError, binascii.Error):
            self.protocol_error("media: payload is not standard base64 (Twilio 31951)", raw)
            return
        if self.unplayed() + len(data) > MAX_BUFFERED_BYTES:
            if not self.overflow_reported:
                self.overflow_reported = True
                self.protocol_error("more than 10 min of audio buffered; refused (Twilio 31931)")
            return
        now = self.now()
        self.agent_audio += data
        self.media_frames.append(data)
        span = self.spans[-1] if self.spans else None
        if span is not None and span.played is None and self.playhead(span, now) < len(span.data):
            span.data += data
            return
        # The buffer is empty: playback of this audio starts now.
        if span is not None and span.played is None:
            span.played = len(span.data)
            self.drained_at = span.t + len(span.data) / self.rate
            for _, name, _ in self.pending_marks:  # all due already; the player may lag a tick
                self.echo_queue.append((name, False))
            self.pending_marks.clear()
        if self.drained_at is None or now - self.drained_at > BURST_GAP_S:
            self.record("media_in", bytes=len(data))
        self.spans.append(_Span(now, bytearray(data)))

    def on_mark(self, msg: dict[str, Any], raw: str) -> None:
        mark = msg["mark"]
        if not isinstance(mark, dict) or set(mark) != {"name"} or not isinstance(mark["name"], str):
            self.protocol_error("mark: 'mark' must hold only a string 'name' (Twilio 31951)", raw)
            return
        name = mark["name"]
        self.record("mark_in", name=name)
        span = self.current_span()
        if span is None or self.playhead(span, self.now()) >= len(span.data):
            self.echo_soon(name, cleared=False)
        else:
            self.pending_marks.append((len(span.data), name, self.now()))

    def on_clear(self) -> None:
        span = self.current_span()
        dropped = 0
        if span is not None:
            span.played = min(len(span.data), self.playhead(span, self.now()))
            dropped = len(span.data) - span.played
            self.drained_at = self.now()
        self.record(
            "clear", dropped_bytes=dropped, pending_marks=[n for _, n, _ in self.pending_marks],
            received_bytes=len(self.agent_audio),  # agent audio had reached us before the clear
        )
        pending, self.pending_marks = self.pending_marks, []
        for _, name, _ in pending:
            self.echo_soon(name, cleared=True)

    # ------------------------------------------------------------------ playback model

    def current_span(self) -> _Span | None:
        span = self.spans[-1] if self.spans else None
        return span if span is not None and span.played is None else None

    def playhead(self, span: _Span, now: float) -> int:
        return min(len(span.data), int((now - span.t) * self.rate))

    def unplayed(self) -> int:
        span = self.current_span()
        return 0 if span is None else len(span.data) - self.playhead(span, self.now())

    def echo_soon(self, name: str, *, cleared: bool) -> None:
        """Queue an echo for the player task (sending needs an await; handlers stay sync)."""
        self.echo_queue.append((name, cleared))
        self.changed.set()

    async def player_loop(self, ws: ClientConnection) -> None:
        """Echo marks when playback reaches them, and echoes queued by clear / empty buffer."""
        while True:
            span = self.current_span()
            timeout = None
            if self.pending_marks and span is not None:
                due = span.t + self.pending_marks[0][0] / self.rate
                timeout = max(0.0, due - self.now())
                if timeout == 0.0:
                    _, name, _ = self.pending_marks.pop(0)
                    self.echo_queue.append((name, False))
            if self.echo_queue:
                name, cleared = self.echo_queue.pop(0)
                try:
                    await self.send(
                        ws,
                        {"event": "mark", "streamSid": self.sim.stream_sid, "mark": {"name": name}},
                    )
                except ConnectionClosed:
                    return
                self.record("mark_echo", name=name, cleared=cleared)
                continue
            if timeout == 0.0:
                continue
            self.changed.clear()
            try:
                await asyncio.wait_for(self.changed.wait(), timeout)
            except TimeoutError:
                pass
