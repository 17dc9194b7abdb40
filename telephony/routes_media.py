"""The media stream: one WebSocket per call, handed to a `CallBridge`.

The upgrade's signature is checked before the WebSocket is accepted (HTTP 403
otherwise, so nothing an unauthenticated client sends is read as a frame), the
single-use stream token on `start` (close 1008), both before a Live session exists."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from typing import Any

from fastapi import APIRouter, WebSocket
from fastapi.responses import Response
from starlette.websockets import WebSocketState
from twilio.request_validator import SIGNATURE_HEADER

from . import twilio_protocol as tw
from .agents import Agent, AgentBook, NoAgent
from .bridge import CallBridge
from .errors import MalformedMessage
from .lifecycle import why_busy
from .moves import AFTER_STREAM_TTL_S, CallKeeper, CallOwnedElsewhere
from .security import CallerIdentity, Gatekeeper, Rejected, stream_urls
from .settings import Settings
from .shared_state import SharedStateUnavailable
from .twiml import Next

log = logging.getLogger(__name__)

#: Twilio sends `connected` then `start` at once; a stream that has not
#: started after this many messages or seconds is not a Twilio stream.
MAX_MESSAGES_BEFORE_START = 50
START_TIMEOUT_S = 10.0

router = APIRouter()


@router.websocket("/media-stream")
async def media_stream(websocket: WebSocket) -> None:
    state = websocket.app.state
    s: Settings = state.settings
    gate: Gatekeeper = state.gate
    try:
        gate.check_stream_signature(
            stream_urls(s.public_host, websocket.headers.get("host"), websocket.url.path),
            websocket.headers.get(SIGNATURE_HEADER),
        )
    except Rejected as exc:
        # Closing before accept() answers the upgrade with HTTP 403: nothing an
        # unauthenticated client sends is ever read as a WebSocket frame.
        log.warning("refused a media stream upgrade (HTTP 403): %s", exc)
        await websocket.close(code=1008)
        return
    busy = why_busy(state)
    if busy == "draining":
        # Refused at the upgrade, with 503: a proxy retries it on another instance
        # (deploy/haproxy.cfg `retry-on 503`), so a stream racing the health check
        # that takes this instance out still reaches one that takes calls.
        gate.rejected[busy] += 1
        log.warning("refused a media stream: draining (HTTP 503 at the upgrade)")
        await websocket.send_denial_response(Response(status_code=503, content="draining", media_type="text/plain"))
        return
    await websocket.accept()
    if busy is not None:
        gate.rejected[busy] += 1
        log.warning("refused a media stream: %s (closed with 1013)", busy.replace("_", " "))
        await _close(websocket, 1013)
        return
    identity: CallerIdentity | None = None
    try:
        pending, start = await _read_until_start(websocket)
        if start is not None:
            identity = await gate.admit_stream(start.call_sid, start.account_sid, start.custom_parameters)
        elif gate.verifying:
            raise gate.no_start()
    except Rejected as exc:
        code = 1013 if exc.reason == "shared_state_unavailable" else 1008
        log.warning("rejected media stream (closed with %d, no Live session): %s", code, exc)
        await _close(websocket, code)
        return
    if identity is not None and not identity.verified:
        log.info("call %s: caller %s is NOT verified (development mode, no TWILIO_AUTH_TOKEN)",
                 identity.call_sid, gate.show(identity.caller))
    keeper, moved_in = None, None
    if identity is not None and identity.call_sid:
        # One owner per call: a new call's stream takes its lease; a moved call's
        # stream takes it over, with the checkpoint the last owner left.
        keeper = CallKeeper(state.shared, state.instance_id, identity.call_sid, state.recorder)
        try:
            moved_in = await keeper.claim()
        except (CallOwnedElsewhere, SharedStateUnavailable) as exc:
            log.warning("refused the stream of call %s (closed with 1013): %s", identity.call_sid, exc)
            await _close(websocket, 1013)
            return
        if moved_in is not None:
            log.info("call %s moved here (move %d): carrying it on from its checkpoint (claimed in %.0f ms)",
                     identity.call_sid, int(moved_in.get("moves") or 0) + 1, keeper.claimed_in_s * 1000)
    agent = _agent_for(state.agents, start, identity)
    opening, handle = await _returning(state, start)
    bridge = CallBridge(
        _Replay(websocket, pending), settings=s, client=state.client, agent=agent,
        rest=state.rest, identity=identity, recorder=state.recorder, watch=state.watch,
        shared=state.shared, transfers=state.transfers, opening=opening, resumption_handle=handle,
        keeper=keeper, moved_in=moved_in,
    )
    state.active_calls.add(bridge)
    try:
        state.recent_calls.append(await bridge.run())
    finally:
        state.active_calls.discard(bridge)
        moved = bridge.after_stream.next is Next.MOVE
        if not moved:  # a moved call keeps its caller's slot: it goes on elsewhere
            await gate.stream_ended(identity.call_sid if identity else None)
        if bridge.call.call_sid and not bridge.after_stream_put:
            try:
                await state.shared.put_after_stream(bridge.call.call_sid, bridge.after_stream.encode(),
                                                  AFTER_STREAM_TTL_S)
            except SharedStateUnavailable as exc:
                log.warning("call %s: /stream-ended will answer the apology: %s", bridge.call.call_sid, exc)


async def _returning(state, start: tw.StreamStarted | None) -> tuple[str | None, str | None]:
    """For a caller back from a warm transfer that did not happen: what the resumed Live
    session is told first, and its resumption handle. (None, None) for any other stream."""
    leg = start.custom_parameters.get("leg", "") if start is not None else ""
    if not leg.startswith("return-") or state.transfers is None:
        return None, None
    from .transfer import return_opening

    try:
        ticket = await state.transfers.ticket(leg.removeprefix("return-"), start.call_sid)
    except SharedStateUnavailable as exc:
        log.warning("call %s came back from a transfer, but its ticket cannot be read (%s)", start.call_sid, exc)
        return None, None
    if ticket is None:
        log.warning("call %s came back from a transfer whose ticket is gone; the agent starts afresh", start.call_sid)
        return None, None
    return return_opening(ticket), ticket.handle
def _agent_for(book: AgentBook, start: tw.StreamStarted | None, identity: CallerIdentity | None) -> Agent:
    """The agent the webhook chose (the `agent` parameter), if it is one of ours; else the
    one answering the number dialled; else the first agent (a stream without a start)."""
    params = start.custom_parameters if start is not None else {}
    name = params.get("agent")
    if name:
        try:
            return book.named(name)
        except NoAgent:
            log.warning("media stream names an unknown agent %r: choosing by the number dialled", str(name)[:40])
    called = identity.called if identity is not None else params.get("To")
    try:
        return book.for_number(called)
    except NoAgent as exc:
        log.error("%s: the first agent takes the call", exc)
        return book.agents[0]


async def _read_until_start(websocket: WebSocket) -> tuple[deque[dict], tw.StreamStarted | None]:
    """Read the stream up to its `start` message, keeping every message read.

    The bridge gets them all back (`_Replay`), so it sees the stream exactly
    as Twilio sent it; the gate sees the start's CallSid and parameters first.
    """
    pending: deque[dict] = deque()
    try:
        async with asyncio.timeout(START_TIMEOUT_S):
            while len(pending) < MAX_MESSAGES_BEFORE_START:
                message = await websocket.receive()
                pending.append(message)
                if message["type"] == "websocket.disconnect":
                    break
                text = message.get("text")
                if text is None:
                    continue
                try:
                    event = tw.parse(text)
                except MalformedMessage:
                    continue  # the bridge reports it
                if isinstance(event, tw.StreamStarted):
                    return pending, event
    except TimeoutError:
        pass
    return pending, None


class _Replay:
    """The WebSocket as the bridge sees it: messages already read come first."""

    def __init__(self, websocket: WebSocket, pending: deque[dict]):
        self._websocket = websocket
        self._pending = pending

    async def receive(self) -> dict:
        if self._pending:
            return self._pending.popleft()
        return await self._websocket.receive()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._websocket, name)


async def _close(websocket: WebSocket, code: int) -> None:
    if websocket.client_state is WebSocketState.CONNECTED:
        with contextlib.suppress(Exception):
            await websocket.close(code=code, reason="not authorized")


