"""Capacity limits, graceful drain on SIGTERM, and what follows a stream we closed."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal

import httpx
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from telephony.app import create_app
from telephony.lifecycle import drain
from telephony.settings import Settings
from telephony.testing.emulator import Say, Script
from telephony.testing.server import ServerThread

SID = "MZ" + "4" * 32


def start_msg(call_sid: str) -> str:
    return json.dumps({
        "event": "start", "sequenceNumber": "1", "streamSid": SID,
        "start": {"accountSid": "AC" + "3" * 32, "streamSid": SID, "callSid": call_sid, "tracks": ["inbound"],
                  "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1},
                  "customParameters": {"From": "+15551230101"}},
    })


@contextlib.asynccontextmanager
async def open_call(url: str, call_sid: str):
    """A caller who connects, starts the stream and stays on the line."""
    async with connect(url) as ws:
        await ws.send(json.dumps({"event": "connected", "protocol": "Call", "version": "1.0.0"}))
        await ws.send(start_msg(call_sid))
        yield ws


async def wait_closed(ws) -> int | None:
    with contextlib.suppress(ConnectionClosed):
        async with asyncio.timeout(20):
            async for _ in ws:
                pass
    return ws.close_code


@pytest.fixture
def small_server(server, emulator, tmp_path):
    """A server taking one call at a time (`server` puts the emulator in os.environ)."""
    emulator.script = Script(greeting=[Say(seconds=5.0)], replies=[])
    env = {**os.environ, "MAX_CONCURRENT_CALLS": "1", "ORDERS_DB_PATH": str(tmp_path / "o.db")}
    with ServerThread(create_app(Settings.from_env(env))) as srv:
        yield srv


def run_on_server(srv: ServerThread, coro, timeout: float = 30):
    return asyncio.run_coroutine_threadsafe(coro, srv.loop).result(timeout)


def test_at_capacity_new_calls_hear_busy_and_new_streams_are_refused(small_server):
    async def scenario():
        async with open_call(small_server.ws_url, "CA" + "1" * 32) as first:
            await first.recv()  # the first call is up and the agent is talking
            r = await asyncio.to_thread(httpx.post, f"{small_server.http_url}/incoming-call", data={"CallSid": "CA" + "2" * 32, "From": "+15550000002", "To": "+15559870000"})
            async with connect(small_server.ws_url) as second:
                code = await wait_closed(second)
            return r, code

    r, code = asyncio.run(scenario())
    assert "all of our lines are busy" in r.text and "<Hangup />" in r.text and "<Connect" not in r.text
    assert code == 1013
    assert httpx.get(f"{small_server.http_url}/healthz").json()["rejected"]["at_capacity"] == 2


def test_drain_stops_new_calls_and_ends_the_rest_politely_with_their_summaries(small_server):
    app = small_server.app
    call_sid = "CA" + "5" * 32

    async def scenario():
        async with open_call(small_server.ws_url, call_sid) as ws:
            await ws.recv()
            drained = asyncio.wrap_future(asyncio.run_coroutine_threadsafe(drain(app, timeout_s=0.5), small_server.loop))
            while not app.state.draining:
                await asyncio.sleep(0.01)
            health = await asyncio.to_thread(httpx.get, f"{small_server.http_url}/healthz")
            busy = await asyncio.to_thread(httpx.post, f"{small_server.http_url}/incoming-call", data={"CallSid": "CA" + "6" * 32})
            code = await wait_closed(ws)
            await drained
            return health, busy, code

    health, busy, code = asyncio.run(scenario())
    assert health.status_code == 503 and health.json()["status"] == "draining"
    assert "busy" in busy.text
    assert code == 1000  # closed by us, onto the apology TwiML
    assert small_server.finished_call(call_sid)["end_reason"] == "server shutting down"
    after = httpx.post(f"{small_server.http_url}/stream-ended", data={"CallSid": call_sid})
    assert "<Say>" in after.text and "<Hangup />" in after.text


def test_stream_ended_answers_hangup_after_a_goodbye_and_an_apology_after_a_failure(server):
    state = server.app.state
    asyncio.run_coroutine_threadsafe(state.shared.put_after_stream("CA" + "7" * 32, "hangup", 600), server.loop).result(5)
    r = httpx.post(f"{server.http_url}/stream-ended", data={"CallSid": "CA" + "7" * 32})
    assert r.text.endswith("<Response><Hangup /></Response>")
    unknown = httpx.post(f"{server.http_url}/stream-ended", data={"CallSid": "CA" + "8" * 32})
    assert "<Say>" in unknown.text  # anything we do not know ended badly: apologise


def test_the_webhook_twiml_asks_stream_ended_what_comes_next(server):
    r = httpx.post(f"{server.http_url}/incoming-call", data={"CallSid": "CA" + "9" * 32, "From": "+15551230101", "To": "+1555"})
    assert f'<Connect action="https://127.0.0.1:{server.port}/stream-ended" method="POST">' in r.text


def test_sigterm_drains_active_calls_before_the_process_exits(emulator, serve_process):
    emulator.script = Script(greeting=[Say(seconds=8.0)], replies=[])
    proc, port = serve_process(capture=True, DRAIN_TIMEOUT_SECONDS="1", LOG_LEVEL="INFO")
    seen: list[str] = []

    def read_until_draining() -> None:
        for line in proc.stdout:
            seen.append(line)
            if "draining:" in line:
                return

    try:
        async def scenario():
            async with open_call(f"ws://127.0.0.1:{port}/media-stream", "CA" + "a" * 32) as ws:
                await ws.recv()  # mid-greeting
                proc.send_signal(signal.SIGTERM)
                await asyncio.to_thread(read_until_draining)  # the drain has begun
                health = await asyncio.to_thread(httpx.get, f"http://127.0.0.1:{port}/healthz")
                return health.status_code, await wait_closed(ws)

        status, code = asyncio.run(scenario())
    finally:
        rest, _ = proc.communicate(timeout=30)
        out = "".join(seen) + rest
    assert status == 503 and code == 1000  # the call was ended by us, not cut with 1012
    assert proc.returncode in (0, -signal.SIGTERM)  # uvicorn re-raises the signal it handled
    assert "draining: 1 active call" in out and "ending 1 call(s) politely" in out
    assert "call summary" in out and "server shutting down" in out
