"""Shared fixtures: Live emulators, real servers and phones for the whole session.

The real google-genai SDK inside the server reaches the emulator through its
own environment variables (GOOGLE_GEMINI_BASE_URL + SSL_CERT_FILE), exactly as
it would reach Google; calls are played at the server over a loopback socket.

- `emulator`, `server`: the session's Live emulator and the real app, both served in
  the emulator's thread by one `VirtualClockLoop` (telephony/testing/virtual_clock.py),
  which keeps real time unless a call is being fast-forwarded.
- `phone`: whole calls on the virtual clock: `phone.call("order_call.jsonl", script)`
  plays the recording at `server` (`phone.server`) inside that loop, skipping the idle
  waits. The default for a test of what happens in a call.
- `realtime_phone`: the same call played in real time from the test's thread; for what
  only wall-clock time shows (latency, another thread acting mid-call) and a few
  end-to-end calls kept real-time on purpose. A test that plays its own
  `CallSimulator` with `asyncio.run` is real-time too.
- `postgres`: one PostgreSQL server for the session; `serve_process`: `telephony serve`.

`scripts/test` runs the suite on several pytest-xdist workers, each with its own
session fixtures; the hooks below order the work so the longest units start first.
"""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path

import pytest

from telephony.testing.emulator import LiveEmulator
from telephony.testing.server import ServerThread
from telephony.testing.simulator import CallSimulator, SimulatedCall
from telephony.testing.virtual_clock import VirtualClockLoop, run_fast

FIXTURES = Path(__file__).parent / "fixtures"


SCOPE_SECONDS = "telephony/scope-seconds"

#: Modules whose tests each start a deployment of their own (function-scoped fixtures, no
#: order between them): under pytest-xdist each test is a unit of its own, so their long
#: multi-process tests run side by side instead of one after another on one worker.
#: (tests/test_deploy_proxy.py stays one unit: its proxy timings failed with company.)
EACH_TEST_APART = {"tests/test_moves.py", "tests/test_scenarios.py"}
#: Each unit's seconds in a reference run of the whole suite, for a machine with no run of
#: its own in pytest's cache (a fresh clone, CI): without them the long multi-process units
#: would start in collection order, some of them last. Refresh after adding slow tests:
#: `scripts/test`, then copy `.pytest_cache/v/telephony/scope-seconds` here.
REFERENCE_SECONDS = Path(__file__).parent / "unit_seconds.json"


def _unit(nodeid: str) -> str:
    """What one xdist worker runs together: a class, or a module's functions (so their
    module- and class-scoped fixtures start once), or one test of `EACH_TEST_APART`."""
    base = nodeid.rsplit("@", 1)[0] if nodeid.rfind("@") > nodeid.rfind("]") else nodeid
    if base.split("::", 1)[0] in EACH_TEST_APART:
        return base
    return base.rsplit("::", 1)[0]


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config, items):
    """Under pytest-xdist (`--dist loadgroup`), group the tests into units and hand out the
    longest units first (as the last run timed them).

    Most of the suite waits on audio played in real time or on server processes, so
    its workers outnumber the cores; what decides the wall time is a long unit started
    last. Serial runs keep the written order.
    """
    if not hasattr(config, "workerinput"):
        return
    seconds = json.loads(REFERENCE_SECONDS.read_text()) if REFERENCE_SECONDS.exists() else {}
    if getattr(config, "cache", None) is not None:
        seconds.update(config.cache.get(SCOPE_SECONDS, {}))
    first_seen: dict[str, int] = {}
    for i, item in enumerate(items):
        unit = _unit(item.nodeid)
        first_seen.setdefault(unit, i)
        if unit != item.nodeid:
            item.add_marker(pytest.mark.xdist_group(unit))
    unknown = float("inf")  # a unit not timed yet may be long: it starts with the longest
    items.sort(key=lambda item: (-seconds.get(_unit(item.nodeid), unknown), first_seen[_unit(item.nodeid)]))


class UnitTimes:
    """Adds up each unit's time (setup, call, teardown) where the reports arrive (the
    xdist controller, or a serial run) and keeps it in pytest's cache for the next run."""

    def __init__(self, config):
        self.config = config
        self.seconds: dict[str, float] = {}

    def pytest_runtest_logreport(self, report):
        unit = _unit(report.nodeid)
        self.seconds[unit] = self.seconds.get(unit, 0.0) + report.duration

    def pytest_sessionfinish(self, session):
        if self.seconds and not hasattr(self.config, "workerinput"):
            kept = self.config.cache.get(SCOPE_SECONDS, {})
            kept.update({unit: round(t, 2) for unit, t in self.seconds.items()})
            self.config.cache.set(SCOPE_SECONDS, kept)


def pytest_configure(config):
    if getattr(config, "cache", None) is not None:
        config.pluginmanager.register(UnitTimes(config), "telephony-unit-times")


def pytest_sessionstart(session):
    """Stop before any test when the machine lacks a server the suite starts: one line,
    naming the command that installs it, instead of a failure minutes in."""
    from telephony.testing.preflight import missing, report

    if hasattr(session.config, "workerinput"):
        return  # the controller checked before starting the workers
    lacking = missing()
    if lacking:
        pytest.exit(report(lacking), returncode=pytest.ExitCode.USAGE_ERROR)


@pytest.fixture(autouse=True)
def _telephony_log_level():
    """An app started in this process sets the `telephony` logger to its LOG_LEVEL (as it
    must in production); put it back, so a later test's caplog sees what it expects."""
    import logging

    logger = logging.getLogger("telephony")
    level = logger.level
    yield
    logger.setLevel(level)


@pytest.fixture(scope="session")
def emulator():
    """The session's Live emulator. Its loop keeps real time except while `phone`
    plays a call there (a `VirtualClockLoop`, see `phone`)."""
    with LiveEmulator(loop_factory=VirtualClockLoop) as emu:
        yield emu


DEVELOPMENT_ENV_CLEARED = ("GOOGLE_GENAI_USE_VERTEXAI", "GOOGLE_GENAI_USE_ENTERPRISE", "TWILIO_ACCOUNT_SID",
                           "TWILIO_AUTH_TOKEN", "PUBLIC_URL", "REQUIRE_TWILIO_SIGNATURE", "STREAM_TOKEN_SECRET")


@pytest.fixture(scope="session")
def server(emulator, tmp_path_factory):
    """The real app, served in the emulator's own loop and reaching it: in real time,
    except while `phone` plays a call on the virtual clock.

    The environment keeps the emulator's variables for the whole session (tests
    that build an app from the environment reach the same emulator).
    """
    saved = dict(os.environ)
    os.environ.update(emulator.env())
    for name in DEVELOPMENT_ENV_CLEARED:
        os.environ.pop(name, None)
    os.environ["ORDERS_DB_PATH"] = str(tmp_path_factory.mktemp("db") / "orders.db")
    os.environ["CALLS_DB_PATH"] = str(tmp_path_factory.mktemp("calls") / "calls.db")
    os.environ["LIVE_CONNECT_TIMEOUT_SECONDS"] = "2"
    os.environ["TOOL_TIMEOUT_SECONDS"] = "2"
    try:
        from telephony.app import create_app
        from telephony.settings import Settings

        app = create_app(Settings.from_env())
        with ServerThread(app, loop=emulator.loop) as srv:
            yield srv
    finally:
        os.environ.clear()
        os.environ.update(saved)


@pytest.fixture(scope="module")
def standin():
    """Twilio's REST API and callbacks as the module's tests see them (telephony.testing.twilio_standin),
    with our number, +15559870000, in its account."""
    from telephony.testing import TwilioStandIn

    with TwilioStandIn() as st:
        st.add_number("+15559870000")
        yield st


@pytest.fixture(scope="module")
def redis():
    """A redis-server of the module's own: its tests may stop and start it, and instances
    register in it by name."""
    from telephony.testing.redis_server import RedisServer

    with RedisServer() as server:
        yield server


@pytest.fixture(scope="session")
def postgres():
    """One PostgreSQL server for the session (one initdb); tests make databases of their own on it."""
    from telephony.testing.postgres_server import PostgresServer

    with PostgresServer() as server:
        yield server


class Phone:
    """Places simulated calls at a server with a chosen emulator script.

    With `loop` (the `phone` fixture): the emulator, the server and the
    simulated caller share one `VirtualClockLoop`, so a 13 s call takes the time
    its messages take to process, not 13 s: the same sockets, the same messages in
    the same order, but idle waits skipped. Without (the `realtime_phone` fixture):
    the caller plays in real time from the test's thread.
    """

    def __init__(self, server: ServerThread, emulator: LiveEmulator, loop: VirtualClockLoop | None = None):
        self.server = server
        self.emulator = emulator
        self.loop = loop
        self.last_session = None

    def call(self, recording: str, script=None, speed: float = 1.0) -> SimulatedCall:
        """Play `recording` (tests/fixtures/...) with the emulator following `script`.
        `speed` paces a real-time caller; on the virtual clock it changes nothing that takes time."""
        if script is not None:
            self.emulator.script = script
        before = len(self.emulator.sessions)
        simulator = CallSimulator(self.server.ws_url, FIXTURES / recording, speed=speed)
        if self.loop is not None:
            result = run_fast(self.loop, simulator.run())
        else:
            result = asyncio.run(simulator.run())
        self.last_session = self.emulator.sessions[before] if len(self.emulator.sessions) > before else None
        return result


@pytest.fixture(scope="session")
def phone(server, emulator) -> Phone:
    """Calls on the virtual clock, at the session's `server` and `emulator` (one loop)."""
    return Phone(server, emulator, emulator.loop)


@pytest.fixture(scope="session")
def realtime_phone(server, emulator) -> Phone:
    """Calls played in real time at the session's `server` and `emulator`."""
    return Phone(server, emulator)


@pytest.fixture
def serve_process(emulator, tmp_path):
    """Start `telephony serve` as a real process (development mode, reaching the emulator);
    returns (process, port). Killed at the end of the test if still running."""
    import contextlib
    import socket
    import subprocess
    import sys
    import time

    import httpx

    started: list[subprocess.Popen] = []

    def start(capture: bool = False, **env_overrides: str) -> tuple[subprocess.Popen, int]:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        env = {**os.environ, **emulator.env(), "ORDERS_DB_PATH": str(tmp_path / "orders.db"),
               "CALLS_DB_PATH": str(tmp_path / "calls.db"), **env_overrides}
        for name in ("PUBLIC_URL", "TWILIO_AUTH_TOKEN", "TWILIO_ACCOUNT_SID", "REQUIRE_TWILIO_SIGNATURE", "CALLS_API_TOKEN"):
            env.pop(name, None)
        out = subprocess.PIPE if capture else subprocess.DEVNULL
        proc = subprocess.Popen(
            [sys.executable, "-m", "telephony.cli", "serve", "--host", "127.0.0.1", "--port", str(port)],
            env=env, cwd=Path(__file__).parent.parent, stdout=out, stderr=subprocess.STDOUT if capture else out,
            text=True,
        )
        started.append(proc)
        deadline = time.monotonic() + 20
        while True:
            with contextlib.suppress(httpx.HTTPError):
                r = httpx.get(f"http://127.0.0.1:{port}/healthz")
                # Ours, not another worker's server that took the port between the pick and the bind.
                if r.status_code == 200 and f":{proc.pid}:" in r.json().get("instance", ""):
                    return proc, port
            assert proc.poll() is None and time.monotonic() < deadline, "server did not start"
            time.sleep(0.1)

    yield start
    for proc in started:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
