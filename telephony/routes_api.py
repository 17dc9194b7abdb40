"""What operators and their systems ask: health, metrics, call records, outbound calls.

Everything but /healthz answers only to `Authorization: Bearer CALLS_API_TOKEN`,
and 404 while that is unset, as if the route did not exist (/metrics may be opened
with METRICS_OPEN for a private network)."""

from __future__ import annotations

import asyncio
import hmac
import logging

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

from . import dashboard, metrics
from .agents import NoAgent
from .outbound import OutboundUnavailable, parse_outbound_request, place_call
from .records_query import get_call, list_calls
from .records_schema import RecordsUnavailable
from .routes_twilio import MAX_WEBHOOK_BYTES, read_body
from .security import DestinationNotAllowed
from .shared_state import SharedStateUnavailable
from .twilio_rest import describe_error

log = logging.getLogger(__name__)

router = APIRouter()


@router.get("/healthz")
async def healthz(request: Request) -> JSONResponse:
    state = request.app.state
    try:
        await state.shared.ping()
        shared = "ok"
    except SharedStateUnavailable:
        shared = "unavailable"
    return JSONResponse(
        {
            "status": "draining" if state.draining else "ok",
            "instance": state.instance_id,
            "shared_state": shared,
            "active_calls": len(state.active_calls),
            "tasks": len(asyncio.all_tasks()),
            "rejected": dict(sorted(state.gate.rejected.items())),
        },
        status_code=503 if state.draining else 200,
    )


@router.get("/metrics")
async def metrics_endpoint(request: Request) -> Response:
    """Prometheus metrics (metrics.py): Bearer CALLS_API_TOKEN, or open with METRICS_OPEN=true; else 404."""
    if not request.app.state.settings.metrics_open:
        refused = calls_api_refusal(request)
        if refused is not None:
            return refused
    body, content_type = await asyncio.to_thread(metrics.render)
    return Response(content=body, media_type=content_type)


@router.get("/calls")
async def calls_index(request: Request) -> Response:
    """Recent call records (Authorization: Bearer CALLS_API_TOKEN; 404 when unset); `?agent=NAME`
    lists that agent's calls only."""
    refused = calls_api_refusal(request)
    if refused is not None:
        return refused
    raw = request.query_params.get("limit", "20")
    if not raw.isdigit() or not 1 <= int(raw) <= 1000:
        return JSONResponse({"detail": "limit must be a whole number from 1 to 1000"}, status_code=400)
    try:
        calls = await asyncio.to_thread(list_calls, request.app.state.recorder.store, int(raw),
                                        request.query_params.get("agent") or None)
    except RecordsUnavailable as exc:
        return _records_unavailable(exc)
    return JSONResponse({"calls": calls})


@router.get("/calls/{call_sid}")
async def calls_show(request: Request, call_sid: str) -> Response:
    """One call's record: transcript turns, tool calls, events, status callbacks and their timeline."""
    refused = calls_api_refusal(request)
    if refused is not None:
        return refused
    try:
        record = await asyncio.to_thread(get_call, request.app.state.recorder.store, call_sid)
    except RecordsUnavailable as exc:
        return _records_unavailable(exc)
    if record is None:
        return JSONResponse({"detail": f"no call {call_sid}"}, status_code=404)
    return JSONResponse(record)


@router.get("/calls/{call_sid}/audio")
async def calls_audio(request: Request, call_sid: str) -> Response:
    """The call's stereo WAV when RECORD_AUDIO recorded it (audio_recording.py); Bearer CALLS_API_TOKEN."""
    refused = calls_api_refusal(request)
    if refused is not None:
        return refused
    return dashboard.recording_response(request, call_sid)


@router.post("/outbound-call")
async def outbound_call(request: Request) -> Response:
    """Place a call whose callee talks to the agent: {"to", "purpose", "machine_detection", "agent"}.

    `agent` names the agent that talks (default: the one answering TWILIO_PHONE_NUMBER).

    Authorization: Bearer CALLS_API_TOKEN (404 when unset). The destination must be
    on ALLOWED_DESTINATIONS (403). Twilio fetches the TwiML from /outbound-answer.
    """
    refused = calls_api_refusal(request)
    if refused is not None:
        return refused
    state = request.app.state
    raw = await read_body(request, MAX_WEBHOOK_BYTES)
    if raw is None:
        return JSONResponse({"detail": f"the body is over {MAX_WEBHOOK_BYTES} bytes"}, status_code=413)
    try:
        wanted = parse_outbound_request(raw)
    except ValueError as exc:
        return JSONResponse({"detail": str(exc)}, status_code=400)
    if wanted.agent is not None:
        try:
            state.agents.named(wanted.agent)
        except NoAgent as exc:
            return JSONResponse({"detail": str(exc)}, status_code=400)
    try:
        call = await place_call(state.rest, state.settings, wanted, state.outbound_refs)
    except DestinationNotAllowed:
        state.gate.rejected["outbound_destination_not_allowed"] += 1
        log.warning("refused an outbound call to %s (403): not on ALLOWED_DESTINATIONS", state.gate.show(wanted.to))
        return JSONResponse({"detail": "this destination is not on ALLOWED_DESTINATIONS"}, status_code=403)
    except OutboundUnavailable as exc:
        log.warning("cannot place an outbound call (503): %s", exc)
        return JSONResponse({"detail": str(exc)}, status_code=503)
    except Exception as exc:  # Twilio refused the call, or could not be reached
        log.warning("outbound call to %s failed (502): %s", state.gate.show(wanted.to), describe_error(exc))
        return JSONResponse({"detail": describe_error(exc)}, status_code=502)
    return JSONResponse({"call_sid": call.sid, "status": call.status, "to": call.to}, status_code=201)


def _records_unavailable(exc: Exception) -> Response:
    log.warning("call records cannot be read now (503): %s", exc)
    return JSONResponse({"detail": "the call records database cannot be reached; try again shortly"}, status_code=503,
                        headers={"Retry-After": "5"})


def calls_api_refusal(request: Request) -> Response | None:
    """None if the request may read call records; else the answer: 404 while the
    API is disabled (no CALLS_API_TOKEN, as if the route did not exist), 401 for
    a missing or wrong token (compared in constant time)."""
    token = request.app.state.settings.calls_api_token
    if not token:
        return JSONResponse({"detail": "Not Found"}, status_code=404)
    scheme, _, given = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), token.encode()):
        request.app.state.gate.rejected["calls_api_unauthorized"] += 1
        log.warning("refused a /calls request (401): missing or wrong API token")
        return JSONResponse({"detail": "unauthorized"}, status_code=401, headers={"WWW-Authenticate": "Bearer"})
    return None


