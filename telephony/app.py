"""The FastAPI app: Twilio's webhooks and media stream, and the operators' API.

Run it with `telephony serve` or `uvicorn telephony.app:app`. Settings are
read and validated at start-up; a bad value stops the server with a message
naming the variable. The routes live by whom they serve: `routes_twilio`
(Twilio's HTTP requests), `routes_media` (the call's WebSocket), `routes_api`
(health, metrics, call records, outbound calls) and `dashboard`; what the app
holds while it runs is started and stopped in `lifecycle`.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI

from . import __version__, dashboard, routes_api, routes_media, routes_twilio
from .agents import AgentBook
from .lifecycle import serving
from .settings import Settings
from .tool_registry import ToolRegistry


def create_app(settings: Settings | None = None, registry: ToolRegistry | None = None, *,
               tracing: Any | None = None, agents: AgentBook | None = None) -> FastAPI:
    """The app. `tracing` (a `tracing.CallTracing`) replaces the one OTEL_EXPORTER_OTLP_ENDPOINT would make;
    `registry` replaces every agent's business tools; `agents` replaces the agents the settings name."""

    def lifespan(app: FastAPI):
        return serving(app, settings, registry, tracing, agents)

    app = FastAPI(title="Gemini Live phone agent", version=__version__, lifespan=lifespan)
    app.include_router(routes_twilio.router)
    app.include_router(routes_media.router)
    app.include_router(routes_api.router)
    dashboard.install(app)  # /dashboard (dashboard.py)
    return app


app = create_app()
