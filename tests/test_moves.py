"""Calls that survive a deploy: a draining instance moves its calls to another one.

Everything is real: two `telephony serve` processes, Redis, PostgreSQL, the shipped
haproxy configuration in front of them, the Live emulator behind them, and Twilio's
stand-in, which follows `<Connect action>` from one stream to the next as Twilio does.
"""

from __future__ import annotations

import asyncio
import itertools
import threading
import time

import pytest

from telephony.testing.deployment import OUR_NUMBER, PUBLIC, Deployment
from telephony.testing.emulator import CallTool, Reply, Say, Script
from telephony.testing.postgres_server import PostgresServer
from telephony.testing.recordings import Silence, Tone
from telephony.testing.redis_server import RedisServer

_serial = itertools.count(0x30FE000)
_numbers = itertools.count(5550300)

GREETING = "Hello, how can I help?"
ANSWER = "It ships tomorrow."


def new_call_sid() -> str:
    return f"CA{next(_serial):032x}"


def new_caller() -> str:
    return f"+1444{next(_numbers):07d}"


@pytest.fixture(scope="module")
def redis():
    with RedisServer() as server:
        yield server


@pytest.fixture(scope="module")
def postgres():
    with PostgresServer() as server:
        yield server


@pytest.fixture
def deployment(emulator, redis, postgres, tmp_path):
    with Deployment(emulator, redis.url, postgres.url, tmp_path) as deployed:
        yield deployed


def talk(seconds_between: list[float], tail: float = 4.0) -> list:
    """The caller: a short utterance after each pause, then `tail` seconds of line noise."""
    segments: list = []
    for pause in seconds_between:
        segments += [Silence(pause), Tone(300, 0.8, level_dbfs=-6)]
    return segments + [Silence(tail)]


def place(deployment: Deployment, calls: list[tuple[str, list]], first: str = "agent-a") -> dict:
    """Run the calls at once in the background, each placed on instance `first`:
    {"thread", "results": {call_sid: FollowedCall}}."""
    results: dict = {}
    first_via = deployment.servers[first].http_url

    async def all_calls():
        done = await asyncio.gather(*(deployment.standin.inbound_call(
            via=deployment.proxy.http_url, first_via=first_via, public_url=PUBLIC, call_sid=sid,
            caller=new_caller(), called=OUR_NUMBER, segments=segments) for sid, segments in calls))
        results.update({call.call_sid: call for call in done})

    thread = threading.Thread(target=lambda: asyncio.run(all_calls()))
    thread.start()
    return {"thread": thread, "results": results}


def answered(emulator, index_from: int, count: int, reply: int = 0) -> bool:
    """`count` sessions opened since `index_from` finished their reply number `reply`."""
    sessions = emulator.sessions[index_from:]
    return sum(1 for s in sessions if ("turn_complete", reply) in [(k, d) for _, k, d in s.events]) >= count


def test_five_calls_move_when_their_instance_drains_and_carry_on_with_their_live_sessions_resumed(
        deployment, emulator):
    emulator.script = Script(greeting=[Say(text=GREETING, seconds=0.8)],
                             replies=[Reply(steps=[Say(text=ANSWER, seconds=0.8)])])
    before = len(emulator.sessions)
    sids = [new_call_sid() for _ in range(5)]
    running = place(deployment, [(sid, talk([2.0, 5.0], tail=4.0)) for sid in sids])
    emulator.wait_for(lambda: answered(emulator, before, 5), timeout=20)
    opened_before_drain = len(emulator.sessions)
    sent = deployment.sigterm("agent-a")
    deployment.servers["agent-a"].proc.wait(timeout=20)
    exited_after = time.monotonic() - sent
    running["thread"].join(timeout=60)
    results = running["results"]
    a_log = deployment.servers["agent-a"].output()
    assert exited_after < 8, f"the old instance took {exited_after:.1f} s to exit:\n{a_log[-3000:]}"
    assert set(results) == set(sids)
    after = emulator.sessions[opened_before_drain:]
    assert len(after) == 5, [s.kinds() for s in after]
    for session in after:
        assert "resumed" in session.kinds(), "the Live session was resumed with its handle, not opened afresh"
        assert "resume_refused_open" not in session.kinds()
    for sid in sids:
        call = results[sid]
        assert len(call.legs) == 2, (sid, [leg.twiml for leg in call.legs], a_log[-3000:])
        assert 'name="leg" value="2"' in call.legs[1].twiml
        second = call.legs[1].stream
        assert second.spans, "the caller heard the agent on the new stream"
        assert second.of_kind("sent_stop"), "the caller hung up on the new stream"
        assert all(not leg.stream.protocol_errors for leg in call.legs)

    def records_complete() -> bool:
        return all((r := deployment.record(sid)) and r.get("ended_at") for sid in sids)

    deadline = time.monotonic() + 15
    while not records_complete() and time.monotonic() < deadline:
        time.sleep(0.2)
    for sid in sids:
        record = deployment.record(sid)
        assert record["end_reason"] == "caller hung up", record["end_reason"]
        texts = [(t["role"], t["text"]) for t in record["turns"]]
        agent = [text for role, text in texts if role == "agent"]
        assert sum(GREETING in text for text in agent) == 1, texts
        assert sum(ANSWER in text for text in agent) == 2, texts
        assert [t["seq"] for t in record["turns"]] == list(range(1, len(record["turns"]) + 1))
        assert any(e["kind"] == "moved" for e in record["events"])
        assert record["summary"]["moves"] == 1 and record["summary"]["live_sessions_resumed"] >= 1
