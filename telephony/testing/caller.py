"""A caller that reacts to what it hears, on Twilio's side of a Media Stream.

`CallSimulator` plays a recording with fixed timing; a scenario needs a caller who
waits for the agent to finish before answering, talks over it on purpose, presses
keys and hangs up. `LineCaller` is that caller: the same wire behaviour and checks
as the simulator (it shares its playback model, mark echoes and validation), but the
caller's side is produced while the call runs:

- a frame clock sends one 20 ms ``media`` frame every 20 ms on an absolute schedule,
  as Twilio does for the whole call, taking queued caller audio first and quiet line
  noise otherwise;
- a conversation coroutine, given a `Line`, decides what to say and when, from what
  the caller has heard so far (`Line.wait_for_reply`, `Line.wait_agent_starts`).

The caller's voice is whatever µ-law audio is queued: a real speech recording offline
(`speech_ulaw`), another Live session's voice in live scenarios.
"""

from __future__ import annotations

import asyncio
import base64
from pathlib import Path
from typing import Any, Awaitable, Callable

import numpy as np

from telephony.testing.recordings import FRAME_BYTES, SAMPLE_RATE, Silence, Speech, build_messages, media_payloads
from telephony.testing.simulator import CallSimulator, SimulatedCall, _Run

__all__ = ["Line", "LineCaller", "caller_utterances", "speech_ulaw"]

FRAME_S = FRAME_BYTES / SAMPLE_RATE

#: The repository's caller voice (CMU ARCTIC, tests/fixtures/speech) and two slices of it
#: that each make exactly one utterance: they start and end in pauses.
SPEECH_WAV = Path(__file__).resolve().parents[2] / "tests" / "fixtures" / "speech" / "arctic_a0007.wav"
SPEECH_SLICES = ((0.32, 1.92), (2.38, 3.58))


def caller_utterances(call: SimulatedCall) -> list[tuple[float, float]]:
    """(start, end) of each run of caller audio a `LineCaller` sent, in seconds since connect."""
    return [(e.t, e.detail["end"]) for e in call.of_kind("caller_speech")]


def speech_ulaw(index: int, wav: Path = SPEECH_WAV) -> bytes:
    """µ-law 8 kHz audio of one caller utterance (slice `index` mod 2 of the recording)."""
    start, end = SPEECH_SLICES[index % len(SPEECH_SLICES)]
    return media_payloads(build_messages([Speech(wav, start=start, end=end)], seed=index))


def _line_noise(seconds: float = 2.0) -> bytes:
    """Quiet line noise (-60 dBFS), as a real line carries between words."""
    return media_payloads(build_messages([Silence(seconds)], seed=99))


class Line:
    """What the conversation coroutine can do on the call; times are seconds since connect."""

    def __init__(self, run: "_CallerRun"):
        self._run = run

    def now(self) -> float:
        return self._run.now()

    def note(self, kind: str, **detail: Any) -> None:
        """Add an event to the call's timeline (e.g. the caller giving up)."""
        self._run.record(kind, **detail)

    @property
    def closed(self) -> bool:
        """The server ended the stream (the agent hung up or transferred)."""
        return self._run.server_closed.is_set()

    async def speak(self, ulaw: bytes) -> tuple[float, float]:
        """Queue the caller's audio and return (start, end) once its last frame is sent."""
        return await self._run.speak(ulaw)

    def queue(self, ulaw: bytes) -> None:
        """Add caller audio to send as soon as possible, without waiting (a live voice)."""
        self._run.outgoing += ulaw

    async def press(self, digits: str, press_s: float = 0.1, gap_s: float = 0.2) -> None:
        """Press keys: a ``dtmf`` event after each press (Twilio strips the tone from the media)."""
        for digit in digits:
            await self.sleep(press_s)
            await self._run.send_event({"event": "dtmf", "streamSid": self._run.sim.stream_sid,
                                        "dtmf": {"track": "inbound_track", "digit": digit}})
            self._run.record("sent_dtmf", digit=digit)
            await self.sleep(gap_s)

    async def next_frame(self) -> None:
        """Wait until the next 20 ms caller frame has gone out."""
        await self._run.tick()

    async def sleep(self, seconds: float) -> bool:
        """Wait, returning early (False) if the server closes the stream.

        `asyncio.timeout`, not `wait_for`: on Python 3.11 `wait_for` loses a cancellation
        that arrives as its future completes, which is exactly when the server hangs up."""
        try:
            async with asyncio.timeout(seconds):
                await self._run.server_closed.wait()
            return False
        except TimeoutError:
            return True

    def agent_audible(self) -> bool:
        span = self._run.current_span()
        return span is not None and self._run.playhead(span, self._run.now()) < len(span.data)

    def agent_started_after(self, t: float) -> float | None:
        """When the agent's first audio after `t` started playing to the caller, if it has."""
        starts = [span.t for span in self._run.spans if span.t > t]
        return min(starts) if starts else None

    def heard_until(self) -> float:
        """When the agent's audio last stopped playing (now while it plays; 0 if never)."""
        run, now = self._run, self._run.now()
        if self.agent_audible():
            return now
        ends = [span.t + (len(span.data) if span.played is None else span.played) / run.rate for span in run.spans]
        return min(now, max(ends)) if ends else 0.0

    async def until(self, predicate: Callable[[], bool], timeout: float) -> bool:
        """Wait (checking every frame) until `predicate()` is true, the call closes, or `timeout`."""
        deadline = self.now() + timeout
        while not predicate():
            if self.closed or self.now() >= deadline:
                return False
            await self._run.tick()
        return True

    async def wait_for_reply(self, after: float, pause: float, timeout: float,
                             settled: Callable[[], bool] | None = None) -> bool:
        """Wait until the agent has answered something said at `after` and then been quiet
        for `pause` seconds (and `settled()`, when given, says its turn is over)."""
        def done() -> bool:
            if self.agent_started_after(after) is None or self.agent_audible():
                return False
            if settled is not None and not settled():
                return False
            return self.now() - self.heard_until() >= pause
        return await self.until(done, timeout)

    async def wait_agent_starts(self, after: float, timeout: float) -> float | None:
        """Wait until agent audio that started after `after` is playing; return its start."""
        await self.until(lambda: self.agent_started_after(after) is not None, timeout)
        return self.agent_started_after(after)


Conversation = Callable[[Line], Awaitable[None]]


class LineCaller(CallSimulator):
    """Calls the server's media-stream `url` and runs `conversation` as the caller.

    `parameters` are the stream's customParameters (CallSid, From, To as our TwiML
    passes them). When the conversation returns, the caller hangs up (``stop``)
    unless the server has already closed the stream.
    """

    def __init__(self, url: str, conversation: Conversation, *, call_sid: str, stream_sid: str,
                 account_sid: str, parameters: dict[str, str], headers: dict[str, str] | None = None,
                 on_agent_audio: Callable[[bytes], None] | None = None,
                 on_agent_clear: Callable[[], None] | None = None, linger: float = 2.0) -> None:
        start = {
            "event": "start",
            "start": {
                "accountSid": account_sid, "streamSid": stream_sid, "callSid": call_sid, "tracks": ["inbound"],
                "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": SAMPLE_RATE, "channels": 1},
                "customParameters": dict(parameters),
            },
            "streamSid": stream_sid,
        }
        super().__init__(url, [{"event": "connected", "protocol": "Call", "version": "1.0.0"}, start],
                         headers=headers, linger=linger)
        self.conversation = conversation
        self.account_sid = account_sid
        self.on_agent_audio = on_agent_audio
        """Called with each piece of agent audio as it arrives (µ-law), e.g. to let a simulated
        caller hear it; `on_agent_clear` when the server clears what was not yet played."""
        self.on_agent_clear = on_agent_clear

    async def run(self) -> SimulatedCall:
        from websockets.asyncio.client import connect
        from websockets.exceptions import InvalidStatus

        from telephony.testing.simulator import TWILIO_USER_AGENT

        run = _CallerRun(self)
        try:
            async with connect(self.url, additional_headers=self.headers, user_agent_header=TWILIO_USER_AGENT,
                               max_size=self.max_size) as ws:
                await run.play(ws)
        except InvalidStatus as exc:
            run.record("refused", status=exc.response.status_code)
        return run.result()


class _CallerRun(_Run):
    """One call of a `LineCaller`: the simulator's receiving side, a live sending side."""

    def __init__(self, sim: LineCaller) -> None:
        super().__init__(sim)
        self.sim: LineCaller = sim
        self.outgoing = bytearray()
        self.noise = _line_noise()
        self.noise_at = 0
        self.chunk = 0
        self.frame = asyncio.Event()
        self.server_closed = asyncio.Event()
        self.ws: Any = None
        self.speech: Any = None  # the "caller_speech" event of the utterance being sent

    async def receive_loop(self, ws) -> None:
        await super().receive_loop(ws)
        self.server_closed.set()
        self.frame.set()  # whoever waits for the next frame learns the call is over

    def on_media(self, msg: dict[str, Any], raw: str) -> None:
        before = len(self.agent_audio)
        super().on_media(msg, raw)
        if self.sim.on_agent_audio is not None and len(self.agent_audio) > before:
            self.sim.on_agent_audio(bytes(self.agent_audio[before:]))

    def on_clear(self) -> None:
        super().on_clear()
        if self.sim.on_agent_clear is not None:
            self.sim.on_agent_clear()

    async def tick(self) -> None:
        """Wait for the next 20 ms frame."""
        self.frame.clear()
        await self.frame.wait()

    async def send_event(self, msg: dict[str, Any]) -> None:
        if not self.server_closed.is_set():
            await self.send(self.ws, msg)

    async def speak(self, ulaw: bytes) -> tuple[float, float]:
        start = self.now()
        self.outgoing += ulaw
        while self.outgoing and not self.server_closed.is_set():
            await self.tick()
        return start, self.now()

    async def send_loop(self, ws) -> None:
        from websockets.exceptions import ConnectionClosed

        self.ws = ws
        try:
            for msg in self.sim.messages:  # connected, start
                await self.send(ws, msg)
            clock = asyncio.create_task(self.frame_clock(ws), name="caller-frames")
            try:
                await self.sim.conversation(Line(self))
                while self.outgoing and not self.server_closed.is_set():  # the last words go out
                    await self.tick()
            finally:
                clock.cancel()
            if not self.server_closed.is_set():
                await self.send(ws, {"event": "stop", "streamSid": self.sim.stream_sid,
                                     "stop": {"accountSid": self.sim.account_sid, "callSid": self.sim.call_sid}})
                self.record("sent_stop")
        except ConnectionClosed:
            pass

    async def frame_clock(self, ws) -> None:
        from websockets.exceptions import ConnectionClosed

        first = self.loop.time()
        try:
            while not self.server_closed.is_set():
                self.chunk += 1
                due = first + (self.chunk - 1) * FRAME_S
                await self.sleep_until(due)
                speaking = bool(self.outgoing)
                if speaking:
                    if self.speech is None:
                        self.speech = self.record("caller_speech", end=round(self.now() + FRAME_S, 4))
                    self.speech.detail["end"] = round(self.now() + FRAME_S, 4)
                else:
                    self.speech = None
                if len(self.outgoing) >= FRAME_BYTES:
                    payload = bytes(self.outgoing[:FRAME_BYTES])
                    del self.outgoing[:FRAME_BYTES]
                elif self.outgoing:
                    payload = bytes(self.outgoing) + self.noise[: FRAME_BYTES - len(self.outgoing)]
                    self.outgoing.clear()
                else:
                    if self.noise_at + FRAME_BYTES > len(self.noise):
                        self.noise_at = 0
                    payload = self.noise[self.noise_at : self.noise_at + FRAME_BYTES]
                    self.noise_at += FRAME_BYTES
                await self.send(ws, {"event": "media", "streamSid": self.sim.stream_sid, "media": {
                    "track": "inbound", "chunk": str(self.chunk), "timestamp": str(self.chunk * 20),
                    "payload": base64.b64encode(payload).decode("ascii")}})
                self.frame.set()
        except ConnectionClosed:
            self.server_closed.set()
            self.frame.set()


def ulaw_to_pcm16k(ulaw: bytes) -> bytes:
    """The agent's voice as a Live session hears it: 16 kHz s16le."""
    import soxr

    from telephony.audio import ulaw_decode

    pcm = ulaw_decode(ulaw).astype(np.float32)
    return np.clip(soxr.resample(pcm, SAMPLE_RATE, 16_000), -32768, 32767).astype("<i2").tobytes()


def pcm24k_to_ulaw(pcm: bytes) -> bytes:
    """A Live session's voice (24 kHz s16le) as the phone line carries it: 8 kHz µ-law."""
    import soxr

    from telephony.audio import ulaw_encode

    x = np.frombuffer(pcm[: len(pcm) // 2 * 2], dtype="<i2").astype(np.float32)
    y = soxr.resample(x, 24_000, SAMPLE_RATE)
    return ulaw_encode(np.clip(np.round(y), -32768, 32767).astype(np.int16))

