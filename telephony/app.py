"""The FastAPI app: Twilio's voice webhook, the media-stream WebSocket, and a health check.

Run it with `telephony serve` or `uvicorn telephony.app:app`. Settings are
read and validated at start-up; a bad value stops the server with a message
naming the variable.
"""

from __future__ import annotations

import contextlib
import logging
from collections import deque
from typing import Any
from urllib.parse import parse_qsl

from fastapi import FastAPI, Request, WebSocket
from fastapi.responses import JSONResponse, Response

from . import __version__
from .bridge import CallBridge
from .live import make_client
from .settings import Settings
from .tools import ToolRegistry
from .twiml import connect_stream_twiml

log = logging.getLogger("telephony.app")


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


def _rest_client(settings: Settings) -> Any | None:
    if not settings.has_twilio_rest:
        return None
    from twilio.http.async_http_client import AsyncTwilioHttpClient
    from twilio.rest import Client

    return Client(settings.twilio_account_sid, settings.twilio_auth_token, http_client=AsyncTwilioHttpClient())


def create_app(settings: Settings | None = None, registry: ToolRegistry | None = None) -> FastAPI:
    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        s = settings or Settings.from_env()
        configure_logging(s.log_level)
        reg = registry or _default_registry()
        reg.default_timeout = s.tool_timeout_s
        from tools.orders import ensure_orders_db

        ensure_orders_db(s.orders_db_path)
        app.state.settings = s
        app.state.registry = reg
        app.state.client = make_client(s)
        app.state.rest = _rest_client(s)
        app.state.active_calls = set()
        app.state.recent_calls = deque(maxlen=100)  # summaries of finished calls, newest last
        log.info("phone agent %s ready: model=%s voice=%s tools=%s", __version__, s.gemini_model, s.gemini_voice, reg.names())
        if not s.public_url:
            log.warning("PUBLIC_URL is not set: stream URLs will use the Host header of each webhook request")
        if not s.has_twilio_rest:
            log.warning("TWILIO_ACCOUNT_SID/TWILIO_AUTH_TOKEN not set: failed calls end by closing the stream onto the TwiML apology")
        yield
        for bridge in list(app.state.active_calls):
            log.info("server stopping: call %s still active", bridge.call.call_sid)

    app = FastAPI(title="Gemini Live phone agent", version=__version__, lifespan=lifespan)

    @app.get("/healthz")
    async def healthz(request: Request) -> JSONResponse:
        return JSONResponse({"status": "ok", "active_calls": len(request.app.state.active_calls)})

    @app.post("/incoming-call")
    async def incoming_call(request: Request) -> Response:
        """Twilio's voice webhook: answer with TwiML that connects the call to our stream."""
        s: Settings = request.app.state.settings
        body = (await request.body()).decode("utf-8", errors="replace")
        form = dict(parse_qsl(body, keep_blank_values=True))
        host = s.public_host or request.headers.get("host", "")
        parameters = {k: form.get(k, "") for k in ("CallSid", "From", "To")}
        twiml = connect_stream_twiml(f"wss://{host}/media-stream", parameters)
        log.info("incoming call %s: connecting to wss://%s/media-stream", parameters["CallSid"] or "(no CallSid)", host)
        return Response(content=twiml, media_type="text/xml")

    @app.websocket("/media-stream")
    async def media_stream(websocket: WebSocket) -> None:
        state = websocket.app.state
        await websocket.accept()
        bridge = CallBridge(
            websocket, settings=state.settings, client=state.client, registry=state.registry, rest=state.rest
        )
        state.active_calls.add(bridge)
        try:
            state.recent_calls.append(await bridge.run())
        finally:
            state.active_calls.discard(bridge)

    return app


app = create_app()
