"""Socket writes made together, a little after they are asked for.

Every call writes ~63 small messages a second: 50 caller frames to Live and the
agent's audio to Twilio. On loopback (benchmarks/load.py) a write() whose reader
sleeps on another CPU costs the writer the wake-up: ~11 µs against ~4.5 µs for writes
made back to back, on this 2-core VM. So the writers (live.py's `_FrameWriter`,
ws_protocol.py's protocol) hand their flush to the loop's `WriteBatch`, which runs
them all once the event loop has handled what it read in this pass, or as soon as
the oldest has waited `MAX_WAIT_S`, whichever comes first: calls' writes leave in
clusters, and none waits longer than that, however long the pass.
"""

from __future__ import annotations

import asyncio
import logging
import time
import weakref
from typing import Callable

log = logging.getLogger("telephony.writes")

#: The longest a write waits for the others.
MAX_WAIT_S = 0.001

#: id(loop) -> its batch, while some writer holds it (the batch holds its loop, so a
#: dictionary keyed by the loop itself would keep every loop alive).
_batches: "weakref.WeakValueDictionary[int, WriteBatch]" = weakref.WeakValueDictionary()


class WriteBatch:
    """The flushes waiting in one event loop."""

    __slots__ = ("_loop", "_pending", "_since", "_handle", "__weakref__")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._pending: list[Callable[[], None]] = []
        self._since = 0.0
        self._handle: asyncio.Handle | None = None

    def add(self, flush: Callable[[], None]) -> None:
        """Call `flush` with the others; it must write whatever its owner has waiting."""
        pending = self._pending
        if not pending:
            self._since = time.monotonic()
            if self._handle is None:
                self._handle = self._loop.call_soon(self._end_of_pass)
        elif time.monotonic() - self._since > MAX_WAIT_S:
            self.run()
            self._since = time.monotonic()
        self._pending.append(flush)

    def run(self) -> None:
        """Every waiting flush, now, in the order they were added."""
        pending, self._pending = self._pending, []
        for flush in pending:
            try:
                flush()
            except Exception:  # one connection's failure is not the others'
                log.exception("a batched write failed")

    def _end_of_pass(self) -> None:
        self._handle = None
        self.run()


def batch_for(loop: asyncio.AbstractEventLoop) -> WriteBatch:
    """The loop's `WriteBatch`: one per loop, kept by the writers that use it."""
    batch = _batches.get(id(loop))
    if batch is None or batch._loop is not loop:
        batch = _batches[id(loop)] = WriteBatch(loop)
    return batch
