"""A server to watch: the real app on a loopback port with the calls API token set,
reaching the session's Live emulator, for the tests that watch calls (metrics, timings, traces, dashboard)."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
from pathlib import Path
from typing import Iterator

import httpx
from prometheus_client.parser import text_string_to_metric_families

from telephony.app import create_app
from telephony.settings import Settings
from telephony.testing.recordings import read_recording
from telephony.testing.server import ServerThread
from telephony.testing.simulator import CallSimulator, SimulatedCall
from telephony.testing.twilio_signing import readdress
from telephony.testing.virtual_clock import VirtualClockLoop, run_fast

FIXTURES = Path(__file__).resolve().parents[2] / "tests" / "fixtures"
API_TOKEN = "watch-the-line-token-0123"
_serial = itertools.count(0x14000)


@contextlib.contextmanager
def watched_server(emulator, folder: Path, tracing=None, virtual: bool = False, **env: str) -> Iterator[ServerThread]:
    """The app in development mode (nothing Twilio-signed), with CALLS_API_TOKEN and `env`.

    `virtual`: serve it in the emulator's own loop (a `VirtualClockLoop`), so that
    `place_call(..., loop=server.loop)` plays calls without waiting out their audio.
    """
    values = {k: v for k, v in os.environ.items() if k not in (
        "PUBLIC_URL", "TWILIO_AUTH_TOKEN", "TWILIO_ACCOUNT_SID", "REQUIRE_TWILIO_SIGNATURE", "REDIS_URL", "DATABASE_URL")}
    values.update(emulator.env())
    values.update({"GEMINI_API_KEY": "test-api-key-123", "ORDERS_DB_PATH": str(folder / "orders.db"),
                   "CALLS_DB_PATH": str(folder / "calls.db"), "CALLS_API_TOKEN": API_TOKEN,
                   "LIVE_CONNECT_TIMEOUT_SECONDS": "3", "TOOL_TIMEOUT_SECONDS": "2", **env})
    saved = dict(os.environ)
    os.environ.update(emulator.env())  # the SDK finds the emulator through its own variables
    try:
        app = create_app(Settings.from_env(values), tracing=tracing)
        with ServerThread(app, loop=emulator.loop if virtual else None) as server:
            yield server
    finally:
        os.environ.clear()
        os.environ.update(saved)


def new_call_sid() -> str:
    return f"CA{next(_serial):032x}"


def place_call(url: str, recording: str = "order_call.jsonl", *, call_sid: str | None = None,
               speed: float = 2.0, loop: VirtualClockLoop | None = None) -> tuple[str, SimulatedCall]:
    """A recorded call played at `url` under a fresh CallSid; returns (sid, what the caller got).
    With `loop` (a virtual-clock server's), the caller plays there, idle waits skipped."""
    sid = call_sid or new_call_sid()
    messages = readdress(read_recording(FIXTURES / recording), sid, "AC" + "0" * 32,
                         {"From": "+15551230101", "To": "+15559870000"})
    simulator = CallSimulator(url, messages, speed=speed)
    return sid, (run_fast(loop, simulator.run()) if loop is not None else asyncio.run(simulator.run()))


def authorized() -> dict[str, str]:
    return {"Authorization": f"Bearer {API_TOKEN}"}


def scrape(base_url: str, headers: dict[str, str] | None = None) -> dict[tuple[str, tuple], float]:
    """GET /metrics, as {(sample name, sorted labels): value}."""
    r = httpx.get(f"{base_url}/metrics", headers=authorized() if headers is None else headers, timeout=10)
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("text/plain")
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(r.text) for s in family.samples}


def value(samples: dict, name: str, **labels: str) -> float:
    """The sum of `name`'s samples carrying these labels (whatever their other labels)."""
    wanted = set(labels.items())
    return sum(v for (n, have), v in samples.items() if n == name and wanted <= set(have))
