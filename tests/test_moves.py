"""Calls that survive a deploy: a draining instance moves its calls to another one.

Everything is real: two `telephony serve` processes, Redis, PostgreSQL, the shipped
haproxy configuration in front of them, the Live emulator behind them, and Twilio's
stand-in, which follows `<Connect action>` from one stream to the next as Twilio does.
"""

from __future__ import annotations

import asyncio
import secrets
import threading
import time

import pytest

from telephony.testing.deployment import OUR_NUMBER, PUBLIC, Deployment
from telephony.testing.emulator import CallTool, Reply, Say, Script
from telephony.testing.identities import new_call_sid, new_caller
from telephony.testing.recordings import Silence, Tone


GREETING = "Hello, how can I help?"
ANSWER = "It ships tomorrow."


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


def place(deployment: Deployment, calls: list[tuple[str, list]], first: str = "agent-a",
          ask_after_drop: bool = True) -> dict:
    """Run the calls at once in the background, each placed on instance `first`:
    {"thread", "results": {call_sid: FollowedCall}}. `ask_after_drop`: whether Twilio's
    stand-in asks /stream-ended after a stream that died with its instance."""
    results: dict = {}
    first_via = deployment.servers[first].http_url

    async def all_calls():
        done = await asyncio.gather(*(deployment.standin.inbound_call(
            via=deployment.proxy.http_url, first_via=first_via, public_url=PUBLIC, call_sid=sid,
            caller=new_caller(), called=OUR_NUMBER, segments=segments, ask_after_drop=ask_after_drop)
            for sid, segments in calls))
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
        caller_turns = [t["seq"] for t in record["turn_timings"] if t["role"] == "caller"]
        assert caller_turns == [1, 2], "the caller's turns number on across the move"


def test_a_call_moved_twice_keeps_one_record_and_resumes_each_time(deployment, emulator):
    emulator.script = Script(greeting=[Say(text=GREETING, seconds=0.8)],
                             replies=[Reply(steps=[Say(text=ANSWER, seconds=0.8)])])
    before = len(emulator.sessions)
    sid = new_call_sid()
    running = place(deployment, [(sid, talk([2.0, 9.0, 13.0], tail=3.0))])
    emulator.wait_for(lambda: answered(emulator, before, 1), timeout=20)
    deployment.sigterm("agent-a")
    deployment.servers["agent-a"].proc.wait(timeout=20)
    emulator.wait_for(lambda: answered(emulator, before, 1, reply=1), timeout=20)
    deployment.restart("agent-a", "127.0.0.4")  # the deploy brings it back elsewhere
    deployment.wait_in_rotation("agent-a")
    deployment.sigterm("agent-b")
    deployment.servers["agent-b"].proc.wait(timeout=20)
    running["thread"].join(timeout=60)
    call = running["results"][sid]
    assert len(call.legs) == 3, [leg.twiml for leg in call.legs]
    assert ['name="leg" value="2"' in call.legs[1].twiml, 'name="leg" value="3"' in call.legs[2].twiml] == [True, True]
    assert call.legs[0].stream.spans and call.legs[1].stream.spans, "the agent was heard before and after a move"
    sessions = emulator.sessions[before:]
    assert [("resumed" in s.kinds()) for s in sessions] == [False, True, True]
    record = None
    deadline = time.monotonic() + 15
    while not (record and record.get("ended_at")) and time.monotonic() < deadline:
        record = deployment.record(sid, "agent-a")
        time.sleep(0.2)
    agent = [t["text"] for t in record["turns"] if t["role"] == "agent"]
    assert sum(ANSWER in text for text in agent) == 3 and sum(GREETING in text for text in agent) == 1, agent
    assert record["summary"]["moves"] == 2 and record["end_reason"] == "caller hung up"


def test_a_move_waits_for_the_tool_call_in_flight_whose_answer_is_heard_first(deployment, emulator, tmp_path):
    import sqlite3

    emulator.script = Script(greeting=[Say(text=GREETING, seconds=0.8)], replies=[
        Reply(steps=[CallTool("lookup_order", {"order_id": "A1001"}), Say(text=ANSWER, seconds=0.8)]),
        Reply(steps=[Say(text="Anything else?", seconds=0.6)])])
    before = len(emulator.sessions)
    sid = new_call_sid()
    lock = sqlite3.connect(deployment.env["ORDERS_DB_PATH"], isolation_level=None)
    lock.execute("BEGIN EXCLUSIVE")  # the tool blocks on the orders database until released
    try:
        running = place(deployment, [(sid, talk([2.0, 6.0], tail=3.0))])
        emulator.wait_for(lambda: any("tool_call" in s.kinds() for s in emulator.sessions[before:]), timeout=20)
        deployment.sigterm("agent-a")
        deadline = time.monotonic() + 10
        while "moves at the next quiet moment" not in deployment.servers["agent-a"].output():
            assert time.monotonic() < deadline, deployment.servers["agent-a"].output()[-2000:]
            time.sleep(0.05)
    finally:
        lock.execute("ROLLBACK")
        lock.close()
    deployment.servers["agent-a"].proc.wait(timeout=20)
    running["thread"].join(timeout=60)
    call = running["results"][sid]
    assert len(call.legs) == 2
    first = emulator.sessions[before]
    assert [e["id"] for e in first.tool_responses] == ["fc-1"], "the tool answered on the old instance"
    assert "tool_cancelled" not in first.kinds()
    assert ("turn_complete", 0) in [(k, d) for _, k, d in first.events], "its answer was spoken there"
    assert "resumed" in emulator.sessions[before + 1].kinds()
    record = deployment.record(sid)
    assert [(t["name"], t["outcome"]) for t in record["tool_calls"]] == [("lookup_order", "ok")]


def test_when_no_other_instance_takes_calls_a_drain_ends_them_politely_as_before(emulator, redis, postgres, tmp_path):
    extra = {"DRAIN_TIMEOUT_SECONDS": "3"}
    with Deployment(emulator, redis.url, postgres.url, tmp_path, extra_env=extra) as deployment:
        emulator.script = Script(greeting=[Say(text=GREETING, seconds=0.8)],
                                 replies=[Reply(steps=[Say(text=ANSWER, seconds=0.8)])])
        before = len(emulator.sessions)
        on_a, on_b = new_call_sid(), new_call_sid()
        running_a = place(deployment, [(on_a, talk([2.0, 20.0]))], first="agent-a")
        running_b = place(deployment, [(on_b, talk([2.0, 20.0]))], first="agent-b")
        emulator.wait_for(lambda: answered(emulator, before, 2), timeout=20)
        deployment.sigterm("agent-b")  # b drains first: its call moves to a
        emulator.wait_for(lambda: len(emulator.sessions) > before + 2, timeout=20)
        deployment.sigterm("agent-a")  # then a drains too, with nobody left to take calls
        for name in ("agent-a", "agent-b"):
            deployment.servers[name].proc.wait(timeout=30)
        running_a["thread"].join(timeout=60)
        running_b["thread"].join(timeout=60)
        log = deployment.servers["agent-a"].output()
        assert "draining: 2 active call(s); waiting up to 3 s for them to finish" in log, log[-3000:]
        for sid in (on_a, on_b):
            call = {**running_a["results"], **running_b["results"]}[sid]
            assert call.final_twiml and "<Say>" in call.final_twiml, (sid, call.final_twiml, log[-2000:])


def test_after_a_crash_the_call_is_carried_on_from_its_last_checkpoint_when_twilio_asks(deployment, emulator):
    """What Twilio does when a server dies without closing is not documented
    (docs/twilio-media-streams.md §9): if it asks /stream-ended, the call goes on."""
    import signal

    emulator.script = Script(greeting=[Say(text=GREETING, seconds=0.8)],
                             replies=[Reply(steps=[Say(text=ANSWER, seconds=0.8)])])
    before = len(emulator.sessions)
    sid = new_call_sid()
    running = place(deployment, [(sid, talk([2.0, 15.0], tail=3.0))])
    emulator.wait_for(lambda: answered(emulator, before, 1), timeout=20)
    emulator.wait_for(lambda: deployment.record(sid) is not None and len(deployment.record(sid)["turns"]) >= 2)
    deployment.servers["agent-a"].proc.send_signal(signal.SIGKILL)
    running["thread"].join(timeout=60)
    call = running["results"][sid]
    assert len(call.legs) == 2, [leg.twiml for leg in call.legs]
    assert "<Say>One moment, please.</Say><Connect" in call.legs[1].twiml, "a word while the lease lapses"
    assert call.legs[1].stream.spans, "the agent answered on the new stream"
    assert "resumed" in emulator.sessions[-1].kinds()
    log = deployment.servers["agent-b"].output()
    assert "carrying it on from its last checkpoint" in log
    deadline = time.monotonic() + 15
    record = None
    while not (record and record.get("ended_at")) and time.monotonic() < deadline:
        record = deployment.record(sid)
        time.sleep(0.2)
    agent = [t["text"] for t in record["turns"] if t["role"] == "agent"]
    assert sum(GREETING in text for text in agent) == 1 and sum(ANSWER in text for text in agent) == 2, agent
    assert record["end_reason"] == "caller hung up" and record["summary"]["moves"] == 1


def test_after_a_crash_the_call_ends_and_its_record_says_why_when_twilio_does_not_ask(
        emulator, redis, postgres, tmp_path):
    """The other answer Twilio may give to a dead server (docs/twilio-media-streams.md §9):
    no /stream-ended. The other instance closes the call's one record once the lease and
    the orphan time (short here) are over, and the dead process left no Live session open."""
    import signal

    import psycopg

    lease_s, orphan_s = 3.0, 3.0
    extra = {"CALL_LEASE_SECONDS": str(lease_s), "CALL_ORPHAN_SECONDS": str(orphan_s)}
    with Deployment(emulator, redis.url, postgres.url, tmp_path, extra_env=extra) as deployment:
        emulator.script = Script(greeting=[Say(text=GREETING, seconds=0.8)],
                                 replies=[Reply(steps=[Say(text=ANSWER, seconds=0.8)])])
        before = len(emulator.sessions)
        sid = new_call_sid()
        running = place(deployment, [(sid, talk([2.0, 15.0], tail=3.0))], ask_after_drop=False)
        emulator.wait_for(lambda: answered(emulator, before, 1), timeout=20)
        emulator.wait_for(lambda: deployment.record(sid) is not None and len(deployment.record(sid)["turns"]) >= 2)
        session = emulator.sessions[before]
        assert session.socket_open and not session.closed
        killed_at = time.time()
        deployment.servers["agent-a"].proc.send_signal(signal.SIGKILL)
        running["thread"].join(timeout=60)
        call = running["results"][sid]
        assert len(call.legs) == 1 and call.action_requests == 0, [leg.twiml for leg in call.legs]
        assert call.legs[0].stream.close_code == 1006, "the stream died with its instance, without a close"
        # The Live socket closed when the process died: no close frame from it, nothing left open.
        emulator.wait_for(lambda: session.closed, timeout=10)
        assert session.close_code == 1006 and not session.socket_open

        record = None
        deadline = time.monotonic() + lease_s + orphan_s + 30
        while not (record and record.get("ended_at")) and time.monotonic() < deadline:
            record = deployment.record(sid)
            time.sleep(0.2)
        assert record and record.get("ended_at"), [line for line in deployment.servers["agent-b"].output().splitlines() if "GET /" not in line][-40:]
        closed_after = record["ended_at"] - killed_at
        assert record["end_reason"] == "the instance handling the call stopped, and the call was not carried on"
        assert closed_after >= orphan_s, f"closed {closed_after:.1f} s after the crash, before Twilio's time was up"
        agent = [t["text"] for t in record["turns"] if t["role"] == "agent"]
        assert sum(GREETING in text for text in agent) == 1, "the record keeps what was said before the crash"
        assert record["summary"]["agent_turns"] >= 1
        log = deployment.servers["agent-b"].output()
        assert f"call {sid}: the instance handling the call stopped" in log, log[-3000:]
        with psycopg.connect(postgres.url, autocommit=True) as db:
            [(rows,)] = db.execute("SELECT count(*) FROM calls WHERE call_sid = %s", (sid,)).fetchall()
        assert rows == 1
        assert len(emulator.sessions) == before + 1, "no instance opened a Live session for the call afterwards"
        print(f"crashed call's record closed {closed_after:.1f} s after SIGKILL "
              f"(lease {lease_s:.0f} s + orphan {orphan_s:.0f} s)")


@pytest.mark.parametrize("store", ["sqlite", "postgres"])
def test_the_orphan_sweep_never_overwrites_the_end_of_a_call_that_ended(store, postgres, tmp_path):
    """A call that ended while the shared state was away still looks orphaned there later
    (its release never landed): the sweep finds it, and its record keeps its true end."""
    from telephony.moves import close_orphans
    from telephony.records import CallRecorder
    from telephony.records_query import get_call
    from telephony.shared_state import InProcessState

    class Clock:
        now = 1_700_000_000.0

        def __call__(self):
            return self.now

    target = tmp_path / "calls.db" if store == "sqlite" else postgres.create_database(f"sweep_{secrets.token_hex(4)}")
    recorder = CallRecorder(target)
    clock = Clock()
    state = InProcessState(clock=clock)
    ended, crashed = new_call_sid(), new_call_sid()
    tokens = {"prompt": 100, "response": 50, "total": 150, "by_modality": {"AUDIO": 150}}

    async def scenario():
        for sid in (ended, crashed):
            recorder.call_started(sid, stream_sid=None, direction="inbound", caller=None, called=None,
                                  at=clock.now)
            recorder.transcript(sid, "agent", GREETING, clock.now, new_turn=True)
            await state.claim_call(sid, "instance-a", lease_s=10, orphan_s=60)
            await state.save_checkpoint(sid, "instance-a", '{"moves": 0, "turns": 1}', lease_s=10, orphan_s=60,
                                        ttl_s=7200)
        recorder.call_ended(ended, reason="caller hung up", summary={"tokens": tokens}, at=clock.now + 5)
        # ...and its release (`CallKeeper.ended`) never reached the shared state.
        clock.now += 71
        assert await close_orphans(state, recorder) == 2

    asyncio.run(scenario())
    assert recorder.flush(10)
    recorder.close()
    kept, closed = get_call(target, ended), get_call(target, crashed)
    assert kept["end_reason"] == "caller hung up" and kept["ended_at"] == 1_700_000_005.0
    assert kept["tokens"]["total"] == 150, "the ended call's usage stands"
    assert closed["end_reason"] == "the instance handling the call stopped, and the call was not carried on"


def test_an_orphaned_call_gets_its_record_closed_saying_why(tmp_path):
    """A dead instance's call that no stream came back for is closed by whichever instance finds it."""
    from telephony.moves import close_orphans
    from telephony.shared_state import InProcessState

    class Clock:
        now = 1_700_000_000.0

        def __call__(self):
            return self.now

    class Recorder:
        def __init__(self):
            self.ended = []

        def call_ended(self, call_sid, *, reason, summary, at, if_open=False):
            assert if_open, "the sweep never overwrites an end already written"
            self.ended.append((call_sid, reason, summary))

    clock, recorder = Clock(), Recorder()
    state = InProcessState(clock=clock)

    async def scenario():
        await state.claim_call("CA1", "dead", lease_s=10, orphan_s=60)
        await state.save_checkpoint("CA1", "dead", '{"moves": 0, "turns": 3, "counters": {"interruptions": 1}}',
                                    lease_s=10, orphan_s=60, ttl_s=7200)
        clock.now += 30
        assert await close_orphans(state, recorder) == 0, "still waiting for Twilio to come back"
        clock.now += 41
        assert await close_orphans(state, recorder) == 1
        assert await close_orphans(state, recorder) == 0, "closed once"

    asyncio.run(scenario())
    [(sid, reason, summary)] = recorder.ended
    assert sid == "CA1" and "was not carried on" in reason
    assert summary["agent_turns"] == 3 and summary["interruptions"] == 1
