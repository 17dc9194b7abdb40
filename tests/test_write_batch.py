"""The loop's write batch (telephony/write_batch.py): calls' writes leave together."""

from __future__ import annotations

import asyncio
import gc
import logging
import time
import weakref

from telephony import write_batch
from telephony.write_batch import batch_for


def test_writes_wait_for_the_end_of_the_pass_and_leave_in_order():
    async def scenario() -> tuple[list[str], list[str]]:
        batch, done = batch_for(asyncio.get_running_loop()), []
        for name in ("call 1", "call 2", "call 3"):
            batch.add(lambda name=name: done.append(name))
        during = list(done)
        await asyncio.sleep(0)
        return during, done

    during, after = asyncio.run(scenario())
    assert during == [] and after == ["call 1", "call 2", "call 3"]


def test_a_write_never_waits_much_longer_than_the_bound_however_long_the_pass():
    async def scenario() -> list[str]:
        batch, done = batch_for(asyncio.get_running_loop()), []
        batch.add(lambda: done.append("early"))
        time.sleep(2 * write_batch.MAX_WAIT_S)  # the rest of a long pass
        batch.add(lambda: done.append("late"))
        seen = list(done)  # "early" went out as "late" was added
        await asyncio.sleep(0)
        return seen + ["|"] + done

    assert asyncio.run(scenario()) == ["early", "|", "early", "late"]


def test_a_failing_write_does_not_stop_the_others(caplog):
    def broken() -> None:
        raise OSError("connection reset")

    async def scenario() -> list[str]:
        batch, done = batch_for(asyncio.get_running_loop()), []
        batch.add(broken)
        batch.add(lambda: done.append("other call"))
        await asyncio.sleep(0)
        return done

    with caplog.at_level(logging.ERROR, logger="telephony.writes"):
        assert asyncio.run(scenario()) == ["other call"]
    assert "a batched write failed" in caplog.text


def test_each_loop_has_its_own_batch_and_none_outlives_its_loop():
    loops = []

    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        loops.append(weakref.ref(loop))
        assert batch_for(loop) is batch_for(loop)

    for _ in range(3):
        asyncio.run(scenario())
    gc.collect()
    assert not any(ref() for ref in loops)  # a batch kept in the registry would keep its loop
