"""An asyncio event loop whose clock jumps over idle waits, for whole calls without the wait.

A simulated call is 13 s of audio: the caller's frames every 20 ms, the agent's
speech paced by the emulator, the server's timers. Run real-time, a test waits
those 13 s while the processor idles. Run in one `VirtualClockLoop` (the Live
emulator, the server and the simulated caller together), the same messages go
over the same sockets in the same order, but whenever every task is waiting
on a timer and no socket has anything to read, the clock jumps to the next
timer instead of sleeping.

The jump happens only inside `fast_forward()` (while a call is being played),
and never while work handed to a thread (`run_in_executor`, `asyncio.to_thread`,
the resolver) is outstanding: such work takes real time, so the loop then waits
for it for real. Outside `fast_forward()` the loop runs in real time; its clock
is always `time.monotonic()` plus the time skipped so far.

Only public asyncio APIs: `SelectorEventLoop(selector=...)`, and overriding the
public methods `time()` and `run_in_executor()`.
"""

from __future__ import annotations

import asyncio
import contextlib
import selectors
import time
from typing import AsyncIterator, Awaitable, TypeVar

T = TypeVar("T")

#: Before jumping, how long to let the kernel deliver bytes already written on
#: loopback (a peer in this very loop may just have sent them).
SETTLE_S = 0.0005


class _JumpingSelector(selectors.BaseSelector):
    """Wraps the real selector: polls it, and when nothing is ready and the loop
    may jump, advances the clock by the loop's timeout instead of blocking."""

    def __init__(self) -> None:
        self.real = selectors.DefaultSelector()
        self.loop: VirtualClockLoop | None = None

    def register(self, fileobj, events, data=None):
        return self.real.register(fileobj, events, data)

    def unregister(self, fileobj):
        return self.real.unregister(fileobj)

    def modify(self, fileobj, events, data=None):
        return self.real.modify(fileobj, events, data)

    def get_map(self):
        return self.real.get_map()

    def close(self) -> None:
        self.real.close()

    def select(self, timeout: float | None = None):
        loop = self.loop
        if loop is None or not loop.may_jump() or timeout is None or timeout <= 0:
            return self.real.select(timeout)
        ready = self.real.select(0)
        if ready:
            return ready
        ready = self.real.select(min(SETTLE_S, timeout))
        if ready:
            return ready
        loop.skip(timeout)
        return []


class VirtualClockLoop(asyncio.SelectorEventLoop):
    """A selector event loop whose `time()` skips idle waits inside `fast_forward()`."""

    def __init__(self) -> None:
        selector = _JumpingSelector()
        super().__init__(selector=selector)
        selector.loop = self
        self.skipped = 0.0
        """Seconds of waiting skipped so far."""
        self._fast = 0
        self._in_threads = 0

    def time(self) -> float:
        return time.monotonic() + self.skipped

    def may_jump(self) -> bool:
        return self._fast > 0 and self._in_threads == 0

    def skip(self, seconds: float) -> None:
        self.skipped += seconds

    def run_in_executor(self, executor, func, *args) -> asyncio.Future:
        """As asyncio's, but the clock stands still until the thread's result is back in this loop."""
        future = super().run_in_executor(executor, func, *args)
        self._in_threads += 1

        def back(_: asyncio.Future) -> None:
            self._in_threads -= 1

        future.add_done_callback(back)
        return future

    @contextlib.asynccontextmanager
    async def fast_forward(self) -> AsyncIterator[None]:
        """Within this block (run in this loop), idle waits are skipped."""
        self._fast += 1
        try:
            yield
        finally:
            self._fast -= 1

    async def fast(self, awaitable: Awaitable[T]) -> T:
        """Await `awaitable` with idle waits skipped."""
        async with self.fast_forward():
            return await awaitable


def run_fast(loop: VirtualClockLoop, awaitable: Awaitable[T], timeout: float | None = 120.0) -> T:
    """From another thread: run `awaitable` in `loop` with idle waits skipped; return its result.
    `timeout` is real seconds, a bound on a hang."""
    return asyncio.run_coroutine_threadsafe(loop.fast(awaitable), loop).result(timeout)


__all__ = ["VirtualClockLoop", "run_fast"]


