"""Two server instances behind a load balancer with no session affinity, sharing Redis.

Each test is what a caller or Twilio would meet when a call's webhook, its stream
and Twilio's /stream-ended land on different instances: the instances must
behave as one server. Both are real `telephony serve` processes reaching the
Live emulator; Redis is a real redis-server and the call records' database a
real PostgreSQL (the session's; the test that stops it starts it again).
"""

from __future__ import annotations

import asyncio
import os
import threading
import time

import httpx
import pytest

from telephony.testing.emulator import CallTool, Reply, Say, Script
from telephony.testing.identities import new_call_sid, new_caller
from telephony.testing.proxy import HaproxyProxy
from telephony.testing.recordings import read_recording
from telephony.testing.server import ServerProcess
from telephony.testing.simulator import CallSimulator, SimulatedCall
from telephony.testing.twilio_signing import readdress, sign, stream_parameters, webhook_form

FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures")
AUTH_TOKEN = "0123456789abcdef0123456789abcdef"
PUBLIC = "https://agent.example.test"
STREAM_URL = "wss://agent.example.test/media-stream"
ACCOUNT = "AC" + "4" * 32
OUR_NUMBER = "+15559870000"
API_TOKEN = "calls-api-token-for-tests"


@pytest.fixture(scope="module")
def instances(emulator, redis, postgres, tmp_path_factory):
    """Instances "a" and "b": the same deployment (auth token, public URL, Redis)."""
    folder = tmp_path_factory.mktemp("instances")
    base = {k: v for k, v in os.environ.items()
            if k not in ("PUBLIC_URL", "TWILIO_ACCOUNT_SID", "REQUIRE_TWILIO_SIGNATURE", "STREAM_TOKEN_SECRET")}
    base.update(emulator.env())
    base.update({"GEMINI_API_KEY": "test-api-key-123", "TWILIO_AUTH_TOKEN": AUTH_TOKEN, "PUBLIC_URL": PUBLIC,
                 "REDIS_URL": redis.url, "DATABASE_URL": postgres.url, "CALLS_API_TOKEN": API_TOKEN,
                 "STREAM_TOKEN_TTL_SECONDS": "300", "LOG_LEVEL": "INFO",
                 "LIVE_CONNECT_TIMEOUT_SECONDS": "3", "ORDERS_DB_PATH": str(folder / "orders.db")})
    servers = {}
    try:
        for name in ("a", "b"):
            env = {**base, "CALLS_DB_PATH": str(folder / f"calls-{name}.db")}
            servers[name] = ServerProcess(env, str(folder / f"{name}.log"))
        for server in servers.values():
            server.wait_healthy()
        yield servers
    finally:
        for server in servers.values():
            server.stop()


@pytest.fixture(scope="module")
def proxy(instances):
    """deploy/haproxy.cfg in front of both instances: round robin, no session affinity."""
    with HaproxyProxy({f"agent-{name}": (s.host, s.port) for name, s in instances.items()}) as server:
        yield server


def answer(server: ServerProcess, call_sid: str, caller: str) -> httpx.Response:
    """Twilio's voice webhook for a new call, signed, at this instance."""
    form = webhook_form(call_sid, caller, OUR_NUMBER, ACCOUNT)
    headers = {"X-Twilio-Signature": sign(f"{PUBLIC}/incoming-call", form, AUTH_TOKEN)}
    return httpx.post(f"{server.http_url}/incoming-call", data=form, headers=headers, timeout=10)


def stream(server: ServerProcess, call_sid: str, parameters: dict[str, str], recording: str = "greeting_only.jsonl",
           speed: float = 4.0) -> SimulatedCall:
    """Twilio's media stream for the call, at this instance."""
    messages = readdress(read_recording(os.path.join(FIXTURES, recording)), call_sid, ACCOUNT, parameters)
    headers = {"X-Twilio-Signature": sign(STREAM_URL, None, AUTH_TOKEN)}
    return asyncio.run(CallSimulator(server.ws_url, messages, headers=headers, speed=speed, linger=5).run())


def calls_listed(server: ServerProcess) -> set[str]:
    r = httpx.get(f"{server.http_url}/calls?limit=1000", headers={"Authorization": f"Bearer {API_TOKEN}"}, timeout=10)
    assert r.status_code == 200, r.text
    return {c["call_sid"] for c in r.json()["calls"]}


def eventually(condition, timeout: float = 15.0) -> bool:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)
    return True


def a_call_in_progress(server: ServerProcess, emulator, greeting_s: float):
    """A call playing in the background, its greeting under way:
    (CallSid, its thread, {"call": the SimulatedCall once it has ended})."""
    emulator.script = Script(greeting=[Say(seconds=greeting_s)], replies=[])
    call_sid = new_call_sid()
    parameters = stream_parameters(answer(server, call_sid, new_caller()).text)
    before = len(emulator.sessions)
    result: dict[str, SimulatedCall] = {}
    talking = threading.Thread(target=lambda: result.setdefault("call", stream(server, call_sid, parameters, speed=1.0)))
    talking.start()
    assert eventually(lambda: len(emulator.sessions) > before and "turn_start" in emulator.sessions[before].kinds())
    return call_sid, talking, result


def rejected(server: ServerProcess) -> dict[str, int]:
    return httpx.get(f"{server.http_url}/healthz", timeout=5).json()["rejected"]


def test_the_proxy_spreads_requests_over_both_instances_and_a_whole_call_goes_through_it(proxy, instances, emulator):
    seen = {httpx.get(f"{proxy.http_url}/healthz", timeout=5).json()["instance"] for _ in range(6)}
    assert len(seen) == 2, "no session affinity: both instances answer"
    emulator.script = Script(greeting=[Say(seconds=0.4)], replies=[Reply(steps=[
        Say(text="Goodbye!", seconds=0.6), CallTool("end_call", {"reason": "caller is done"})])])
    call_sid = new_call_sid()
    parameters = stream_parameters(answer(proxy, call_sid, new_caller()).text)
    call = stream(proxy, call_sid, parameters, recording="order_call.jsonl")
    assert call.agent_audio and call.close_code == 1000
    form = {"CallSid": call_sid, "AccountSid": ACCOUNT}
    headers = {"X-Twilio-Signature": sign(f"{PUBLIC}/stream-ended", form, AUTH_TOKEN)}
    r = httpx.post(f"{proxy.http_url}/stream-ended", data=form, headers=headers, timeout=10)
    assert r.text.endswith("<Response><Hangup /></Response>")


def test_a_stream_token_used_at_one_instance_cannot_be_replayed_at_the_other(instances, emulator):
    a, b = instances["a"], instances["b"]
    emulator.script = Script(greeting=[Say(seconds=0.3)], replies=[])
    call_sid = new_call_sid()
    parameters = stream_parameters(answer(a, call_sid, new_caller()).text)
    first = stream(b, call_sid, parameters)  # the load balancer sent the stream elsewhere: fine
    assert first.agent_audio, "the call's own stream plays"
    before = rejected(a).get("stream_replayed_token", 0)
    replay = stream(a, call_sid, parameters)
    assert replay.close_code == 1008 and not replay.agent_audio
    assert rejected(a)["stream_replayed_token"] == before + 1


def test_a_caller_with_a_call_on_each_instance_does_not_get_a_third(instances):
    a, b = instances["a"], instances["b"]
    caller = new_caller()
    assert "<Stream" in answer(a, new_call_sid(), caller).text
    assert "<Stream" in answer(b, new_call_sid(), caller).text
    third = answer(a, new_call_sid(), caller)
    assert "<Stream" not in third.text and "<Say" in third.text  # the over-limit message
    assert "<Stream" in answer(b, new_call_sid(), new_caller()).text  # other callers are not affected


def test_a_webhook_replayed_at_the_other_instance_is_refused(instances):
    a, b = instances["a"], instances["b"]
    call_sid, caller = new_call_sid(), new_caller()
    assert answer(a, call_sid, caller).status_code == 200
    assert answer(b, call_sid, caller).status_code == 403


def test_after_the_agent_ends_the_call_at_one_instance_stream_ended_at_the_other_hangs_up(instances, emulator):
    a, b = instances["a"], instances["b"]
    emulator.script = Script(greeting=[Say(seconds=0.4)], replies=[Reply(steps=[
        Say(text="Goodbye!", seconds=0.6), CallTool("end_call", {"reason": "caller is done"})])])
    call_sid = new_call_sid()
    parameters = stream_parameters(answer(b, call_sid, new_caller()).text)
    call = stream(a, call_sid, parameters, recording="order_call.jsonl")
    assert call.close_code == 1000 and call.of_kind("closed")[-1].detail["by"] == "server"
    form = {"CallSid": call_sid, "AccountSid": ACCOUNT}
    headers = {"X-Twilio-Signature": sign(f"{PUBLIC}/stream-ended", form, AUTH_TOKEN)}
    r = httpx.post(f"{b.http_url}/stream-ended", data=form, headers=headers, timeout=10)
    assert r.text.endswith("<Response><Hangup /></Response>")


def test_redis_stopping_mid_call_lets_the_call_go_on_refuses_new_calls_and_service_returns_with_it(
        instances, emulator, redis):
    a, b = instances["a"], instances["b"]
    call_sid, talking, result = a_call_in_progress(a, emulator, greeting_s=5.0)
    try:
        redis.stop()
        refused = answer(b, new_call_sid(), new_caller())
        assert "<Stream" not in refused.text and "<Say" in refused.text  # the busy message, no stream token
        assert httpx.get(f"{b.http_url}/healthz", timeout=5).json()["shared_state"] == "unavailable"
    finally:
        talking.join(timeout=30)
        redis.start()
    call = result["call"]
    assert len(call.agent_audio) >= 4.5 * 8000, "the call in progress heard its whole greeting"
    assert call.protocol_errors == []
    lines = [ln for ln in b.output().splitlines() if "turned away" in ln and "shared state unavailable" in ln]
    assert len(lines) == 1, b.output()[-3000:]
    deadline = time.monotonic() + 10
    while "<Stream" not in (back := answer(b, new_call_sid(), new_caller())).text and time.monotonic() < deadline:
        time.sleep(0.2)
    assert "<Stream" in back.text, "new calls are taken again once Redis answers"


def test_every_instance_lists_the_calls_of_both(instances, emulator):
    a, b = instances["a"], instances["b"]
    emulator.script = Script(greeting=[Say(seconds=0.3)], replies=[])
    one, two = new_call_sid(), new_call_sid()
    stream(a, one, stream_parameters(answer(a, one, new_caller()).text))
    stream(b, two, stream_parameters(answer(b, two, new_caller()).text))
    assert eventually(lambda: {one, two} <= calls_listed(a) and {one, two} <= calls_listed(b))


def test_postgresql_stopping_mid_call_loses_no_call_and_its_record_arrives_when_it_returns(
        instances, emulator, postgres):
    a = instances["a"]
    call_sid, talking, result = a_call_in_progress(a, emulator, greeting_s=3.0)
    try:
        postgres.stop()
        talking.join(timeout=30)
        call = result["call"]
        assert len(call.agent_audio) >= 2.5 * 8000 and call.protocol_errors == []
        assert "<Stream" in answer(a, new_call_sid(), new_caller()).text, "new calls are still taken"
        listing = httpx.get(f"{a.http_url}/calls", headers={"Authorization": f"Bearer {API_TOKEN}"}, timeout=10)
        assert listing.status_code == 503 and "try again" in listing.json()["detail"]
    finally:
        postgres.start()
    assert eventually(lambda: call_sid in calls_listed(a), timeout=30), "the queued records were written"
    writer = [ln for ln in a.output().splitlines() if "WARNING" in ln and "telephony.records" in ln]
    assert len(writer) == 1, writer  # the writer says it once per outage, not once per record


def test_serve_with_two_workers_runs_two_processes_that_report_to_redis_and_take_calls(emulator, redis, tmp_path):
    from telephony.shared_state import RedisState

    env = {k: v for k, v in os.environ.items() if k not in ("PUBLIC_URL", "TWILIO_AUTH_TOKEN", "DATABASE_URL")}
    env.update(emulator.env())
    env.update({"GEMINI_API_KEY": "test-api-key-123", "REDIS_URL": redis.url.replace("/0", "/3"),
                "ORDERS_DB_PATH": str(tmp_path / "orders.db"), "CALLS_DB_PATH": str(tmp_path / "calls.db")})
    server = ServerProcess(env, str(tmp_path / "workers.log"), workers=2)
    try:
        server.wait_healthy()

        async def registered() -> int:
            state = RedisState(env["REDIS_URL"])
            try:
                return len(await state.instances())
            finally:
                await state.aclose()

        assert eventually(lambda: asyncio.run(registered()) == 2), server.output()[-2000:]
        emulator.script = Script(greeting=[Say(seconds=0.3)], replies=[])
        call = asyncio.run(CallSimulator(server.ws_url, os.path.join(FIXTURES, "greeting_only.jsonl"), speed=4).run())
        assert call.agent_audio and call.close_code in (1000, None)
    finally:
        server.stop()


def test_serve_refuses_more_than_one_worker_without_redis(tmp_path):
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k != "REDIS_URL"}
    env.update({"GEMINI_API_KEY": "test-api-key-123", "ORDERS_DB_PATH": str(tmp_path / "orders.db"),
                "CALLS_DB_PATH": str(tmp_path / "calls.db")})
    done = subprocess.run([sys.executable, "-m", "telephony.cli", "serve", "--workers", "2", "--port", "1"],
                          env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        "telephony: configuration error: --workers 2 needs REDIS_URL: without a shared store each process would "
        "keep its own replay memory, caller limits and /stream-ended answers (see \"Running more than one instance\")"
    ]


def test_plain_uvicorn_with_several_workers_but_no_redis_refuses_to_start(tmp_path, monkeypatch):
    """`uvicorn telephony.app:app --workers N` (WEB_CONCURRENCY on many hosts) skips
    `telephony serve`; the app itself refuses, naming the variable."""
    from fastapi.testclient import TestClient

    from telephony.app import create_app
    from telephony.errors import SettingsError
    from telephony.settings import Settings

    monkeypatch.setenv("WEB_CONCURRENCY", "3")
    settings = Settings.from_env({"GEMINI_API_KEY": "test-api-key-123", "ORDERS_DB_PATH": str(tmp_path / "o.db"),
                                  "CALLS_DB_PATH": str(tmp_path / "c.db")})
    with pytest.raises(SettingsError, match=r"^WEB_CONCURRENCY=3 needs REDIS_URL"):
        with TestClient(create_app(settings)):
            pass


def test_an_instance_that_stops_leaves_the_registry_at_once(emulator, redis, tmp_path):
    """The others must not count a stopped instance as able to take calls while it drains away."""
    from telephony.shared_state import RedisState

    env = {k: v for k, v in os.environ.items() if k not in ("PUBLIC_URL", "TWILIO_AUTH_TOKEN", "DATABASE_URL")}
    env.update(emulator.env())
    env.update({"GEMINI_API_KEY": "test-api-key-123", "REDIS_URL": redis.url.replace("/0", "/4"),
                "ORDERS_DB_PATH": str(tmp_path / "orders.db"), "CALLS_DB_PATH": str(tmp_path / "calls.db")})

    async def registered() -> list[str]:
        state = RedisState(env["REDIS_URL"])
        try:
            return [i.instance_id for i in await state.instances()]
        finally:
            await state.aclose()

    server = ServerProcess(env, str(tmp_path / "one.log"))
    try:
        me = server.wait_healthy() and httpx.get(f"{server.http_url}/healthz", timeout=5).json()["instance"]
        assert eventually(lambda: asyncio.run(registered()) == [me])
    finally:
        server.stop()
    assert asyncio.run(registered()) == []  # gone now, not when its heartbeat would have lapsed (15 s)
