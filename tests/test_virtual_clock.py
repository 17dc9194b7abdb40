"""The virtual-clock loop the call tests run on (telephony/testing/virtual_clock.py).

It may skip a wait only when nothing else could happen first: no socket has
anything to read, no callback is due, no thread is working for the loop. These
tests hold it to that; times are read from the loop's own account of what it
skipped, never from the wall clock.
"""

from __future__ import annotations

import asyncio
import threading

import pytest

from telephony.testing.virtual_clock import VirtualClockLoop, run_fast


@pytest.fixture
def loop():
    loop = VirtualClockLoop()
    yield loop
    loop.close()


def test_inside_fast_forward_an_idle_wait_is_skipped_and_the_clock_moves_by_it(loop):
    async def wait() -> float:
        start = loop.time()
        async with loop.fast_forward():
            await asyncio.sleep(30)
        return loop.time() - start

    waited = loop.run_until_complete(wait())
    assert waited >= 30 and loop.skipped > 0  # the part not spent for real was skipped


def test_outside_fast_forward_the_loop_keeps_real_time(loop):
    loop.run_until_complete(asyncio.sleep(0.05))
    assert loop.skipped == 0


def test_no_jump_while_a_thread_works_for_the_loop(loop):
    started, release = threading.Event(), threading.Event()

    def work() -> float:
        before = loop.skipped
        started.set()
        release.wait(5)
        return loop.skipped - before

    async def scenario() -> tuple[float, bool]:
        async with loop.fast_forward():
            sleeper = asyncio.ensure_future(asyncio.sleep(100))  # would be skipped at once if the loop could jump
            job = asyncio.ensure_future(asyncio.to_thread(work))
            await asyncio.to_thread(started.wait, 5)
            sleeping_during_work = not sleeper.done()
            release.set()
            skipped_during_work = await job
            await sleeper
        return skipped_during_work, sleeping_during_work

    skipped_during_work, sleeping_during_work = loop.run_until_complete(scenario())
    assert skipped_during_work == 0 and sleeping_during_work
    assert loop.skipped > 0  # and once the thread was done, the rest of the wait was skipped


def test_messages_over_a_socket_arrive_whole_and_in_order_between_skipped_waits(loop):
    async def scenario() -> list[bytes]:
        async def echo(reader, writer):
            while line := await reader.readline():
                writer.write(line)
                await writer.drain()
            writer.close()

        server = await asyncio.start_server(echo, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        got = []
        async with loop.fast_forward():
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            for i in range(20):
                writer.write(b"frame %d\n" % i)
                await asyncio.sleep(0.02)  # one Twilio frame
                got.append(await reader.readline())
            writer.close()
            await writer.wait_closed()
        server.close()
        await server.wait_closed()
        return got

    assert loop.run_until_complete(scenario()) == [b"frame %d\n" % i for i in range(20)]
    assert loop.skipped > 0


def test_run_fast_runs_a_coroutine_in_a_loop_of_another_thread():
    loop = VirtualClockLoop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    try:
        async def an_hour() -> str:
            await asyncio.sleep(3600)
            return "done"

        assert run_fast(loop, an_hour(), timeout=30) == "done"  # an hour, in less than 30 s
        assert loop.skipped > 0
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(5)
        loop.close()
