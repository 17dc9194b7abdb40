"""The FastAPI app: Twilio's voice webhook, the media-stream WebSocket, and a health check.

Run it with `telephony serve` or `uvicorn telephony.app:app`. Settings are
read and validated at start-up; a bad value stops the server with a message
naming the variable.

Every way in is checked by `security.Gatekeeper` before it costs anything:
the webhook's Twilio signature (403 otherwise) and the caller's limits
(a spoken refusal otherwise); the stream's upgrade signature (HTTP 403
before the WebSocket is accepted) and its single-use token (close 1008)
before a `CallBridge` exists, so no Live session is ever opened for a
stream that fails.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import hmac
import logging
import os
import secrets
import signal
import socket
import time
from collections import deque
from typing import Any
from urllib.parse import parse_qsl

from fastapi import FastAPI, Request, WebSocket
from fastapi.responses import JSONResponse, Response
from starlette.websockets import WebSocketState
from twilio.request_validator import SIGNATURE_HEADER, SIGNATURE_SETTINGS_HEADER

from . import __version__, dashboard, metrics
from . import twilio_protocol as tw
from .audio_recording import AudioRecordings
from .bridge import CallBridge
from .errors import MalformedMessage, SettingsError
from .live import make_client
from .observe import Watch
from .outbound import (
    OutboundRefs,
    OutboundUnavailable,
    parse_outbound_request,
    place_call,
)
from .records import CallRecorder, open_records
from .records_query import get_call, list_calls
from .records_schema import RecordsError, RecordsUnavailable
from .security import (
    MAX_IDENTITY_CHARS,
    TOKEN_PARAMETER,
    CallerIdentity,
    DestinationNotAllowed,
    Gatekeeper,
    Rejected,
    check_deployment,
    install_log_redaction,
    stream_urls,
    webhook_urls,
)
from .settings import Settings
from .shared_state import SharedStateUnavailable, open_shared_state
from .tools import ToolRegistry
from .twilio_rest import close_rest_client, describe_error, make_rest_client
from .twiml import (
    AfterStream,
    Next,
    apology_twiml,
    busy_twiml,
    connect_stream_twiml,
    hangup_twiml,
    over_limit_twiml,
)

log = logging.getLogger("telephony.app")

#: Twilio's voice webhooks are a few hundred bytes; anything far bigger is not Twilio.
MAX_WEBHOOK_BYTES = 64 * 1024
#: Twilio sends `connected` then `start` at once; a stream that has not
#: started after this many messages or seconds is not a Twilio stream.
MAX_MESSAGES_BEFORE_START = 50
START_TIMEOUT_S = 10.0
#: How long an ended stream's answer waits for Twilio's /stream-ended (asked right after the close).
AFTER_STREAM_TTL_S = 600.0
#: Each instance reports itself alive this often, for this long (the drain asks who else is up).
HEARTBEAT_S = 5.0
HEARTBEAT_TTL_S = 15.0
#: After the drain time, how long ended-politely calls get to finish tearing down.
STOP_GRACE_S = 10.0


def configure_logging(level: str = "INFO") -> None:
    """Give our loggers a handler when the host (plain uvicorn) has not."""
    root = logging.getLogger("telephony")
    root.setLevel(level)
    if not root.handlers and not logging.getLogger().handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        root.addHandler(handler)


def _default_registry() -> ToolRegistry:
    from tools import registry

    return registry


def create_app(settings: Settings | None = None, registry: ToolRegistry | None = None, *,
               tracing: Any | None = None) -> FastAPI:
    """The app. `tracing` (a `tracing.CallTracing`) replaces the one OTEL_EXPORTER_OTLP_ENDPOINT would make."""
    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        s = settings or Settings.from_env()
        configure_logging(s.log_level)
        install_log_redaction(s)
        try:
            check_deployment(s)
        except SettingsError as exc:
            log.error("configuration error: %s", exc)
            raise
        reg = registry or _default_registry()
        reg.default_timeout = s.tool_timeout_s
        try:
            app.state.client = make_client(s)  # on Vertex AI, loads the credentials: may refuse to start
            prepare_orders_db(s)
            app.state.recorder = CallRecorder(open_records(s), s)  # call records (records.py)
        except (SettingsError, RecordsError) as exc:
            log.error("configuration error: %s", exc)
            raise
        app.state.settings = s
        app.state.registry = reg
        app.state.rest = make_rest_client(s)  # None without REST credentials (twilio_rest.py)
        # What every process must agree on (shared_state.py): this process's memory, or Redis.
        shared = app.state.shared = open_shared_state(s.redis_url)
        app.state.instance_id = f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(3)}"
        app.state.outbound_refs = OutboundRefs(s, state=shared)  # what each outbound call is for (POST /outbound-call)
        app.state.active_calls = set()
        app.state.recent_calls = deque(maxlen=100)  # summaries of finished calls, newest last
        app.state.gate = Gatekeeper(s, shared)
        app.state.draining = False
        try:
            app.state.watch = _watch(s, reg, tracing)  # metrics, traces, call audio (observe.py)
        except SettingsError as exc:
            log.error("configuration error: %s", exc)
            raise
        retention = asyncio.create_task(_recording_retention(app.state.watch.recordings), name="recording-retention")
        if s.redis_url:
            try:
                await shared.ping()
                log.info("shared state: Redis answers; calls are shared with every instance using it")
            except SharedStateUnavailable as exc:
                log.error("%s: new calls are refused until it answers", exc)
        heartbeat = asyncio.create_task(_heartbeat(app), name="instance-heartbeat")
        _drain_on_sigterm(app)
        log.info("phone agent %s ready: model=%s voice=%s tools=%s", __version__, s.gemini_model, s.gemini_voice, reg.names())
        if not s.public_url:
            log.warning("PUBLIC_URL is not set: stream URLs will use the Host header of each webhook request")
        if not s.has_twilio_rest:
            log.warning("TWILIO_ACCOUNT_SID/TWILIO_AUTH_TOKEN not set: failed calls end by closing the stream onto the TwiML apology")
        if s.verifies_twilio:
            log.info("Twilio signatures are verified on webhooks and media streams (stream tokens live %.0f s)",
                     s.stream_token_ttl_s)
        else:
            log.warning(
                "SECURITY: TWILIO_AUTH_TOKEN is not set, so requests are NOT verified: anyone who can reach "
                "this server can open Gemini Live sessions on your API key, and callers are who they claim "
                "to be. Use this only for local development and simulated calls (see SECURITY.md)."
            )
        # Start-up leaves ~130k long-lived objects (modules, the SDK's pydantic models); a
        # full collection scanning them stalls every call's audio for ~90 ms on this
        # machine. They are never garbage: keep them out of the collector's sight.
        gc.collect()
        gc.freeze()
        yield
        if app.state.active_calls:  # stopped without a drain (e.g. a second signal)
            await drain(app, timeout_s=0)
        heartbeat.cancel()
        retention.cancel()
        metrics.process_stopped()
        if app.state.watch.tracing is not None:
            await asyncio.to_thread(app.state.watch.tracing.shutdown)
        with contextlib.suppress(asyncio.CancelledError, SharedStateUnavailable):
            await heartbeat
            await shared.forget_instance(app.state.instance_id)
        with contextlib.suppress(Exception):
            await shared.aclose()
        await asyncio.to_thread(app.state.recorder.close)  # after the calls: their last records are written
        await close_rest_client(app.state.rest)  # after the calls: their hang-ups went through it

    app = FastAPI(title="Gemini Live phone agent", version=__version__, lifespan=lifespan)

    @app.get("/healthz")
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

    @app.get("/metrics")
    async def metrics_endpoint(request: Request) -> Response:
        """Prometheus metrics (metrics.py): Bearer CALLS_API_TOKEN, or open with METRICS_OPEN=true; else 404."""
        if not request.app.state.settings.metrics_open:
            refused = _calls_api_refusal(request)
            if refused is not None:
                return refused
        body, content_type = await asyncio.to_thread(metrics.render)
        return Response(content=body, media_type=content_type)

    @app.post("/incoming-call")
    async def incoming_call(request: Request) -> Response:
        """Twilio's voice webhook: answer with TwiML that connects the call to our stream."""
        s: Settings = request.app.state.settings
        gate: Gatekeeper = request.app.state.gate
        pairs = await _twilio_form(request)
        if isinstance(pairs, Response):
            return pairs
        form = dict(pairs)
        call_sid = form.get("CallSid", "")
        caller, called = form.get("From", "")[:MAX_IDENTITY_CHARS], form.get("To", "")[:MAX_IDENTITY_CHARS]
        busy = await _busy_for_webhook(request.app.state)
        if busy is not None:
            gate.rejected[busy] += 1
            log.warning("call %s turned away: %s", call_sid or "(no CallSid)", busy.replace("_", " "))
            return Response(content=busy_twiml(), media_type="text/xml")
        try:
            why = await gate.admit_call(call_sid, caller)
        except Rejected as exc:
            log.warning("call %s turned away (busy message): %s", call_sid or "(no CallSid)", exc.detail)
            return Response(content=busy_twiml(), media_type="text/xml")
        if why is not None:
            log.warning("call %s from %s turned away: %s", call_sid or "(no CallSid)", gate.show(caller), why)
            return Response(content=over_limit_twiml(), media_type="text/xml")
        host = s.public_host or request.headers.get("host", "")
        twiml = _stream_twiml(gate, host, call_sid, caller, called)
        log.info("incoming call %s from %s: connecting to wss://%s/media-stream",
                 call_sid or "(no CallSid)", gate.show(caller), host)
        return Response(content=twiml, media_type="text/xml")

    @app.websocket("/media-stream")
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
        await websocket.accept()
        busy = _busy(state)
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
        bridge = CallBridge(
            _Replay(websocket, pending), settings=s, client=state.client, registry=state.registry,
            rest=state.rest, identity=identity, recorder=state.recorder, watch=state.watch,
        )
        state.active_calls.add(bridge)
        try:
            state.recent_calls.append(await bridge.run())
        finally:
            state.active_calls.discard(bridge)
            await gate.stream_ended(identity.call_sid if identity else None)
            if bridge.call.call_sid:
                try:
                    await state.shared.put_after_stream(bridge.call.call_sid, bridge.after_stream.encode(),
                                                      AFTER_STREAM_TTL_S)
                except SharedStateUnavailable as exc:
                    log.warning("call %s: /stream-ended will answer the apology: %s", bridge.call.call_sid, exc)

    @app.post("/stream-ended")
    async def stream_ended(request: Request) -> Response:
        """Twilio asks what follows <Connect> once our server closed a call's stream."""
        pairs = await _twilio_form(request, once=False)
        if isinstance(pairs, Response):
            return pairs
        call_sid = dict(pairs).get("CallSid", "")
        try:
            after = AfterStream.decode(await request.app.state.shared.pop_after_stream(call_sid))
        except SharedStateUnavailable as exc:
            log.warning("call %s: /stream-ended answers the apology: %s", call_sid, exc)
            after = AfterStream(Next.APOLOGY)
        twiml = after.twiml()
        return Response(content=twiml, media_type="text/xml")

    # ------------------------------------------------------------ call records (records.py)

    @app.post("/twilio/status")
    async def twilio_status(request: Request) -> Response:
        """Twilio's call-status and stream-status callbacks, stored with the call's record.

        A call sends several (ringing, in-progress, completed; stream-started,
        stream-stopped), so a CallSid seen before is not a replay here.
        """
        pairs = await _twilio_form(request, once=False)
        if isinstance(pairs, Response):
            return pairs
        form = dict(pairs)
        call_sid = form.get("CallSid", "")
        if not call_sid:
            return Response(status_code=400, content="CallSid is required", media_type="text/plain")
        kind = "stream" if form.get("StreamEvent") or form.get("StreamSid") else "call"
        request.app.state.recorder.status_callback(call_sid, kind, form, time.time())
        return Response(status_code=204)

    @app.get("/calls")
    async def calls_index(request: Request) -> Response:
        """Recent call records (Authorization: Bearer CALLS_API_TOKEN; 404 when unset)."""
        refused = _calls_api_refusal(request)
        if refused is not None:
            return refused
        raw = request.query_params.get("limit", "20")
        if not raw.isdigit() or not 1 <= int(raw) <= 1000:
            return JSONResponse({"detail": "limit must be a whole number from 1 to 1000"}, status_code=400)
        try:
            calls = await asyncio.to_thread(list_calls, request.app.state.recorder.store, int(raw))
        except RecordsUnavailable as exc:
            return _records_unavailable(exc)
        return JSONResponse({"calls": calls})

    @app.get("/calls/{call_sid}")
    async def calls_show(request: Request, call_sid: str) -> Response:
        """One call's record: transcript turns, tool calls, events, status callbacks and their timeline."""
        refused = _calls_api_refusal(request)
        if refused is not None:
            return refused
        try:
            record = await asyncio.to_thread(get_call, request.app.state.recorder.store, call_sid)
        except RecordsUnavailable as exc:
            return _records_unavailable(exc)
        if record is None:
            return JSONResponse({"detail": f"no call {call_sid}"}, status_code=404)
        return JSONResponse(record)

    @app.get("/calls/{call_sid}/audio")
    async def calls_audio(request: Request, call_sid: str) -> Response:
        """The call's stereo WAV when RECORD_AUDIO recorded it (audio_recording.py); Bearer CALLS_API_TOKEN."""
        refused = _calls_api_refusal(request)
        if refused is not None:
            return refused
        return dashboard.recording_response(request, call_sid)

    dashboard.install(app)  # /dashboard (dashboard.py)

    # ------------------------------------------------------------ outbound calls (outbound.py)

    @app.post("/outbound-call")
    async def outbound_call(request: Request) -> Response:
        """Place a call whose callee talks to the agent: {"to", "purpose", "machine_detection"}.

        Authorization: Bearer CALLS_API_TOKEN (404 when unset). The destination must be
        on ALLOWED_DESTINATIONS (403). Twilio fetches the TwiML from /outbound-answer.
        """
        refused = _calls_api_refusal(request)
        if refused is not None:
            return refused
        state = request.app.state
        raw = await _read_body(request, MAX_WEBHOOK_BYTES)
        if raw is None:
            return JSONResponse({"detail": f"the body is over {MAX_WEBHOOK_BYTES} bytes"}, status_code=413)
        try:
            wanted = parse_outbound_request(raw)
        except ValueError as exc:
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

    @app.post("/outbound-answer")
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
        pairs = await _twilio_form(request)
        if isinstance(pairs, Response):
            return pairs
        form = dict(pairs)
        call_sid = form.get("CallSid", "")
        ours, callee = form.get("From", "")[:MAX_IDENTITY_CHARS], form.get("To", "")[:MAX_IDENTITY_CHARS]
        try:
            outbound = await state.outbound_refs.open(request.query_params.get("ref"), callee=callee)
        except SharedStateUnavailable as exc:
            gate.rejected["shared_state_unavailable"] += 1
            log.warning("outbound call %s answered, but %s: the callee hears the apology", call_sid or "(no CallSid)", exc)
            return Response(content=apology_twiml(), media_type="text/xml")
        except Rejected as exc:
            gate.rejected[exc.reason] += 1
            log.warning("outbound call %s answered, but %s: the callee hears the apology", call_sid or "(no CallSid)", exc)
            return Response(content=apology_twiml(), media_type="text/xml")
        answered_by = form.get("AnsweredBy", "")
        if answered_by == "fax":
            log.info("outbound call %s was answered by a fax machine: hanging up", call_sid)
            return Response(content=hangup_twiml(), media_type="text/xml")
        busy = _busy(state)
        if busy is not None:
            gate.rejected[busy] += 1
            log.warning("outbound call %s answered while %s", call_sid, busy.replace("_", " "))
            return Response(content=busy_twiml(), media_type="text/xml")
        host = s.public_host or request.headers.get("host", "")
        twiml = _stream_twiml(gate, host, call_sid, callee, ours,
                              {"direction": "outbound-api", "purpose": outbound.purpose, "answered_by": answered_by})
        log.info("outbound call %s answered by %s%s: connecting to wss://%s/media-stream", call_sid,
                 gate.show(callee), f" ({answered_by})" if answered_by else "", host)
        return Response(content=twiml, media_type="text/xml")

    return app


def _watch(s: Settings, registry: ToolRegistry, tracing: Any | None) -> Watch:
    from .tracing import from_settings

    recordings = None
    if s.record_audio:
        recordings = AudioRecordings(s.recordings_dir, s.recording_retention_days)
        log.info("call audio is recorded to %s (kept %g days): callers must be told", s.recordings_dir,
                 s.recording_retention_days)
    return Watch(tracing=tracing or from_settings(s), recordings=recordings, tool_names=frozenset(registry.names()))


async def _recording_retention(recordings: AudioRecordings | None) -> None:
    """Delete expired call recordings at start-up, then once a day."""
    if recordings is None:
        return
    while True:
        await asyncio.to_thread(recordings.delete_expired)
        await asyncio.sleep(86400)


def _records_unavailable(exc: Exception) -> Response:
    log.warning("call records cannot be read now (503): %s", exc)
    return JSONResponse({"detail": "the call records database cannot be reached; try again shortly"}, status_code=503,
                        headers={"Retry-After": "5"})


def _calls_api_refusal(request: Request) -> Response | None:
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


def _stream_twiml(gate: Gatekeeper, host: str, call_sid: str, caller: str, called: str,
                  extra: dict[str, str] | None = None) -> str:
    """The <Connect><Stream> TwiML of every call, inbound or outbound.

    The stream token is minted for this CallSid and these numbers; `caller` is the
    other party (the callee, on an outbound call) and `called` our line. `extra`
    parameters (direction, purpose, ...) travel beside them but cannot replace them.
    """
    parameters = {"CallSid": call_sid, "From": caller, "To": called,
                  TOKEN_PARAMETER: gate.mint_token(call_sid, caller, called)}
    for name, value in (extra or {}).items():
        parameters.setdefault(name, value)
    return connect_stream_twiml(
        f"wss://{host}/media-stream", parameters, f"https://{host}/stream-ended", f"https://{host}/twilio/status"
    )


def prepare_orders_db(settings: Settings) -> None:
    """Create and seed the demo orders database, or say which setting points nowhere usable."""
    import sqlite3

    from tools.orders import ensure_orders_db

    try:
        ensure_orders_db(settings.orders_db_path)
    except (OSError, sqlite3.Error) as exc:
        raise SettingsError(
            f"ORDERS_DB_PATH={str(settings.orders_db_path)!r}: cannot create the orders database: {exc}"
        ) from None


def check_storage(settings: Settings) -> None:
    """Both databases open and migrate (for `telephony serve` to fail in one line, before uvicorn).

    PostgreSQL (DATABASE_URL) is not connected to here: being unreachable does not
    stop the server (records.py), and the app's start-up migrates it.
    """
    prepare_orders_db(settings)
    open_records(settings).check()


def _busy(state: Any) -> str | None:
    """Why this instance takes no new stream now, or None."""
    if state.draining:
        return "draining"
    if len(state.active_calls) >= state.settings.max_concurrent_calls:
        return "at_capacity"
    return None


async def _busy_for_webhook(state: Any) -> str | None:
    """Why no new call can be connected now, or None.

    A webhook only hands out a stream URL, which the load balancer may send to any
    instance: while this one drains, the call is still connected if another instance
    reported itself up and not draining (`_heartbeat`)."""
    busy = _busy(state)
    if busy != "draining":
        return busy
    try:
        others = [i for i in await state.shared.instances() if i.instance_id != state.instance_id and not i.draining]
    except SharedStateUnavailable:
        return busy
    return None if others else busy


async def _heartbeat(app: FastAPI) -> None:
    """Tell the shared state this instance is up (and whether it drains), every few seconds."""
    state = app.state
    warned = False
    while True:
        try:
            await state.shared.heartbeat(state.instance_id, draining=state.draining,
                                         active_calls=len(state.active_calls), ttl_s=HEARTBEAT_TTL_S)
            warned = False
        except SharedStateUnavailable as exc:
            if not warned:  # once per outage, not every few seconds
                log.warning("%s", exc)
                warned = True
        await asyncio.sleep(HEARTBEAT_S)


async def drain(app: FastAPI, timeout_s: float) -> None:
    """Stop taking calls, let active ones finish for up to `timeout_s`, then end the
    rest politely (the caller hears an apology) and wait for their summaries."""
    state = app.state
    state.draining = True
    with contextlib.suppress(SharedStateUnavailable):  # let the other instances know at once
        await state.shared.heartbeat(state.instance_id, draining=True, active_calls=len(state.active_calls),
                                     ttl_s=HEARTBEAT_TTL_S)
    calls = state.active_calls
    log.info("draining: %d active call(s); waiting up to %.0f s for them to finish", len(calls), timeout_s)
    deadline = time.monotonic() + timeout_s
    while calls and time.monotonic() < deadline:
        await asyncio.sleep(0.1)
    if calls:
        log.info("drain time over: ending %d call(s) politely", len(calls))
        for bridge in list(calls):
            bridge.stop()
        deadline = time.monotonic() + STOP_GRACE_S
        while calls and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
    log.info("drained: %d call(s) left", len(calls))


def _drain_on_sigterm(app: FastAPI) -> None:
    """On SIGTERM, drain before letting the server (uvicorn) shut down.

    uvicorn's own handler would close every WebSocket at once (1012), cutting
    callers off mid-sentence. We run the drain first, then hand the signal
    to the previous handler. Only possible from the main thread.
    """
    previous = signal.getsignal(signal.SIGTERM)
    if not callable(previous):
        return
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:
        return

    def on_sigterm() -> None:
        if app.state.draining:  # a second SIGTERM: stop now
            previous(signal.SIGTERM, None)
            return

        async def drain_then_exit() -> None:
            try:
                await drain(app, app.state.settings.drain_timeout_s)
            finally:
                previous(signal.SIGTERM, None)

        app.state.drain_task = loop.create_task(drain_then_exit())

    try:
        loop.add_signal_handler(signal.SIGTERM, on_sigterm)
    except (RuntimeError, ValueError):  # not the main thread (tests, embedded servers)
        pass


async def _twilio_form(request: Request, *, once: bool = True) -> list[tuple[str, str]] | Response:
    """A Twilio webhook's form fields, once its signature checks out; else the refusal to send.

    `once=False` for callbacks Twilio sends several times per call (status, stream end).
    """
    state = request.app.state
    raw = await _read_body(request, MAX_WEBHOOK_BYTES)
    if raw is None:
        log.warning("rejected %s: body over %d bytes", request.url.path, MAX_WEBHOOK_BYTES)
        return Response(status_code=413)
    pairs = parse_qsl(raw.decode("utf-8", errors="replace"), keep_blank_values=True)
    try:
        await state.gate.check_webhook(
            urls=webhook_urls(state.settings.public_url, str(request.url)), form=pairs,
            signature=request.headers.get(SIGNATURE_HEADER),
            signature_settings=request.headers.get(SIGNATURE_SETTINGS_HEADER), once=once,
        )
    except Rejected as exc:
        if exc.reason == "shared_state_unavailable":  # cannot tell a replay: refuse politely
            log.warning("turned away %s (busy message): %s", request.url.path, exc.detail)
            return Response(content=busy_twiml(), media_type="text/xml")
        log.warning("rejected %s (403): %s", request.url.path, exc)
        return Response(status_code=403, content="Forbidden", media_type="text/plain")
    return pairs


async def _read_body(request: Request, limit: int) -> bytes | None:
    """The request body, or None once it exceeds `limit` bytes (not read further)."""
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            return None
    return bytes(body)


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


app = create_app()
