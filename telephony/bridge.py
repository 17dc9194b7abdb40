"""One call, one owner: the asyncio adapter around the `Call` core.

`CallBridge.run()` owns everything a call starts: the Twilio reader, the Live
session and its reader, and every tool run live in one TaskGroup, so ending
the call (hang-up, failure, server shutdown) cancels all of it. Readers parse
frames, feed `Call.handle()` and await the returned actions in order;
`handle()` never awaits, so transitions cannot interleave. One route per
direction: Twilio reader -> `Call.handle` -> actions, and Live's `receive()`
-> `Call.handle` -> actions.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from typing import Any

from fastapi import WebSocket
from starlette.websockets import WebSocketState

from . import actions as act
from . import events as ev
from . import live as live_mod
from . import metrics
from . import twilio_protocol as tw
from .agents import Agent, agent_from_settings
from .audio import InboundAudio, OutboundAudio, inbound_resampler, outbound_resampler
from .call import Call, Detection, LiveLink
from .errors import LiveError, LiveSendError, MalformedMessage
from .moves import RENEW_S, CallKeeper
from .observe import Watch
from .security import CallerIdentity
from .settings import Settings
from .shared_state import SharedStateUnavailable
from .tool_registry import CallContext, ToolRegistry
from .twilio_rest import is_already_ended
from .twiml import AfterStream, apology_twiml, dial_twiml

log = logging.getLogger(__name__)

#: How often a call waiting for its answering-machine verdict looks for it in the shared
#: state (the verdict may reach another instance; on this one it is delivered at once).
AMD_POLL_S = 0.25
#: Twilio's AnsweredBy values, as metric labels (anything else counts as "other").
ANSWERED_BY_LABELS = frozenset({"human", "machine_start", "machine_end_beep", "machine_end_silence",
                                "machine_end_other", "fax", "unknown"})


class _CallEnded(Exception):
    """Raised inside the task group to stop every task of the call."""


class _LiveSendFailed(Exception):
    """A send to `session` raised `error`; `_perform` hands it to the core."""

    def __init__(self, session: live_mod.LiveSession, error: LiveSendError):
        super().__init__(str(error))
        self.session = session
        self.error = error


#: The actions that send to the Live session.
_LIVE_SENDS = (act.SendAudioToLive, act.SendTextToLive, act.SendToolResponse)


def _forget_frames(group: BaseExceptionGroup) -> None:
    """Tracebacks hold this call's frames (and so the call): drop them once handled,
    so the call is freed at once instead of at the next full garbage collection."""
    group.__traceback__ = None
    for exc in group.exceptions:
        if isinstance(exc, BaseExceptionGroup):
            _forget_frames(exc)
        exc.__traceback__ = None
        exc.__context__ = None


class CallControl:
    """What a tool may do to the live call (`CallContext.control`). Thread-safe."""

    def __init__(self, bridge: "CallBridge"):
        self._bridge = bridge

    def hang_up(self, reason: str) -> None:
        self._bridge.inject(ev.HangupRequested(reason))

    def transfer(self, name: str, destination: str, *, warm: bool = False, summary: str = "") -> None:
        self._bridge.inject(ev.TransferRequested(name, destination, warm=warm, summary=summary))


class CallBridge:
    def __init__(
        self,
        websocket: WebSocket,
        *,
        settings: Settings,
        client: Any,
        agent: Agent | None = None,
        registry: ToolRegistry | None = None,
        rest: Any | None = None,
        identity: CallerIdentity | None = None,
        recorder: Any | None = None,
        watch: Watch | None = None,
        shared: Any | None = None,
        transfers: Any | None = None,
        opening: str | None = None,
        resumption_handle: str | None = None,
        keeper: CallKeeper | None = None,
        moved_in: dict | None = None,
    ):
        self.ws = websocket
        # Who is calling, as the app's Gatekeeper vouched for it (security.gatekeeper): tools
        # learn the caller only from here, never from the stream's own parameters.
        self.identity = identity
        self.settings = settings
        self.client = client
        # The agent answering this call (agents.py): its instructions, voice, tools, limits.
        self.agent = agent or agent_from_settings(settings, tools=registry)
        self.registry = self.agent.tools
        self.rest = rest
        self.recorder = recorder
        self.shared = shared  # the shared state: answering-machine verdicts from any instance
        self.transfers = transfers  # transfer.WarmTransfers, when warm transfers are configured
        self.control = CallControl(self)
        self.call = Call(
            greeting=self.agent.greeting,
            inbound=InboundAudio(inbound_resampler(settings.resampler)),
            outbound=OutboundAudio(outbound_resampler(settings.resampler)),
            watchdog_s=self.agent.model_watchdog_s or None,
            max_call_s=self.agent.max_call_s or None,
            dtmf_timeout_s=settings.dtmf_timeout_s,
            goodbye_timeout_s=settings.goodbye_timeout_s,
            voicemail_message=self.agent.voicemail_message,
            opening=opening,
            resumption_handle=resumption_handle,
        )
        self.live: live_mod.LiveSession | None = None
        self._tg: asyncio.TaskGroup | None = None
        self._tools: dict[str, asyncio.Task] = {}
        self._timers: dict[str, asyncio.Task] = {}
        self._switch = asyncio.Event()
        self._resume: act.ResumeLive | None = None
        self._failed_session: live_mod.LiveSession | None = None  # the last session a send failed on
        self._end: act.EndCall | None = None
        self._started = time.monotonic()
        self._ws_closed = False
        self._loop = asyncio.get_running_loop()
        self._recorded_start = False
        self._new_turn = False
        # The call's checkpoint and lease (moves.py): kept current as the call goes,
        # so a drain can move the call to another instance without a long flush.
        self.keeper = keeper
        self._dirty = asyncio.Event()
        self._started_at = time.time()
        self.after_stream_put = False
        if moved_in is not None:
            self.call.restore(moved_in)
            self._started_at = float(moved_in.get("started_at") or self._started_at)
            self._new_turn = True
            if self.call.max_call_s:
                self.call.max_call_s = max(1.0, self.call.max_call_s - (time.time() - self._started_at))
        self.moved_in = moved_in is not None
        # metrics, timings, traces (observe.py)
        self.observer = (watch or Watch()).observe(self.call, recorder, agent=self.agent.name)
        self.call.tap = self.observer.audio  # both sides' audio, when RECORD_AUDIO is on
        if moved_in is not None:
            self.observer.continue_from(int(moved_in.get("caller_turns") or 0))

    async def run(self) -> dict[str, object]:
        """Run the call to its end; return its summary. Never raises for call-level problems."""
        self.observer.call_began()
        try:
            async with asyncio.TaskGroup() as tg:
                self._tg = tg
                tg.create_task(self._read_twilio(), name="twilio-reader")
                if self.keeper is not None:
                    tg.create_task(self._keep_checkpoint(), name="checkpoint")
        except* _CallEnded as group:
            _forget_frames(group)
        except* Exception as group:  # a bug of ours: end this call, never the server
            for exc in group.exceptions:
                log.error("call %s failed: %r", self.call.call_sid, exc, exc_info=exc)
            _forget_frames(group)
            if self._end is None:
                self._end = act.EndCall("internal error", apologize=True, close_code=1011)
        finally:
            await self._tear_down()
            self.observer.call_ended()
            # Drop what ties this call to its finished tasks and their exceptions (which
            # point back here): a cycle would keep the call's native buffers (resamplers,
            # TLS) alive until the next full garbage collection.
            self._tg = None
            self._tools.clear()
            self._timers.clear()
        return self._summary()

    # ----------------------------------------------------------- readers

    async def _read_twilio(self) -> None:
        while True:
            message = await self.ws.receive()
            if message["type"] == "websocket.disconnect":
                self._ws_closed = True
                await self._perform(self.call.handle(ev.TwilioDisconnected(message.get("code"))))
                raise _CallEnded
            text = message.get("text")
            actions = self._twilio_frame(text if text is not None else (message.get("bytes") or b""))
            if actions:
                await self._perform(actions)

    def snapshot(self) -> dict[str, object]:
        """The call's checkpoint: the core's snapshot and who is calling."""
        snapshot = self.call.snapshot()
        snapshot["started_at"] = self._started_at
        snapshot["caller_turns"] = self.observer.caller_turns
        snapshot["caller"] = self.identity.caller if self.identity else self.call.parameters.get("From")
        snapshot["called"] = self.identity.called if self.identity else self.call.parameters.get("To")
        # Which agent the call talks to, so the next instance uses the same one.
        snapshot["agent"] = self.agent.name
        return snapshot

    async def _keep_checkpoint(self) -> None:
        """Save the checkpoint whenever the call changed (finished turns, new handles,
        digits, tool results), and renew the lease at least every `RENEW_S`."""
        assert self.keeper is not None
        while True:
            try:
                await asyncio.wait_for(self._dirty.wait(), RENEW_S)
            except TimeoutError:
                pass
            changed = self._dirty.is_set()
            self._dirty.clear()
            if self.call.call_sid is not None and not self.call.over:
                await self.keeper.save(self.snapshot() if changed else None)

    def _twilio_frame(self, frame: str | bytes) -> list[act.Action]:
        try:
            event = tw.parse(frame)
        except MalformedMessage as exc:
            self.observer.bad_frame(exc)
            return self.call.bad_frame(exc)
        actions = self.call.handle(event)
        if isinstance(event, tw.StreamStarted) and self.call.detection is Detection.DETECTING and self._tg is not None:
            self._tg.create_task(self._await_verdict(), name="amd-verdict")
        if self.call.speech.ends != self.observer.speech_ends:
            self.observer.caller_stopped_speaking()
        if self.recorder is not None and isinstance(event, (tw.StreamStarted, tw.DtmfPressed)):
            self._record_twilio(event)
        if isinstance(event, (tw.StreamStarted, tw.DtmfPressed)):
            self._dirty.set()
        return actions

    async def _run_live(self) -> None:
        """Live sessions for the whole call: one after another, as the core asks (goAway, drops)."""
        while True:
            self._resume = None
            self._switch = asyncio.Event()
            await self._one_live_session()
            if self._resume is None:
                return  # the call is ending
            if self._resume.delay_s:
                await asyncio.sleep(self._resume.delay_s)

    async def _one_live_session(self) -> None:
        handle = self.call.resumption_handle
        config = live_mod.build_config(
            self.settings, self.registry.declarations(), agent=self.agent, resumption_handle=handle,
            carry_over=self.call.carry_over,
        )
        connecting = time.monotonic()
        try:
            async with live_mod.open_session(self.client, self.settings, config) as session:
                self.live = session
                how = "resumed" if handle else ("replaced" if self.call.carry_over else "open")
                log.info("Live session %s for call %s (model %s, in %.0f ms)", how, self.call.call_sid,
                         self.settings.gemini_model, (time.monotonic() - connecting) * 1000)
                self.observer.live_opened(resumed=bool(handle))
                await self._perform(self.call.handle(ev.LiveReady()))
                pump = asyncio.create_task(self._pump_live(session), name="live-reader")
                switch = asyncio.create_task(self._switch.wait(), name="live-switch")
                try:
                    await asyncio.wait({pump, switch}, return_when=asyncio.FIRST_COMPLETED)
                finally:
                    for task in (pump, switch):
                        task.cancel()
                    await asyncio.gather(pump, switch, return_exceptions=True)
                    self.live = None
                if pump.done() and not pump.cancelled() and pump.exception() is not None:
                    raise pump.exception()
            # Leaving the block closed this socket before any replacement opens: the
            # server rejects a resume while the old socket of the session is still open.
        except LiveError as exc:
            self.live = None
            log.error("Live session for call %s could not be opened: %s", self.call.call_sid, exc)
            code = getattr(exc, "code", None)
            await self._perform(self.call.handle(ev.LiveFailed(str(exc), code)))

    async def _pump_live(self, session: live_mod.LiveSession) -> None:
        async for event in session.events():
            kind = type(event)
            received = time.perf_counter() if kind is ev.ModelInterrupted else 0.0
            if self.recorder is not None and kind is not ev.ModelAudio and kind is not ev.ModelInterrupted:
                self._record_live(event)  # audio is not recorded
            actions = self.call.handle(event)
            if actions:
                await self._perform(actions)
            if kind is ev.TurnComplete or kind is ev.ResumptionUpdate:
                self._dirty.set()
            self.observer.live_event(event, received)
            if kind is ev.ModelInterrupted and self.recorder is not None:
                self._record_live(event)  # after the clear has gone out: a barge-in waits for nothing

    def answered_by(self, verdict: str) -> None:
        """Twilio's answering-machine verdict for this call reached this instance."""
        if self._tg is not None and self._end is None:
            self._tg.create_task(self._verdict(verdict), name="amd-verdict-here")

    async def _await_verdict(self) -> None:
        """The verdict may reach another instance, which leaves it in the shared state."""
        sid = self.call.call_sid or ""
        warned = False
        while self.call.detection is Detection.DETECTING and self.shared is not None:
            try:
                verdict = await self.shared.take_note("amd", sid)
            except SharedStateUnavailable as exc:
                verdict = None
                if not warned:
                    warned = True
                    log.warning("call %s: cannot look for the answering-machine verdict: %s", sid, exc)
            if verdict:
                await self._verdict(verdict)
                return
            await asyncio.sleep(AMD_POLL_S)

    async def _verdict(self, verdict: str) -> None:
        if self.call.detection is not Detection.DETECTING:
            return
        actions = self.call.handle(ev.AnsweredBy(verdict))
        metrics.ANSWERED_BY.labels(verdict if verdict in ANSWERED_BY_LABELS else "other").inc()
        if self.recorder is not None and self.call.call_sid:
            self.recorder.event(self.call.call_sid, "answered_by", {"answered_by": verdict}, time.time())
            self.recorder.call_outcome(self.call.call_sid, answered_by=verdict, amd_outcome=self.call.amd_outcome)
        await self._perform(actions)

    async def _timer(self, name: str, seconds: float) -> None:
        await asyncio.sleep(seconds)
        self._timers.pop(name, None)
        await self._perform(self.call.handle(ev.TimerFired(name)))

    async def _run_tool(self, action: act.RunTool) -> None:
        ctx = CallContext(
            call_sid=self.call.call_sid or "",
            caller=self.identity.caller if self.identity else None,
            called=self.identity.called if self.identity else None,
            settings=self.settings,
            control=self.control,
            agent=self.agent,
            tool_settings=self.agent.tool_settings,
        )
        started = time.monotonic()
        try:
            response = await self.registry.call(action.name, action.args, ctx)
        except asyncio.CancelledError:
            log.info("tool call %s (%s) cancelled", action.call_id, action.name)
            self.observer.tool_finished(action.name, "cancelled", time.monotonic() - started)
            raise
        finally:
            self._tools.pop(action.call_id, None)
        elapsed = time.monotonic() - started
        log.info("tool %s answered in %.0f ms", action.name, elapsed * 1000)
        self.observer.tool_finished(action.name, "error" if "error" in response else "ok", elapsed)
        if self.recorder is not None and self.call.call_sid:
            self.recorder.tool_call(
                self.call.call_sid, call_id=action.call_id, name=action.name, args=action.args, response=response,
                outcome="error" if "error" in response else "ok", latency_ms=round(elapsed * 1000, 1), at=time.time(),
            )
        scheduling = self.registry.scheduling_for(action.name, response)
        await self._perform(self.call.handle(ev.ToolFinished(action.call_id, action.name, response, elapsed, scheduling)))
        self._dirty.set()

    # ----------------------------------------------------------- actions

    async def _perform(self, actions: list[act.Action]) -> None:
        """Each action in order, awaited: what the core asked for happens in that order."""
        for index, action in enumerate(actions):
            performer = self._performers.get(type(action))
            if performer is None:
                raise TypeError(f"unknown action {action!r}")
            try:
                await performer(self, action)
            except _LiveSendFailed as failure:
                await self._live_send_failed(failure, action, actions[index + 1:])
                return

    async def _live_send_failed(self, failure: _LiveSendFailed, action: act.Action, rest: list[act.Action]) -> None:
        """A send to Live raised: one error line per session, then the core decides
        (a fresh session, or the end with the apology) and keeps what did not go out.

        The core hears of it before anything else is awaited, so it stops sending to
        the broken session at once; the rest of the batch follows, the core's answer
        last (a replacement cancels the Live reader, which may be this very task).

        A send that fails after the reader saw the session close is no news: the core
        is already replacing it, so the close's own line is the one that counts."""
        unsent = (action, *(a for a in rest if isinstance(a, _LIVE_SENDS)))
        if failure.session is not self._failed_session:
            self._failed_session = failure.session
            if self.call.link is LiveLink.READY and not self.call.over:
                log.error("call %s: sending to Live failed (%s); %d send(s) kept for the next session",
                          self.call.call_sid, failure, len(unsent))
            else:
                log.info("call %s: a send to the closing Live session failed too; %d send(s) kept for the next session",
                         self.call.call_sid, len(unsent))
        if self.live is failure.session:
            self.live = None
        answer = self.call.handle(ev.LiveSendFailed(str(failure), unsent, failure.error.code))
        await self._perform([a for a in rest if not isinstance(a, _LIVE_SENDS)] + answer)

    async def _send_audio_to_live(self, action: act.SendAudioToLive) -> None:
        if (session := self.live) is not None:
            await self._to_live(session, session.send_audio(action.pcm))

    async def _send_text_to_live(self, action: act.SendTextToLive) -> None:
        if (session := self.live) is not None:
            await self._to_live(session, session.send_text(action.text))

    async def _send_tool_response(self, action: act.SendToolResponse) -> None:
        if (session := self.live) is not None:
            await self._to_live(session, session.send_tool_response(
                action.call_id, action.name, action.response, action.scheduling
            ))

    async def _send_to_twilio(self, action: act.SendToTwilio) -> None:
        await self._send_twilio(action.messages)

    async def _start_tool(self, action: act.RunTool) -> None:
        assert self._tg is not None
        self._tools[action.call_id] = self._tg.create_task(self._run_tool(action), name=f"tool-{action.name}")

    async def _cancel_tool(self, action: act.CancelTool) -> None:
        task = self._tools.pop(action.call_id, None)
        if task is not None:
            task.cancel()

    async def _start_timer(self, action: act.StartTimer) -> None:
        assert self._tg is not None
        old = self._timers.pop(action.name, None)
        if old is not None:
            old.cancel()
        self._timers[action.name] = self._tg.create_task(
            self._timer(action.name, action.seconds), name=f"timer-{action.name}"
        )

    async def _cancel_timer(self, action: act.CancelTimer) -> None:
        task = self._timers.pop(action.name, None)
        if task is not None:
            task.cancel()

    async def _resume_live(self, action: act.ResumeLive) -> None:
        log.info("replacing the Live session of call %s: %s", self.call.call_sid, action.reason)
        self.observer.live_replaced(action.reason)
        if self.recorder is not None and self.call.call_sid:
            self.recorder.event(self.call.call_sid, "reconnect", {"reason": action.reason}, time.time())
        self._resume = action
        self._switch.set()

    async def _connect_live(self, action: act.ConnectLive) -> None:
        assert self._tg is not None
        self._tg.create_task(self._run_live(), name="live")

    async def _end_call(self, action: act.EndCall) -> None:
        self._end = action
        raise _CallEnded

    #: How each kind of action is carried out (the core's events go through `Call._handlers` alike).
    _performers = {
        act.SendAudioToLive: _send_audio_to_live,
        act.SendToTwilio: _send_to_twilio,
        act.RunTool: _start_tool,
        act.CancelTool: _cancel_tool,
        act.StartTimer: _start_timer,
        act.CancelTimer: _cancel_timer,
        act.SendTextToLive: _send_text_to_live,
        act.SendToolResponse: _send_tool_response,
        act.ResumeLive: _resume_live,
        act.ConnectLive: _connect_live,
        act.EndCall: _end_call,
    }

    async def _send_twilio(self, messages: tuple[str, ...]) -> None:
        if self._ws_closed:
            return
        try:
            for text in messages:
                await self.ws.send_text(text)
        except Exception as exc:  # the caller's socket went away mid-send
            self._ws_closed = True
            log.info("Twilio socket closed while sending (%s)", type(exc).__name__)

    @staticmethod
    async def _to_live(session: live_mod.LiveSession, send) -> None:
        """Whatever a send raises (`live` makes it a `LiveSendError`: a socket closed
        under it, an SDK that changed) is a `_LiveSendFailed` for `_perform`: caller
        audio must never vanish silently."""
        try:
            await send
        except LiveSendError as exc:
            raise _LiveSendFailed(session, exc) from None

    # ----------------------------------------------------------- the end

    def stop(self) -> None:
        """End this call politely from outside (server shutdown); safe to call any time."""
        if self._tg is not None and self._end is None:
            self._tg.create_task(self._perform(self.call.handle(ev.ServerStopping())), name="stop")

    def move(self, wait_s: float) -> None:
        """Move this call to another instance at its next quiet moment (server draining)."""
        if self._tg is not None and self._end is None:
            self._tg.create_task(self._perform(self.call.handle(ev.MoveRequested(wait_s))), name="move")

    @property
    def after_stream(self) -> AfterStream:
        """What Twilio should do when it asks what follows the stream."""
        return AfterStream.of(self._end, self.agent.name)

    def inject(self, event: object) -> None:
        """Feed an event from outside the call's tasks (thread-safe): tools acting on the call."""
        def deliver() -> None:
            if self._tg is not None and self._end is None:
                self._tg.create_task(self._perform(self.call.handle(event)), name="inject")

        self._loop.call_soon_threadsafe(deliver)

    async def _tear_down(self) -> None:
        end = self._end or act.EndCall("stream ended")
        for task in [*self._tools.values(), *self._timers.values()]:
            task.cancel()
        if self.call.end_reason is None:
            self.call.end_reason = end.reason
        if end.move:
            # The Live socket is closed by now (the task group is done): the next
            # instance may resume the session only once it is. Then the checkpoint,
            # then Twilio's stream, whose close makes Twilio ask /stream-ended.
            if self.keeper is None or not await self.keeper.hand_over(self.snapshot()):
                log.warning("call %s could not be handed over; ending it politely", self.call.call_sid)
                end = self._end = act.EndCall("could not move to another instance", apologize=True)
                self.call.end_reason = end.reason
        elif self.keeper is not None:
            await self.keeper.ended()
        if end.apologize:
            await self._apologize()
        elif end.transfer_to and end.transfer_summary is not None and self.transfers is not None:
            await self._warm_transfer(end)
        elif end.transfer_to:
            await self._transfer(end.transfer_to)
            self._record_transfer(end, "dialled")
        elif end.hangup:
            await self._hang_up()
        await self._put_after_stream()
        if not self._ws_closed and self.ws.client_state is WebSocketState.CONNECTED:
            try:
                await self.ws.close(code=end.close_code)
            except Exception:
                pass
        self._ws_closed = True
        self.call.ended()

    async def _put_after_stream(self) -> None:
        """Tell /stream-ended what follows, before the close that makes Twilio ask."""
        if self.keeper is None or not self.call.call_sid:
            return
        try:
            await self.keeper.after_stream(self.after_stream.encode())
            self.after_stream_put = True
        except SharedStateUnavailable as exc:
            log.warning("call %s: /stream-ended will answer the apology: %s", self.call.call_sid, exc)
            self.after_stream_put = True  # no second try after the close

    async def _apologize(self) -> None:
        """The caller must not sit in silence: say sorry and hang up.

        With REST credentials the live call is redirected to <Say> TwiML;
        otherwise closing the stream lets Twilio run the <Say> that follows
        <Connect> in our TwiML.
        """
        if self.rest is None or not self.call.call_sid:
            return
        try:
            await self.rest.calls(self.call.call_sid).update_async(twiml=apology_twiml(self.agent))
            log.info("redirected call %s to the apology message", self.call.call_sid)
        except Exception as exc:
            log.warning("could not redirect call %s to the apology (%s); closing the stream instead", self.call.call_sid, exc)

    async def _transfer(self, destination: str) -> None:
        """Cold transfer: replace the call's TwiML with <Dial>. The stream's `stop` that
        follows is ours, not a hang-up. Without REST credentials, closing the stream
        makes Twilio ask /stream-ended, which answers the same <Dial>."""
        if self.rest is None or not self.call.call_sid:
            return
        try:
            await self.rest.calls(self.call.call_sid).update_async(twiml=dial_twiml(destination))
            log.info("transferred call %s", self.call.call_sid)
        except Exception as exc:
            log.warning("could not transfer call %s via REST (%s); closing the stream onto <Dial>", self.call.call_sid, exc)

    async def _warm_transfer(self, end: act.EndCall) -> None:
        """Hold the caller in a conference and call the person (transfer.py); the stream's
        `stop` that follows is ours. If the caller comes back, a new stream resumes this
        Live session through its handle."""
        if not self.call.call_sid:
            return
        params = self.call.parameters
        try:
            ticket = await self.transfers.start(
                caller_sid=self.call.call_sid,
                caller=self.identity.caller if self.identity else params.get("From"),
                called=self.identity.called if self.identity else params.get("To"),
                name=end.transfer_name or "", destination=end.transfer_to or "", summary=end.transfer_summary or "",
                handle=self.call.resumption_handle, direction=params.get("direction", "inbound"),
                agent=self.agent.name,
            )
            if ticket is None:  # not held: /stream-ended dials the team cold
                self._record_transfer(end, "dialled")
        except SharedStateUnavailable as exc:
            log.warning("call %s: the warm transfer cannot be kept in the shared state (%s); transferring cold",
                        self.call.call_sid, exc)
            await self._transfer(end.transfer_to or "")
            self._record_transfer(end, "dialled")

    def _record_transfer(self, end: act.EndCall, outcome: str) -> None:
        metrics.TRANSFERS.labels("cold", outcome).inc()
        if self.recorder is not None and self.call.call_sid:
            self.recorder.event(self.call.call_sid, "transfer",
                                {"target": end.transfer_name, "mode": "cold", "outcome": outcome}, time.time())
            self.recorder.call_outcome(self.call.call_sid, transfer_target=end.transfer_name, transfer_outcome=outcome)

    async def _hang_up(self) -> None:
        """End the phone call itself. Without REST credentials, closing the stream makes
        Twilio ask /stream-ended, which answers <Hangup/>."""
        if self.rest is None or not self.call.call_sid:
            return
        try:
            await self.rest.calls(self.call.call_sid).update_async(status="completed")
            log.info("hung up call %s", self.call.call_sid)
        except Exception as exc:
            if is_already_ended(exc):  # already over (20404): that is what we wanted
                return
            log.warning("could not hang up call %s via REST (%s); closing the stream instead", self.call.call_sid, exc)

    def _record_twilio(self, event: object) -> None:
        sid = self.call.call_sid
        if sid is None:
            return
        if isinstance(event, tw.StreamStarted) and self.call.stream_sid == event.stream_sid and not self._recorded_start:
            self._recorded_start = True
            params = self.call.parameters
            self.recorder.call_started(
                sid, stream_sid=event.stream_sid,
                direction="outbound" if params.get("direction", "").startswith("outbound") else "inbound",
                caller=self.identity.caller if self.identity else params.get("From"),
                called=self.identity.called if self.identity else params.get("To"), at=time.time(),
                agent=self.agent.name,
            )
        elif isinstance(event, tw.DtmfPressed):
            self.recorder.event(sid, "dtmf", {"digit": event.digit}, time.time())

    def _record_live(self, event: object) -> None:
        sid = self.call.call_sid
        if sid is None:
            return
        now = time.time()
        if isinstance(event, ev.Transcript):
            self.recorder.transcript(sid, event.role, event.text, now, new_turn=self._new_turn)
            self._new_turn = False
        elif isinstance(event, (ev.TurnComplete, ev.ModelInterrupted)):
            self._new_turn = True
            if isinstance(event, ev.ModelInterrupted):
                self.recorder.event(sid, "interruption", {"heard_s": round(self.call.heard_seconds, 2)}, now)
        elif isinstance(event, ev.UsageReported):
            u = self.call.usage
            by = dict(self.call.usage_by_modality)
            for k, v in event.by_modality.items():
                by[k] = by.get(k, 0) + v
            self.recorder.usage(
                sid, prompt=u["prompt"] + event.prompt_tokens, response=u["response"] + event.response_tokens,
                total=u["total"] + event.total_tokens, by_modality=by,
            )

    def _summary(self) -> dict[str, object]:
        summary = self.call.summary()
        summary["duration_s"] = round(time.time() - self._started_at, 2) if self.moved_in else round(
            time.monotonic() - self._started, 2)
        summary["moves"] = self.call.moves
        log.info("call summary %s", json.dumps(summary))
        for role, text in self.call.transcript:
            log.info("transcript %s %s: %s", self.call.call_sid, role, text.strip())
        summary["transcript"] = [list(t) for t in self.call.transcript]
        moved = self._end is not None and self._end.move
        summary["moved_out"] = moved
        if self.recorder is not None and self.call.call_sid:
            if self.call.amd_outcome is not None:
                self.recorder.call_outcome(self.call.call_sid, amd_outcome=self.call.amd_outcome)
            if moved:  # the call goes on elsewhere: its record stays open
                self.recorder.event(self.call.call_sid, "moved", {"moves": self.call.moves + 1,
                                                                   "heard_s": round(self.call.heard_seconds, 2)},
                                    time.time())
            else:
                self.recorder.call_ended(self.call.call_sid, reason=self.call.end_reason or "", summary=summary,
                                         at=time.time())
        return summary
