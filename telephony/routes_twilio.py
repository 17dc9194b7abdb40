"""What Twilio asks over HTTP: the voice webhooks and its callbacks.

Each request is verified by `security.Gatekeeper` before anything is spent:
Twilio's signature (403 otherwise), single use for the webhooks that mint a
stream token, then the caller's limits (a spoken refusal otherwise)."""

from __future__ import annotations

import asyncio
import logging
import time
from urllib.parse import parse_qsl

from fastapi import APIRouter, Request
from fastapi.responses import Response
from twilio.request_validator import SIGNATURE_HEADER, SIGNATURE_SETTINGS_HEADER

from .agents import Agent, AgentBook, NoAgent
from .lifecycle import busy_for_webhook, why_busy
from .security import LEG_PARAMETER, MAX_IDENTITY_CHARS, TOKEN_PARAMETER, Gatekeeper, Rejected, webhook_urls
from .settings import Settings
from .shared_state import SharedStateUnavailable
from .twiml import (
    ONE_MOMENT, AfterStream, Next, apology_twiml, busy_twiml, connect_stream_twiml, hangup_twiml, over_limit_twiml,
)

log = logging.getLogger(__name__)

#: Twilio's voice webhooks are a few hundred bytes; anything far bigger is not Twilio.
MAX_WEBHOOK_BYTES = 64 * 1024
#: How long an answering-machine verdict waits for the stream's instance to pick it up.
AMD_NOTE_TTL_S = 600.0

router = APIRouter()


@router.post("/incoming-call")
async def incoming_call(request: Request) -> Response:
    """Twilio's voice webhook: answer with TwiML that connects the call to our stream."""
    s: Settings = request.app.state.settings
    gate: Gatekeeper = request.app.state.gate
    pairs = await twilio_form(request)
    if isinstance(pairs, Response):
        return pairs
    form = dict(pairs)
    call_sid = form.get("CallSid", "")
    caller, called = form.get("From", "")[:MAX_IDENTITY_CHARS], form.get("To", "")[:MAX_IDENTITY_CHARS]
    book: AgentBook = request.app.state.agents
    try:
        agent = book.for_number(called)  # the number dialled chooses the agent
    except NoAgent as exc:
        log.error("call %s turned away (apology): %s; add the number to an agent in AGENTS_FILE",
                  call_sid or "(no CallSid)", exc)
        return Response(content=apology_twiml(book.for_refusal(called)), media_type="text/xml")
    busy = await busy_for_webhook(request.app.state)
    if busy is not None:
        gate.rejected[busy] += 1
        log.warning("call %s turned away: %s", call_sid or "(no CallSid)", busy.replace("_", " "))
        return Response(content=busy_twiml(agent), media_type="text/xml")
    try:
        why = await gate.admit_call(call_sid, caller)
    except Rejected as exc:
        log.warning("call %s turned away (busy message): %s", call_sid or "(no CallSid)", exc.detail)
        return Response(content=busy_twiml(agent), media_type="text/xml")
    if why is not None:
        log.warning("call %s from %s turned away: %s", call_sid or "(no CallSid)", gate.show(caller), why)
        return Response(content=over_limit_twiml(agent), media_type="text/xml")
    host = s.public_host or request.headers.get("host", "")
    twiml = stream_twiml(gate, host, call_sid, caller, called, agent=agent)
    log.info("incoming call %s from %s to agent %s: connecting to wss://%s/media-stream",
             call_sid or "(no CallSid)", gate.show(caller), agent.name, host)
    return Response(content=twiml, media_type="text/xml")


@router.post("/outbound-answer")
async def outbound_answer(request: Request) -> Response:
    """Twilio's webhook when the callee of an outbound call answers: connect them to our stream.

    Verified like /incoming-call (Twilio signs the URL with its `?ref=`); the ref
    says whom we called and why. The stream's From is the callee and its To our
    number, so tools see the person on the line as the caller; `direction` and
    `purpose` travel as <Parameter>s.
    """
    state = request.app.state
    s: Settings = state.settings
    gate: Gatekeeper = state.gate
    pairs = await twilio_form(request)
    if isinstance(pairs, Response):
        return pairs
    form = dict(pairs)
    call_sid = form.get("CallSid", "")
    ours, callee = form.get("From", "")[:MAX_IDENTITY_CHARS], form.get("To", "")[:MAX_IDENTITY_CHARS]
    book: AgentBook = state.agents
    try:
        outbound = await state.outbound_refs.open(request.query_params.get("ref"), callee=callee)
    except SharedStateUnavailable as exc:
        gate.rejected["shared_state_unavailable"] += 1
        log.warning("outbound call %s answered, but %s: the callee hears the apology", call_sid or "(no CallSid)", exc)
        return Response(content=apology_twiml(book.for_refusal(ours)), media_type="text/xml")
    except Rejected as exc:
        gate.rejected[exc.reason] += 1
        log.warning("outbound call %s answered, but %s: the callee hears the apology", call_sid or "(no CallSid)", exc)
        return Response(content=apology_twiml(book.for_refusal(ours)), media_type="text/xml")
    try:
        agent = book.named(outbound.agent) if outbound.agent else book.for_number(ours)
    except NoAgent as exc:
        log.error("outbound call %s answered, but %s: the callee hears the apology", call_sid or "(no CallSid)", exc)
        return Response(content=apology_twiml(book.for_refusal(ours)), media_type="text/xml")
    answered_by = form.get("AnsweredBy", "")
    extra = {"direction": "outbound-api", "purpose": outbound.purpose, "answered_by": answered_by}
    if outbound.detect_machine and not answered_by:
        extra["amd"] = "pending"  # the verdict comes later, at /twilio/amd
    if answered_by == "fax":
        log.info("outbound call %s was answered by a fax machine: hanging up", call_sid)
        return Response(content=hangup_twiml(), media_type="text/xml")
    busy = why_busy(state)
    if busy is not None:
        gate.rejected[busy] += 1
        log.warning("outbound call %s answered while %s", call_sid, busy.replace("_", " "))
        return Response(content=busy_twiml(agent), media_type="text/xml")
    host = s.public_host or request.headers.get("host", "")
    twiml = stream_twiml(gate, host, call_sid, callee, ours, extra, agent=agent)
    log.info("outbound call %s answered by %s%s: connecting to wss://%s/media-stream", call_sid,
             gate.show(callee), f" ({answered_by})" if answered_by else "", host)
    return Response(content=twiml, media_type="text/xml")


@router.post("/stream-ended")
async def stream_ended(request: Request) -> Response:
    """Twilio asks what follows <Connect> once our server closed a call's stream."""
    pairs = await twilio_form(request, once=False)
    if isinstance(pairs, Response):
        return pairs
    form = dict(pairs)
    call_sid = form.get("CallSid", "")
    state = request.app.state
    checkpoint = None
    try:
        answer = await state.shared.pop_after_stream(call_sid)
        after = AfterStream.decode(answer)
        if answer is None or after.next is Next.MOVE:
            checkpoint = await _checkpoint(state, call_sid)
        if answer is None and checkpoint is not None:
            # Nobody said what follows, yet the call has a checkpoint: its instance died
            # mid-call, or the stream it moved to never started (no instance took it).
            # Carry it on from there, a few times at most, a moment apart so that the
            # load balancer can see an instance that was just starting.
            moves = int(checkpoint.get("moves") or 0)
            for attempt in range(1, REOFFERS + 1):
                if await state.shared.take_once("reoffered", f"{call_sid}:{moves}:{attempt}", AFTER_MOVE_TTL_S):
                    log.warning("call %s: its stream ended with no word from its instance; carrying it on "
                                "from its last checkpoint (attempt %d)", call_sid, attempt)
                    if attempt > 1:
                        await asyncio.sleep(REOFFER_PAUSE_S)
                    after = AfterStream(Next.MOVE)
                    break
    except SharedStateUnavailable as exc:
        log.warning("call %s: /stream-ended answers the apology: %s", call_sid, exc)
        after = AfterStream(Next.APOLOGY)
    if after.next is Next.MOVE:
        agent = _agent_of(state.agents, (checkpoint or {}).get("agent") or after.agent, form)
        if checkpoint is None:
            log.warning("call %s: it was moving, but its checkpoint is gone: the caller hears the apology", call_sid)
            return Response(content=AfterStream(Next.APOLOGY).twiml(agent), media_type="text/xml")
        # Carried on after a crash (no word from the instance), the new instance may wait up to
        # CALL_LEASE_SECONDS for the dead one's lease: the caller hears a word rather than silence.
        twiml = move_twiml(state, request, call_sid, checkpoint, agent,
                           say_first=ONE_MOMENT if answer is None else None)
        log.info("call %s moves: a new stream for whichever instance takes it", call_sid)
        return Response(content=twiml, media_type="text/xml")
    twiml = after.twiml(_agent_of(state.agents, after.agent, form))
    return Response(content=twiml, media_type="text/xml")


#: How long a crashed call's offers to carry it on are remembered, how many there are per
#: checkpoint, and the pause before each after the first (the caller hears silence).
AFTER_MOVE_TTL_S = 600.0
REOFFERS = 3
REOFFER_PAUSE_S = 1.0


async def _checkpoint(state, call_sid: str) -> dict | None:
    import json

    raw = await state.shared.load_checkpoint(call_sid) if call_sid else None
    try:
        checkpoint = json.loads(raw) if raw else None
    except ValueError:
        return None
    return checkpoint if isinstance(checkpoint, dict) else None


def move_twiml(state, request: Request, call_sid: str, checkpoint: dict, agent: Agent | None = None,
               say_first: str | None = None) -> str:
    """The call's next stream: the same identity, parameters and action, a fresh
    single-use token for the next leg."""
    s: Settings = state.settings
    host = s.public_host or request.headers.get("host", "")
    extra = {k: v for k, v in (checkpoint.get("parameters") or {}).items()
             if k not in ("CallSid", "From", "To", "agent", TOKEN_PARAMETER, LEG_PARAMETER) and isinstance(v, str)}
    leg = str(int(checkpoint.get("moves") or 0) + 2)
    return stream_twiml(state.gate, host, call_sid, checkpoint.get("caller") or "", checkpoint.get("called") or "",
                        extra, agent=agent, leg=leg, say_first=say_first)


@router.post("/twilio/status")
async def twilio_status(request: Request) -> Response:
    """Twilio's call-status and stream-status callbacks, stored with the call's record.

    A call sends several (ringing, in-progress, completed; stream-started,
    stream-stopped), so a CallSid seen before is not a replay here.
    """
    pairs = await twilio_form(request, once=False)
    if isinstance(pairs, Response):
        return pairs
    form = dict(pairs)
    call_sid = form.get("CallSid", "")
    if not call_sid:
        return Response(status_code=400, content="CallSid is required", media_type="text/plain")
    kind = "stream" if form.get("StreamEvent") or form.get("StreamSid") else "call"
    request.app.state.recorder.status_callback(call_sid, kind, form, time.time())
    return Response(status_code=204)


@router.post("/twilio/amd")
async def answering_machine(request: Request) -> Response:
    """Twilio's asynchronous answering-machine verdict for an outbound call.

    It may reach any instance: the verdict is left in the shared state under the
    CallSid, where the instance holding the call's stream picks it up (and at
    once, when that is this instance)."""
    pairs = await twilio_form(request, once=False)
    if isinstance(pairs, Response):
        return pairs
    form = dict(pairs)
    call_sid, verdict = form.get("CallSid", ""), form.get("AnsweredBy", "")
    if not call_sid or not verdict:
        log.warning("answering-machine callback without CallSid or AnsweredBy: ignored")
        return Response(status_code=400, content="CallSid and AnsweredBy are required", media_type="text/plain")
    state = request.app.state
    log.info("call %s: answered by %s (detection took %s ms)", call_sid, verdict, form.get("MachineDetectionDuration", "?"))
    try:
        await state.shared.put_note("amd", call_sid, verdict[:40], AMD_NOTE_TTL_S)
    except SharedStateUnavailable as exc:
        log.warning("call %s: the answering-machine verdict is lost (%s); the call goes on as with a person", call_sid, exc)
    for bridge in list(state.active_calls):
        if bridge.call.call_sid == call_sid:
            bridge.answered_by(verdict[:40])
    return Response(status_code=204)


async def _transfer_callback(request: Request, step, *, about: str = "CallSid", status_only: bool = False) -> Response:
    """One of Twilio's callbacks about a warm transfer, checked like every webhook and
    handed to `step(transfers, ticket, form)`, which returns the TwiML to answer with.
    A `status_only` callback only informs us: its answer is 204.

    Where transfers are not configured, or the shared state cannot be read, the leg
    asking hangs up rather than being left on hold: one warning line says which."""
    pairs = await twilio_form(request, once=False, about=about)
    if isinstance(pairs, Response):
        return pairs
    transfers = request.app.state.transfers
    twiml: str | None
    if transfers is None:
        log.warning("%s requested, but warm transfers are not configured here", request.url.path)
        twiml = hangup_twiml()
    else:
        try:
            twiml = await step(transfers, request.query_params.get("t"), dict(pairs))
        except SharedStateUnavailable as exc:
            log.warning("%s: %s", request.url.path, exc)
            twiml = hangup_twiml()
    if status_only or twiml is None:
        return Response(status_code=204)
    return Response(content=twiml, media_type="text/xml")


@router.post("/transfer/hold")
async def transfer_hold(request: Request) -> Response:
    """The held caller's waitUrl: a word, then music, until the person joins."""
    return await _transfer_callback(request, lambda transfers, t, form: transfers.hold(t))


@router.post("/transfer/brief")
async def transfer_brief(request: Request) -> Response:
    """The person answered: read them the summary, ask them to accept or decline."""
    return await _transfer_callback(request, lambda transfers, t, form: transfers.brief(t))


@router.post("/transfer/decide")
async def transfer_decide(request: Request) -> Response:
    """The person's key press or words (or nothing): connect them, or send the caller back."""
    return await _transfer_callback(
        request, lambda transfers, t, form: transfers.decide(t, form.get("Digits"), form.get("SpeechResult")))


@router.post("/transfer/human-status")
async def transfer_human_status(request: Request) -> Response:
    """The final status of the call to the person: no-answer, busy, failed, canceled or completed."""
    return await _transfer_callback(
        request, lambda transfers, t, form: transfers.human_status(t, form.get("CallStatus", "")),
        status_only=True)


@router.post("/transfer/conference")
async def transfer_conference(request: Request) -> Response:
    """The held caller's conference events (start, end, join, leave)."""
    return await _transfer_callback(request, lambda transfers, t, form: transfers.conference(t, form),
                                    about="ConferenceSid", status_only=True)


def _agent_of(book: AgentBook, name: str | None, form: dict[str, str]) -> Agent:
    """The agent whose words end a call: the one it had, else the one answering its number.
    (On an inbound call Twilio's `To` is our number; on an outbound one, `From`.)"""
    if name:
        try:
            return book.named(name)
        except NoAgent:
            pass
    ours = form.get("From") if form.get("Direction", "").startswith("outbound") else form.get("To")
    return book.for_refusal(ours)


def stream_twiml(gate: Gatekeeper, host: str, call_sid: str, caller: str, called: str,
                  extra: dict[str, str] | None = None, agent: Agent | None = None, leg: str = "",
                  say_first: str | None = None) -> str:
    """The <Connect><Stream> TwiML of every call, inbound or outbound.

    The stream token is minted for this CallSid and these numbers; `caller` is the
    other party (the callee, on an outbound call) and `called` our line. `extra`
    parameters (direction, purpose, ...) travel beside them but cannot replace them.
    The agent chosen here travels as the `agent` parameter, and its words follow the
    <Connect> for when the stream cannot start.
    """
    parameters = {"CallSid": call_sid, "From": caller, "To": called,
                  TOKEN_PARAMETER: gate.mint_token(call_sid, caller, called, leg)}
    if leg:
        parameters[LEG_PARAMETER] = leg
    if agent is not None:
        parameters["agent"] = agent.name
    for name, value in (extra or {}).items():
        parameters.setdefault(name, value)
    return connect_stream_twiml(
        f"wss://{host}/media-stream", parameters, f"https://{host}/stream-ended", f"https://{host}/twilio/status",
        agent=agent, say_first=say_first,
    )


async def twilio_form(request: Request, *, once: bool = True, about: str = "CallSid") -> list[tuple[str, str]] | Response:
    """A Twilio webhook's form fields, once its signature checks out; else the refusal to send.

    `once=False` for callbacks Twilio sends several times per call (status, stream end).
    """
    state = request.app.state
    raw = await read_body(request, MAX_WEBHOOK_BYTES)
    if raw is None:
        log.warning("rejected %s: body over %d bytes", request.url.path, MAX_WEBHOOK_BYTES)
        return Response(status_code=413)
    pairs = parse_qsl(raw.decode("utf-8", errors="replace"), keep_blank_values=True)
    try:
        await state.gate.check_webhook(
            urls=webhook_urls(state.settings.public_url, str(request.url)), form=pairs,
            signature=request.headers.get(SIGNATURE_HEADER),
            signature_settings=request.headers.get(SIGNATURE_SETTINGS_HEADER), once=once, about=about,
        )
    except Rejected as exc:
        if exc.reason == "shared_state_unavailable":  # cannot tell a replay: refuse politely
            log.warning("turned away %s (busy message): %s", request.url.path, exc.detail)
            return Response(content=busy_twiml(), media_type="text/xml")
        log.warning("rejected %s (403): %s", request.url.path, exc)
        return Response(status_code=403, content="Forbidden", media_type="text/plain")
    return pairs


async def read_body(request: Request, limit: int) -> bytes | None:
    """The request body, or None once it exceeds `limit` bytes (not read further)."""
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            return None
    return bytes(body)


