"""The shared state behaves the same in one process and in Redis, across "processes".

Each behaviour runs against both backends. For Redis, `backend.open()` gives a
new client each time (a separate process, as far as Redis can tell); in
process it gives the one shared object. Expiry in process uses a fake clock;
in Redis, short lifetimes and a short sleep.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid

import pytest

from telephony.errors import TelephonyError
from telephony.shared_state import (
    HOUR_S, InProcessState, InstanceInfo, RedisState, SharedState, SharedStateUnavailable, open_shared_state,
)
from telephony.testing.redis_server import RedisServer, RedisServerMissing

LEASE = dict(max_active=2, max_per_hour=10, lease_s=0.2)


def run(coro, timeout_s: float = 30.0):
    return asyncio.run(asyncio.wait_for(coro, timeout_s))


class FakeClock:
    def __init__(self) -> None:
        self.now = 1_700_000_000.0

    def __call__(self) -> float:
        return self.now


def new_redis_server() -> RedisServer:
    pytest.importorskip("redis.asyncio", reason="the redis package is not installed")
    try:
        return RedisServer()
    except RedisServerMissing as exc:
        pytest.skip(str(exc))


@pytest.fixture(scope="module")
def redis_server():
    with new_redis_server() as server:
        yield server


class Backend:
    """Opens clients of one store and lets time pass for it."""

    def __init__(self, name: str, server: RedisServer | None = None):
        self.name = name
        self.server = server
        self.prefix = f"test-{uuid.uuid4().hex[:8]}:"
        self.clock = FakeClock()
        self._local = InProcessState(clock=self.clock) if server is None else None

    def open(self) -> SharedState:
        if self._local is not None:
            return self._local
        assert self.server is not None
        return RedisState(self.server.url, prefix=self.prefix)

    async def pass_time(self, seconds: float) -> None:
        if self._local is not None:
            self.clock.now += seconds
        else:
            await asyncio.sleep(seconds)

    async def pass_an_hour(self) -> None:
        """Age every admission by an hour (Redis cannot be made to wait one)."""
        if self._local is not None:
            self.clock.now += HOUR_S
            return
        import redis.asyncio as aioredis

        client = aioredis.from_url(self.server.url, decode_responses=True)
        try:
            async for key in client.scan_iter(match=f"{self.prefix}admitted:*"):
                for member, score in await client.zrange(key, 0, -1, withscores=True):
                    await client.zadd(key, {member: score - HOUR_S * 1000})
        finally:
            await client.aclose()


@pytest.fixture(params=["in_process", "redis"])
def backend(request) -> Backend:
    if request.param == "in_process":
        return Backend("in_process")
    return Backend("redis", request.getfixturevalue("redis_server"))


# --------------------------------------------------------------------------- take_once


def test_take_once_is_true_once_until_the_key_expires(backend):
    async def scenario():
        async with backend.open() as state:
            assert await state.take_once("answered", "CA1", ttl_s=0.2)
            assert not await state.take_once("answered", "CA1", ttl_s=0.2)
            assert await state.take_once("streamed", "CA1", ttl_s=0.2), "kinds are separate memories"
            await backend.pass_time(0.3)
            assert await state.take_once("answered", "CA1", ttl_s=0.2)

    run(scenario())


def test_many_concurrent_takers_in_two_processes_exactly_one_wins(backend):
    async def scenario():
        async with backend.open() as one, backend.open() as two:
            takers = [(one if i % 2 else two).take_once("token", "nonce-1", ttl_s=30) for i in range(40)]
            results = await asyncio.gather(*takers)
            assert results.count(True) == 1

    run(scenario())


def test_take_once_kinds_cannot_collide(backend):
    async def scenario():
        async with backend.open() as state:
            with pytest.raises(ValueError):
                await state.take_once("answered:CA1", "x", ttl_s=1)

    run(scenario())


def test_in_process_memory_is_bounded_oldest_forgotten_first():
    async def scenario():
        state = InProcessState(clock=FakeClock(), max_items=3)
        for key in ("a", "b", "c", "d"):
            assert await state.take_once("answered", key, ttl_s=60)
        assert await state.take_once("answered", "a", ttl_s=60), "dropped beyond max_items"
        assert not await state.take_once("answered", "d", ttl_s=60)

    run(scenario())


# --------------------------------------------------------------------------- caller limits


def test_simultaneous_calls_are_limited_per_caller(backend):
    async def scenario():
        async with backend.open() as state:
            assert await state.admit_caller("+15551230101", "CA1", **LEASE) is None
            assert await state.admit_caller("+15551230101", "CA2", **LEASE) is None
            assert await state.admit_caller("+15551230101", "CA3", **LEASE) == "2 calls already in progress (limit 2)"
            assert await state.admit_caller("+15551230202", "CA4", **LEASE) is None, "another caller is not limited"
            assert await state.active_calls_of("+15551230101") == 2

    run(scenario())


def test_calls_per_hour_are_limited_over_a_sliding_hour(backend):
    async def scenario():
        limits = dict(max_active=5, max_per_hour=2, lease_s=30)
        async with backend.open() as state:
            for sid in ("CA1", "CA2"):
                assert await state.admit_caller("+15551230101", sid, **limits) is None
                await state.caller_ended(sid)
            assert await state.admit_caller("+15551230101", "CA3", **limits) == "2 calls in the last hour (limit 2)"
            assert await state.active_calls_of("+15551230101") == 0, "a refusal takes no slot"
            await backend.pass_an_hour()
            assert await state.admit_caller("+15551230101", "CA4", **limits) is None

    run(scenario())


def test_the_hour_slides_in_process():
    async def scenario():
        clock = FakeClock()
        state = InProcessState(clock=clock)
        limits = dict(max_active=5, max_per_hour=2, lease_s=30)
        assert await state.admit_caller("+1555", "CA1", **limits) is None
        clock.now += 1800
        assert await state.admit_caller("+1555", "CA2", **limits) is None
        clock.now += 1799
        assert await state.admit_caller("+1555", "CA3", **limits) is not None
        clock.now += 1
        assert await state.admit_caller("+1555", "CA3", **limits) is None, "CA1 left the window"
        assert await state.admit_caller("+1555", "CA4", **limits) is not None, "CA2 has not"

    run(scenario())


def test_a_slot_lapses_when_no_stream_comes(backend):
    async def scenario():
        async with backend.open() as state:
            await state.admit_caller("+15551230101", "CA1", **LEASE)
            await state.admit_caller("+15551230101", "CA2", **LEASE)
            await backend.pass_time(0.3)
            assert await state.active_calls_of("+15551230101") == 0
            assert await state.admit_caller("+15551230101", "CA3", **LEASE) is None
            await state.caller_streaming("CA1", max_stream_s=60)
            assert await state.active_calls_of("+15551230101") == 1, "a lapsed slot is not revived by its stream"

    run(scenario())


def test_a_streaming_call_holds_its_slot_until_it_ends(backend):
    async def scenario():
        async with backend.open() as webhook, backend.open() as stream:
            limits = dict(max_active=1, max_per_hour=10, lease_s=0.2)
            assert await webhook.admit_caller("+15551230101", "CA1", **limits) is None
            await stream.caller_streaming("CA1", max_stream_s=60)
            await backend.pass_time(0.3)
            assert await webhook.admit_caller("+15551230101", "CA2", **limits) == "1 calls already in progress (limit 1)"
            await stream.caller_ended("CA1")
            assert await webhook.active_calls_of("+15551230101") == 0
            assert await webhook.admit_caller("+15551230101", "CA3", **limits) is None

    run(scenario())


def test_a_lost_end_frees_the_slot_after_max_stream_s(backend):
    async def scenario():
        async with backend.open() as state:
            await state.admit_caller("+15551230101", "CA1", max_active=1, max_per_hour=10, lease_s=30)
            await state.caller_streaming("CA1", max_stream_s=0.2)
            await backend.pass_time(0.3)
            assert await state.active_calls_of("+15551230101") == 0

    run(scenario())


def test_ending_an_unknown_or_ended_call_is_harmless(backend):
    async def scenario():
        async with backend.open() as state:
            await state.caller_ended("CA-never")
            await state.caller_streaming("CA-never", max_stream_s=60)
            await state.admit_caller("+15551230101", "CA1", **LEASE)
            await state.caller_ended("CA1")
            await state.caller_ended("CA1")
            assert await state.active_calls_of("+15551230101") == 0

    run(scenario())


def test_callers_without_a_number_share_one_key(backend):
    async def scenario():
        limits = dict(max_active=1, max_per_hour=10, lease_s=30)
        async with backend.open() as state:
            assert await state.admit_caller(None, "CA1", **limits) is None
            assert await state.admit_caller("", "CA2", **limits) == "1 calls already in progress (limit 1)"
            assert await state.active_calls_of(None) == 1
            assert await state.active_calls_of("(unknown)") == 1

    run(scenario())


def test_very_long_caller_ids_are_still_limited(backend):
    async def scenario():
        limits = dict(max_active=1, max_per_hour=10, lease_s=30)
        caller = "sip:" + "x" * 500 + "@example.com"
        async with backend.open() as state:
            assert await state.admit_caller(caller, "CA1", **limits) is None
            assert await state.admit_caller(caller, "CA2", **limits) is not None
            assert await state.admit_caller(caller[:-1], "CA3", **limits) is None
            assert await state.active_calls_of(caller) == 1

    run(scenario())


def test_two_processes_racing_for_the_last_slot_exactly_one_wins(backend):
    async def scenario():
        async with backend.open() as one, backend.open() as two:
            for round_ in range(20):
                caller = f"+1555000{round_:04d}"
                await one.admit_caller(caller, f"CA{round_}-held", max_active=2, max_per_hour=100, lease_s=30)
                results = await asyncio.gather(
                    one.admit_caller(caller, f"CA{round_}-a", max_active=2, max_per_hour=100, lease_s=30),
                    two.admit_caller(caller, f"CA{round_}-b", max_active=2, max_per_hour=100, lease_s=30),
                )
                assert results.count(None) == 1, results
                assert await two.active_calls_of(caller) == 2

    run(scenario())


def test_a_crowd_of_admissions_takes_exactly_the_limit(backend):
    async def scenario():
        async with backend.open() as one, backend.open() as two:
            results = await asyncio.gather(*[
                (one if i % 2 else two).admit_caller("+15551230101", f"CA{i}", max_active=3, max_per_hour=100, lease_s=30)
                for i in range(30)
            ])
            assert results.count(None) == 3
            assert await one.active_calls_of("+15551230101") == 3

    run(scenario())


# --------------------------------------------------------------------------- after the stream


def test_a_note_left_by_one_process_is_read_by_another_and_taken_once(backend):
    async def scenario():
        async with backend.open() as callback, backend.open() as holder:
            await callback.put_note("amd", "CA1", "machine_end_beep", ttl_s=1)
            assert await holder.get_note("amd", "CA1") == "machine_end_beep"
            assert await holder.take_note("amd", "CA1") == "machine_end_beep"
            assert await callback.take_note("amd", "CA1") is None
            await callback.put_note("transfer", "CA2", "{}", ttl_s=0.2)
            assert await holder.get_note("other_kind", "CA2") is None
            await backend.pass_time(0.3)
            assert await holder.get_note("transfer", "CA2") is None  # every note expires

    run(scenario())


def test_the_after_stream_answer_is_given_once_by_any_process(backend):
    async def scenario():
        async with backend.open() as ender, backend.open() as asker:
            await ender.put_after_stream("CA1", "transfer:+15551230199", ttl_s=30)
            assert await asker.pop_after_stream("CA1") == "transfer:+15551230199"
            assert await asker.pop_after_stream("CA1") is None
            assert await ender.pop_after_stream("CA1") is None
            assert await asker.pop_after_stream("CA-unknown") is None

    run(scenario())


def test_the_after_stream_answer_expires(backend):
    async def scenario():
        async with backend.open() as state:
            await state.put_after_stream("CA1", "hangup", ttl_s=0.2)
            await backend.pass_time(0.3)
            assert await state.pop_after_stream("CA1") is None

    run(scenario())


def test_concurrent_pops_give_the_answer_once(backend):
    async def scenario():
        async with backend.open() as one, backend.open() as two:
            await one.put_after_stream("CA1", "apology", ttl_s=30)
            results = await asyncio.gather(*[(one if i % 2 else two).pop_after_stream("CA1") for i in range(10)])
            assert results.count("apology") == 1

    run(scenario())


# --------------------------------------------------------------------------- instances


def test_instances_report_themselves_until_their_heartbeat_expires(backend):
    async def scenario():
        async with backend.open() as a, backend.open() as b:
            await b.heartbeat("b", draining=True, active_calls=0, ttl_s=30)
            await a.heartbeat("a", draining=False, active_calls=4, ttl_s=0.2)
            seen = await b.instances()
            assert [(i.instance_id, i.draining, i.active_calls) for i in seen] == [("a", False, 4), ("b", True, 0)]
            assert all(isinstance(i, InstanceInfo) and i.seen_at > 1e9 for i in seen)
            await backend.pass_time(0.3)
            assert [i.instance_id for i in await a.instances()] == ["b"]

    run(scenario())


def test_a_heartbeat_replaces_the_last_report_and_forget_drops_it(backend):
    async def scenario():
        async with backend.open() as state:
            await state.heartbeat("a", draining=False, active_calls=2, ttl_s=30)
            await state.heartbeat("b", draining=False, active_calls=1, ttl_s=30)
            await state.heartbeat("a", draining=True, active_calls=1, ttl_s=30)
            a = (await state.instances())[0]
            assert (a.instance_id, a.draining, a.active_calls) == ("a", True, 1)
            await state.forget_instance("a")
            assert [i.instance_id for i in await state.instances()] == ["b"]
            await state.forget_instance("never-seen")

    run(scenario())


# --------------------------------------------------------------------------- calls: checkpoint and lease


def test_one_owner_at_a_time_and_a_released_call_is_claimed_with_its_checkpoint(backend):
    async def scenario():
        async with backend.open() as a, backend.open() as b:
            first = await a.claim_call("CA1", "a", lease_s=30, orphan_s=60)
            assert first.owned and first.checkpoint is None
            assert await a.save_checkpoint("CA1", "a", '{"n": 1}', lease_s=30, orphan_s=60, ttl_s=600)
            refused = await b.claim_call("CA1", "b", lease_s=30, orphan_s=60)
            assert not refused.owned and refused.holder == "a"
            assert not await b.save_checkpoint("CA1", "b", '{"n": 2}', lease_s=30, orphan_s=60, ttl_s=600)
            assert await b.load_checkpoint("CA1") == '{"n": 1}', "a non-owner writes nothing"
            assert not await b.release_call("CA1", "b", keep_for_s=60)
            assert await a.release_call("CA1", "a", keep_for_s=60)
            moved = await b.claim_call("CA1", "b", lease_s=30, orphan_s=60)
            assert moved.owned and moved.checkpoint == '{"n": 1}'
            assert not await a.save_checkpoint("CA1", "a", None, lease_s=30, orphan_s=60, ttl_s=600)
            assert await b.release_call("CA1", "b", keep_for_s=None)
            assert await a.load_checkpoint("CA1") is None, "an ended call leaves nothing behind"
            assert await a.orphaned_calls() == []

    run(scenario())


def test_a_lapsed_lease_can_be_claimed_and_an_unclaimed_call_is_orphaned_once(backend):
    async def scenario():
        async with backend.open() as a, backend.open() as b:
            await a.claim_call("CA1", "a", lease_s=0.2, orphan_s=0.2)
            await a.save_checkpoint("CA1", "a", "one", lease_s=0.2, orphan_s=0.2, ttl_s=600)
            await a.claim_call("CA2", "a", lease_s=0.2, orphan_s=30)
            await backend.pass_time(0.3)
            claim = await b.claim_call("CA2", "b", lease_s=30, orphan_s=30)
            assert claim.owned, "the dead owner's lease lapsed"
            assert await a.orphaned_calls() == []
            await backend.pass_time(0.3)
            found = await asyncio.gather(a.orphaned_calls(), b.orphaned_calls())
            assert sorted(found[0] + found[1]) == [("CA1", "one")], "given to exactly one asker"
            assert await a.load_checkpoint("CA1") is None

    run(scenario())


def test_a_call_that_crashed_alone_is_still_listed_once_its_orphan_time_is_over(backend):
    """No other call keeps the list of calls alive: it must outlive the entry falling due."""
    async def scenario():
        async with backend.open() as a:
            await a.claim_call("CA1", "a", lease_s=0.2, orphan_s=0.2)
            await a.save_checkpoint("CA1", "a", "one", lease_s=0.2, orphan_s=0.2, ttl_s=600)
            await backend.pass_time(0.3)
            assert await a.orphaned_calls() == []
            await backend.pass_time(0.4)  # past due by more than a sweep's lateness
            assert await a.orphaned_calls() == [("CA1", "one")]

    run(scenario())


# --------------------------------------------------------------------------- Redis itself


def test_every_redis_key_expires(redis_server):
    backend = Backend("redis", redis_server)

    async def scenario():
        import redis.asyncio as aioredis

        async with backend.open() as state:
            await state.take_once("answered", "CA1", ttl_s=24 * 3600)
            for i in range(4):
                await state.admit_caller("+15551230101", f"CA{i}", max_active=2, max_per_hour=3, lease_s=30)
                await state.admit_caller(None, f"CX{i}", max_active=1, max_per_hour=10, lease_s=30)
            await state.caller_streaming("CA0", max_stream_s=4 * 3600)
            await state.caller_ended("CA1")
            await state.active_calls_of("+15551230101")
            await state.put_after_stream("CA0", "hangup", ttl_s=600)
            await state.heartbeat("a", draining=False, active_calls=1, ttl_s=10)
            await state.heartbeat("b", draining=True, active_calls=0, ttl_s=10)
            await state.instances()
            await state.forget_instance("b")
            await state.claim_call("CA5", "a", lease_s=10, orphan_s=60)
            await state.save_checkpoint("CA5", "a", "{}", lease_s=10, orphan_s=60, ttl_s=600)
            await state.claim_call("CA6", "a", lease_s=10, orphan_s=60)
            await state.save_checkpoint("CA6", "a", "{}", lease_s=10, orphan_s=60, ttl_s=600)
            await state.release_call("CA6", "a", keep_for_s=60)
            await state.orphaned_calls()
            await state.put_note("amd", "CA7", "human", ttl_s=60)

        client = aioredis.from_url(redis_server.url, decode_responses=True)
        try:
            keys = [key async for key in client.scan_iter(match=f"{backend.prefix}*")]
            ttls = {key: await client.pttl(key) for key in keys}
        finally:
            await client.aclose()
        kinds = {key.removeprefix(backend.prefix).split(":")[0] for key in keys}
        assert kinds == {"once", "active", "admitted", "slot", "after", "instances", "instance_info",
                         "lease", "checkpoint", "calls", "note"}
        assert all(ttl > 0 for ttl in ttls.values()), {k: t for k, t in ttls.items() if t <= 0}

    run(scenario())


def test_redis_down_fails_closed_quickly_and_recovers_when_it_returns():
    server = new_redis_server()

    async def scenario():
        state = RedisState(server.url, prefix="down:")
        assert await state.admit_caller("+15551230101", "CA1", **LEASE) is None
        server.stop()
        calls = {
            "ping": state.ping(),
            "take_once": state.take_once("answered", "CA2", ttl_s=60),
            "admit_caller": state.admit_caller("+15551230101", "CA2", **LEASE),
            "caller_streaming": state.caller_streaming("CA1", max_stream_s=60),
            "caller_ended": state.caller_ended("CA1"),
            "active_calls_of": state.active_calls_of("+15551230101"),
            "put_after_stream": state.put_after_stream("CA1", "hangup", ttl_s=60),
            "pop_after_stream": state.pop_after_stream("CA1"),
            "heartbeat": state.heartbeat("a", draining=False, active_calls=0, ttl_s=10),
            "instances": state.instances(),
            "forget_instance": state.forget_instance("a"),
            "claim_call": state.claim_call("CA1", "a", lease_s=10, orphan_s=10),
            "save_checkpoint": state.save_checkpoint("CA1", "a", "{}", lease_s=10, orphan_s=10, ttl_s=10),
            "load_checkpoint": state.load_checkpoint("CA1"),
            "release_call": state.release_call("CA1", "a", keep_for_s=None),
            "orphaned_calls": state.orphaned_calls(),
        }
        for what, call in calls.items():
            started = time.monotonic()
            with pytest.raises(SharedStateUnavailable) as caught:
                await call
            elapsed = time.monotonic() - started
            message = str(caught.value)
            assert isinstance(caught.value, TelephonyError)
            assert f"Redis at 127.0.0.1:{server.port}" in message and what in message, message
            assert "\n" not in message
            assert elapsed < 5, f"{what} took {elapsed:.1f} s to fail"

        server.start()
        await state.ping()
        assert await state.take_once("answered", "CA2", ttl_s=60)
        assert await state.admit_caller("+15551230101", "CA2", **LEASE) is None
        await state.aclose()

    with server:
        run(scenario())


def test_open_shared_state_chooses_by_url(redis_server):
    async def scenario():
        local = open_shared_state(None)
        assert isinstance(local, InProcessState)
        await local.ping()
        remote = open_shared_state(redis_server.url, prefix="open:")
        assert isinstance(remote, RedisState)
        await remote.ping()
        await remote.aclose()

    run(scenario())


def test_an_instance_that_lost_a_calls_lease_says_so_once_not_at_every_renewal(caplog):
    from telephony.moves import CallKeeper

    async def scenario():
        clock = FakeClock()
        state = InProcessState(clock=clock)
        mine = CallKeeper(state, "instance-a", "CA" + "1" * 32, lease_s=10, orphan_s=60)
        assert (await state.claim_call(mine.call_sid, "instance-a", lease_s=10, orphan_s=60)).owned
        clock.now += 11  # the lease lapsed (a long pause), and another instance took the call
        assert (await state.claim_call(mine.call_sid, "instance-b", lease_s=10, orphan_s=60)).owned
        with caplog.at_level(logging.WARNING, logger="telephony.moves"):
            assert [await mine.save(None) for _ in range(3)] == [False, False, False]
        return [r.getMessage() for r in caplog.records if "no longer holds its lease" in r.getMessage()]

    assert asyncio.run(scenario()) == [f"call CA{'1' * 32}: this instance no longer holds its lease"]
