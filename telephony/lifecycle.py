"""The app's life: what it starts, keeps and stops, and how it drains.

Start-up reads and checks the settings, opens the stores, the Live client and the
shared state, and announces this instance; shutdown drains the calls first (on
SIGTERM: stop taking calls; with Redis and another instance taking calls, move
each call there (moves.py); else let them finish, then end the rest politely),
so no caller is cut off by a restart.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import gc
import logging
import os
import secrets
import signal
import socket
import time
from collections import deque
from typing import Any

from fastapi import FastAPI

from . import __version__, metrics
from .audio_recording import AudioRecordings
from .errors import SettingsError
from .live import make_client
from .moves import close_orphans
from .observe import Watch
from .outbound import OutboundRefs
from .records import CallRecorder, open_records
from .records_schema import RecordsError
from .security import Gatekeeper, check_deployment, install_log_redaction
from .settings import Settings
from .shared_state import SharedStateUnavailable, open_shared_state
from .agents import AgentBook, load_agents, warn_about_demo
from .tool_registry import ToolRegistry
from .twilio_rest import close_rest_client, make_rest_client

log = logging.getLogger(__name__)

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


def check_workers(workers: int, settings, label: str | None = None) -> None:
    """Several processes must share what calls agree on (shared_state.py); without Redis
    each would keep its own replay memory, caller limits and /stream-ended answers."""
    label = label or f"--workers {workers}"
    if workers < 1:
        raise SettingsError(f"{label}: at least 1")
    if workers > 1 and not settings.redis_url:
        raise SettingsError(
            f"{label} needs REDIS_URL: without a shared store each process would keep its own "
            "replay memory, caller limits and /stream-ended answers (see \"Running more than one instance\")"
        )


def _int_env(name: str, default: int) -> int:
    raw = os.environ.get(name, "").strip()
    try:
        return int(raw) if raw else default
    except ValueError:
        raise SettingsError(f"{name}={raw!r} is not a whole number") from None


@contextlib.asynccontextmanager
async def serving(app: FastAPI, settings: Settings | None, registry: ToolRegistry | None,
                  tracing: Any | None, agents: AgentBook | None = None):
    """Everything the app holds while it serves, started in order and stopped in reverse."""
    s = settings or Settings.from_env()
    configure_logging(s.log_level)
    install_log_redaction(s)
    try:
        check_deployment(s)
        # Plain `uvicorn --workers N` (or a host's WEB_CONCURRENCY) skips `telephony serve`'s own check.
        workers = _int_env("WEB_CONCURRENCY", 1)
        check_workers(workers, s, label=f"WEB_CONCURRENCY={workers}")
    except SettingsError as exc:
        log.error("configuration error: %s", exc)
        raise
    try:
        # Who answers which number, with which tools (agents.py); `registry` replaces every
        # agent's business tools (tests, embedding).
        book = agents or load_agents(s, tools=registry)
        book.prepare(s)  # each tools module's start-up hook (the demo creates its orders database)
        warn_about_demo(book, s)
        app.state.client = make_client(s)  # on Vertex AI, loads the credentials: may refuse to start
        app.state.recorder = CallRecorder(open_records(s), s)  # call records (records.py)
    except (SettingsError, RecordsError) as exc:
        log.error("configuration error: %s", exc)
        raise
    app.state.settings = s
    app.state.agents = book
    app.state.rest = make_rest_client(s)  # None without REST credentials (twilio_rest.py)
    # What every process must agree on (shared_state.py): this process's memory, or Redis.
    shared = app.state.shared = open_shared_state(s.redis_url)
    app.state.instance_id = f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(3)}"
    app.state.outbound_refs = OutboundRefs(s, state=shared)  # what each outbound call is for (POST /outbound-call)
    app.state.active_calls = set()
    app.state.recent_calls = deque(maxlen=100)  # summaries of finished calls, newest last
    # A stream's slot lapses after the longest call any agent allows (0: an agent without a limit).
    limits = [a.max_call_s for a in book]
    app.state.gate = Gatekeeper(dataclasses.replace(s, max_call_s=0.0 if 0 in limits else max(limits)), shared)
    app.state.draining = False
    app.state.transfers = make_transfers(app.state)  # warm transfers (transfer.py)
    try:
        app.state.watch = make_watch(s, book, tracing)  # metrics, traces, call audio (observe.py)
    except SettingsError as exc:
        log.error("configuration error: %s", exc)
        raise
    retention = asyncio.create_task(recording_retention(app.state.watch.recordings), name="recording-retention")
    if s.redis_url:
        try:
            await shared.ping()
            log.info("shared state: Redis answers; calls are shared with every instance using it")
        except SharedStateUnavailable as exc:
            log.error("%s: new calls are refused until it answers", exc)
    heartbeat = asyncio.create_task(heartbeat_loop(app), name="instance-heartbeat")
    drain_on_sigterm(app)
    log.info("phone agent %s ready: model=%s", __version__, s.gemini_model)
    for agent in book:
        log.info("agent %s answers %s: voice=%s language=%s tools=%s", agent.name, agent.answers(), agent.voice,
                 agent.language or "auto", ", ".join(agent.tools.names()))
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
    await asyncio.gather(heartbeat, retention, return_exceptions=True)  # both cancelled above
    with contextlib.suppress(SharedStateUnavailable):  # else its heartbeat lapses by itself
        await shared.forget_instance(app.state.instance_id)
    with contextlib.suppress(Exception):
        await shared.aclose()
    await asyncio.to_thread(app.state.recorder.close)  # after the calls: their last records are written
    await close_rest_client(app.state.rest)  # after the calls: their hang-ups went through it


def make_watch(s: Settings, agents: AgentBook, tracing: Any | None) -> Watch:
    from .tracing import from_settings

    recordings = None
    if s.record_audio:
        recordings = AudioRecordings(s.recordings_dir, s.recording_retention_days)
        log.info("call audio is recorded to %s (kept %g days): callers must be told", s.recordings_dir,
                 s.recording_retention_days)
    return Watch(tracing=tracing or from_settings(s), recordings=recordings, tool_names=agents.tool_names(),
                 agent_names=frozenset(agents.names()))


async def recording_retention(recordings: AudioRecordings | None) -> None:
    """Delete expired call recordings at start-up, then once a day."""
    if recordings is None:
        return
    while True:
        await asyncio.to_thread(recordings.delete_expired)
        await asyncio.sleep(86400)


def check_storage(settings: Settings) -> None:
    """The agents load and the call records open and migrate (for `telephony serve` to fail
    in one line, before uvicorn).

    PostgreSQL (DATABASE_URL) is not connected to here: being unreachable does not
    stop the server (records.py), and the app's start-up migrates it.
    """
    load_agents(settings).prepare(settings)
    open_records(settings).check()


def why_busy(state: Any) -> str | None:
    """Why this instance takes no new stream now, or None."""
    if state.draining:
        return "draining"
    if len(state.active_calls) >= state.settings.max_concurrent_calls:
        return "at_capacity"
    return None


async def busy_for_webhook(state: Any) -> str | None:
    """Why no new call can be connected now, or None.

    A webhook only hands out a stream URL, which the load balancer may send to any
    instance: while this one drains, the call is still connected if another instance
    reported itself up and not draining (`heartbeat_loop`)."""
    busy = why_busy(state)
    if busy != "draining":
        return busy
    try:
        others = [i for i in await state.shared.instances() if i.instance_id != state.instance_id and not i.draining]
    except SharedStateUnavailable:
        return busy
    return None if others else busy


async def heartbeat_loop(app: FastAPI) -> None:
    """Tell the shared state this instance is up (and whether it drains), every few seconds."""
    state = app.state
    warned = False
    while True:
        try:
            await state.shared.heartbeat(state.instance_id, draining=state.draining,
                                         active_calls=len(state.active_calls), ttl_s=HEARTBEAT_TTL_S)
            await close_orphans(state.shared, state.recorder)
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
    deadline = time.monotonic() + timeout_s
    takers = await instances_taking_calls(state) if calls and state.settings.redis_url else []
    if takers:
        log.info("draining: moving %d active call(s) to the other instance(s) (%s); waiting up to %.0f s",
                 len(calls), ", ".join(takers), timeout_s)
        for bridge in list(calls):
            bridge.move(min(state.settings.move_wait_s, timeout_s / 2))
    else:
        log.info("draining: %d active call(s); waiting up to %.0f s for them to finish", len(calls), timeout_s)
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


async def instances_taking_calls(state: Any) -> list[str]:
    """The other instances alive and not draining (nothing moves when none, or when unknown)."""
    try:
        return [i.instance_id for i in await state.shared.instances()
                if i.instance_id != state.instance_id and not i.draining]
    except SharedStateUnavailable as exc:
        log.warning("draining: %s; calls cannot move and finish here", exc)
        return []


def drain_on_sigterm(app: FastAPI) -> None:
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


def make_transfers(state) -> "WarmTransfers | None":
    """Warm transfers need REST credentials, our number and PUBLIC_URL (Settings and the
    agents file check them); None when no agent has a warm target."""
    from .agents import NoAgent
    from .routes_twilio import stream_twiml
    from .transfer import Ticket, WarmTransfers

    s = state.settings
    if state.rest is None or not any(agent.warm_transfer_targets for agent in state.agents.agents):
        return None

    def return_twiml(ticket: Ticket) -> str:
        try:
            agent = state.agents.named(ticket.agent) if ticket.agent else None
        except NoAgent:
            agent = None
        return stream_twiml(state.gate, s.public_host or "", ticket.caller_sid, ticket.caller or "", ticket.called or "",
                            {"direction": ticket.direction}, agent=agent, leg=f"return-{ticket.id}")

    return WarmTransfers(s, state.shared, state.rest, state.recorder, return_twiml)
