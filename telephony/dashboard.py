"""The call dashboard at /dashboard: recent calls, and each call's transcript, timeline and costs.

Why plain files and no framework: the dashboard is read by whoever runs the
line, often on a private network or offline, and it shows personal data. So
it is static HTML, CSS and vanilla JavaScript shipped in the package
(`dashboard_static/`), loading nothing from anywhere else (a Content Security
Policy of 'self' makes sure of it), and the page reads the same records as the
calls API through two JSON routes of its own.

Why a cookie: a browser cannot send a Bearer header on a page load or an
<audio> request. The login form takes the CALLS_API_TOKEN once and answers with
a session cookie (HttpOnly: scripts cannot read it; SameSite=Strict: no other
site can make the browser use it) whose value is derived from the token, never
the token itself, so changing the token logs everyone out. While
CALLS_API_TOKEN is unset every route here answers 404, like the calls API.
Numbers are shown as stored: masked (`+1555***0101`).
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import logging
import time
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl

from fastapi import FastAPI, Request
from fastapi.responses import FileResponse, JSONResponse, RedirectResponse, Response

from .metrics import OUTCOMES, call_outcome
from .records_query import get_call, list_calls
from .records_schema import RecordsUnavailable

__all__ = ["install", "COOKIE"]

log = logging.getLogger(__name__)

STATIC = Path(__file__).parent / "dashboard_static"
COOKIE = "telephony_dashboard"
SESSION_S = 12 * 3600
#: The files the dashboard is made of; nothing else under STATIC is served.
FILES = {"dashboard.css": "text/css", "calls.js": "text/javascript", "call.js": "text/javascript"}
HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; frame-ancestors 'none'; form-action 'self'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}
MAX_LISTED = 1000


def session_value(token: str) -> str:
    return hmac.new(token.encode(), b"telephony dashboard session v1", hashlib.sha256).hexdigest()


def _token(request: Request) -> str | None:
    return request.app.state.settings.calls_api_token


def _signed_in(request: Request) -> bool:
    token = _token(request)
    given = request.cookies.get(COOKIE, "")
    return bool(token) and hmac.compare_digest(given.encode(), session_value(token).encode())


def _not_found() -> Response:
    return JSONResponse({"detail": "Not Found"}, status_code=404)


def _page(name: str, status_code: int = 200, error: str = "") -> Response:
    html = (STATIC / name).read_text(encoding="utf-8")
    if error:
        html = html.replace("<!--error-->", f'<p class="error" id="login-error">{error}</p>')
    return Response(html, status_code=status_code, media_type="text/html", headers=HEADERS)


def _refusal(request: Request) -> Response | None:
    """404 while the calls API is off; 401 without a session."""
    if not _token(request):
        return _not_found()
    if not _signed_in(request):
        return JSONResponse({"detail": "sign in at /dashboard"}, status_code=401, headers=HEADERS)
    return None


def filter_calls(calls: list[dict[str, Any]], outcome: str = "", number: str = "", date: str = "",
                 agent: str = "") -> list[dict[str, Any]]:
    """The calls matching every filter given: outcome category, a fragment of either (masked)
    number, the local day they started (YYYY-MM-DD), and the agent that answered."""
    fragment = "".join(ch for ch in number if ch.isdigit() or ch == "+")
    out = []
    for call in calls:
        call = {**call, "outcome": call_outcome(call.get("end_reason")) if call.get("ended_at") else "in_progress"}
        if outcome and call["outcome"] != outcome:
            continue
        if agent and call.get("agent") != agent:
            continue
        if fragment and not any(fragment in (call.get(k) or "") for k in ("caller_masked", "called_masked")):
            continue
        if date and (call.get("started_at") is None
                     or time.strftime("%Y-%m-%d", time.localtime(call["started_at"])) != date):
            continue
        out.append(call)
    return out


def install(app: FastAPI) -> None:
    """Add the dashboard's routes to the app."""

    @app.get("/dashboard")
    async def dashboard(request: Request) -> Response:
        if not _token(request):
            return _not_found()
        return _page("calls.html" if _signed_in(request) else "login.html")

    @app.post("/dashboard/login")
    async def login(request: Request) -> Response:
        token = _token(request)
        if not token:
            return _not_found()
        body = await request.body()
        given = dict(parse_qsl(body[:4096].decode("utf-8", errors="replace"))).get("token", "")
        if not hmac.compare_digest(given.strip().encode(), token.encode()):
            request.app.state.gate.rejected["dashboard_unauthorized"] += 1
            log.warning("refused a dashboard sign-in (401): wrong token")
            return _page("login.html", 401, "That is not the calls API token.")
        response = RedirectResponse("/dashboard", status_code=303)
        secure = request.url.scheme == "https" or bool(request.app.state.settings.public_url)
        response.set_cookie(COOKIE, session_value(token), max_age=SESSION_S, path="/dashboard", httponly=True,
                            samesite="strict", secure=secure)
        return response

    @app.post("/dashboard/logout")
    async def logout(request: Request) -> Response:
        if not _token(request):
            return _not_found()
        response = RedirectResponse("/dashboard", status_code=303)
        response.delete_cookie(COOKIE, path="/dashboard", httponly=True, samesite="strict")
        return response

    @app.get("/dashboard/static/{name}")
    async def static(request: Request, name: str) -> Response:
        if not _token(request) or name not in FILES:
            return _not_found()
        return FileResponse(STATIC / name, media_type=FILES[name], headers=HEADERS)

    @app.get("/dashboard/calls/{call_sid}")
    async def call_page(request: Request, call_sid: str) -> Response:
        if not _token(request):
            return _not_found()
        if not _signed_in(request):
            return RedirectResponse("/dashboard", status_code=303)
        return _page("call.html")

    @app.get("/dashboard/api/calls")
    async def api_calls(request: Request) -> Response:
        refused = _refusal(request)
        if refused is not None:
            return refused
        q = request.query_params
        outcome = q.get("outcome", "")
        if outcome and outcome not in OUTCOMES + ("in_progress",):
            return JSONResponse({"detail": f"outcome must be one of {', '.join(OUTCOMES)}, in_progress"}, status_code=400)
        try:
            calls = await asyncio.to_thread(list_calls, request.app.state.recorder.store, MAX_LISTED)
        except RecordsUnavailable:
            return JSONResponse({"detail": "the call records database cannot be reached"}, status_code=503)
        found = filter_calls(calls, outcome, q.get("number", ""), q.get("date", ""), q.get("agent", ""))
        agents = request.app.state.agents.names()
        return JSONResponse({"calls": found[:200], "outcomes": list(OUTCOMES), "agents": agents}, headers=HEADERS)

    @app.get("/dashboard/api/calls/{call_sid}")
    async def api_call(request: Request, call_sid: str) -> Response:
        refused = _refusal(request)
        if refused is not None:
            return refused
        try:
            record = await asyncio.to_thread(get_call, request.app.state.recorder.store, call_sid)
        except RecordsUnavailable:
            return JSONResponse({"detail": "the call records database cannot be reached"}, status_code=503)
        if record is None:
            return JSONResponse({"detail": f"no call {call_sid}"}, status_code=404)
        record["outcome"] = call_outcome(record.get("end_reason")) if record.get("ended_at") else "in_progress"
        recordings = request.app.state.watch.recordings
        path = recordings.path_for(call_sid) if recordings is not None else None
        record["recording"] = f"/dashboard/api/calls/{call_sid}/audio" if path is not None and path.is_file() else None
        return Response(json.dumps(record), media_type="application/json", headers=HEADERS)

    @app.get("/dashboard/api/calls/{call_sid}/audio")
    async def api_call_audio(request: Request, call_sid: str) -> Response:
        refused = _refusal(request)
        if refused is not None:
            return refused
        return recording_response(request, call_sid)


def recording_response(request: Request, call_sid: str) -> Response:
    """The call's stereo WAV, or 404 (not recorded, deleted, RECORD_AUDIO off)."""
    recordings = request.app.state.watch.recordings
    path = recordings.path_for(call_sid) if recordings is not None else None
    if path is None or not path.is_file():
        return JSONResponse({"detail": f"no recording of call {call_sid}"}, status_code=404)
    return FileResponse(path, media_type="audio/wav", headers={"Cache-Control": "no-store"})
