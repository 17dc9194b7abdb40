"""Calls that survive a deploy: each call's checkpoint and lease in the shared state.

A call is owned by exactly one instance at a time: the one holding its lease
(`SharedState.claim_call`). The owner keeps a checkpoint of the call current
(`Call.snapshot`: resumption handle, conversation, counters, pending digits)
as the call goes, at every finished turn and new handle, and renews the lease
with it. When the owner drains, it closes its Live socket, writes the last
checkpoint, lets go of the lease and closes Twilio's stream; Twilio then asks
/stream-ended, which answers a new `<Connect><Stream>`, and the instance that
receives that stream claims the call and carries it on.

If the owner dies instead, its lease lapses by itself (CALL_LEASE_SECONDS): a new
stream for the call (if Twilio asks /stream-ended at all) is claimed from the last
checkpoint; if none comes within CALL_ORPHAN_SECONDS, any instance finds the call in
`orphaned_calls` and closes its record, saying why, unless the record was already
ended (the call ended normally but the store missed its release).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from typing import Any

from .shared_state import SharedState, SharedStateUnavailable

log = logging.getLogger("telephony.moves")

__all__ = ["CallKeeper", "CallOwnedElsewhere", "AFTER_STREAM_TTL_S", "RENEW_SHARE", "CHECKPOINT_TTL_S",
           "close_orphans"]

# The lease (how long an owner that stops renewing, a crash, keeps the call) and the
# orphan time (how long a released or lapsed call waits to be claimed before it is
# given up) are settings: CALL_LEASE_SECONDS and CALL_ORPHAN_SECONDS.

#: The owner renews its lease (and saves a changed checkpoint) this often, as a share of the
#: lease: two renewals may fail in a row before the lease lapses under a live owner.
RENEW_SHARE = 0.3
#: A checkpoint lives as long as the Live resumption handle in it can be used.
CHECKPOINT_TTL_S = 2 * 3600.0
#: How long an ended stream's answer waits for Twilio's /stream-ended (asked right after the close).
AFTER_STREAM_TTL_S = 600.0
#: How long the records of the call written so far get to reach the database before a move.
RECORDS_FLUSH_S = 2.0


class CallOwnedElsewhere(Exception):
    """Another instance holds the call's lease and did not let go in time."""


class CallKeeper:
    """One call's lease and checkpoint, on behalf of the instance running it."""

    def __init__(self, shared: SharedState, owner: str, call_sid: str, recorder: Any | None = None, *,
                 lease_s: float, orphan_s: float):
        self.shared = shared
        self.owner = owner
        self.call_sid = call_sid
        self.recorder = recorder
        self.lease_s = lease_s
        self.orphan_s = orphan_s
        self.renew_s = lease_s * RENEW_SHARE
        self._warned = False
        self._lease_lost = False  # said once, not at every renewal
        self.claimed_in_s = 0.0

    async def claim(self, wait_s: float | None = None) -> dict | None:
        """Own the call; return the checkpoint of a call that moved here (None: a new call).

        A lease still held elsewhere is waited for up to `wait_s` (by default a second
        more than a lease): after a crash it lapses by itself, and Twilio may already be
        asking for the next stream."""
        started = time.monotonic()
        deadline = started + (self.lease_s + 1.0 if wait_s is None else wait_s)
        while True:
            claim = await self.shared.claim_call(self.call_sid, self.owner, lease_s=self.lease_s,
                                                 orphan_s=self.orphan_s)
            if claim.owned:
                break
            if time.monotonic() >= deadline:
                raise CallOwnedElsewhere(f"call {self.call_sid} is still owned by {claim.holder}")
            await asyncio.sleep(0.2)
        self.claimed_in_s = time.monotonic() - started
        if claim.checkpoint is None:
            return None
        try:
            checkpoint = json.loads(claim.checkpoint)
        except ValueError:
            log.warning("call %s: its checkpoint is unreadable; carrying on as a new call", self.call_sid)
            return None
        return checkpoint if isinstance(checkpoint, dict) else None

    async def save(self, snapshot: dict | None) -> bool:
        """Renew the lease and store `snapshot` (None: renew only). Never raises: a
        store that is away costs the call its ability to move, not the call."""
        try:
            owned = await self.shared.save_checkpoint(
                self.call_sid, self.owner, None if snapshot is None else json.dumps(snapshot, separators=(",", ":")),
                lease_s=self.lease_s, orphan_s=self.orphan_s, ttl_s=CHECKPOINT_TTL_S)
        except SharedStateUnavailable as exc:
            if not self._warned:
                log.warning("call %s: its checkpoint cannot be kept (%s); it cannot move until the store is back",
                            self.call_sid, exc)
                self._warned = True
            return False
        self._warned = False
        if not owned and not self._lease_lost:
            log.warning("call %s: this instance no longer holds its lease", self.call_sid)
        self._lease_lost = not owned
        return owned

    async def hand_over(self, snapshot: dict) -> bool:
        """The last checkpoint, then let go so another instance can claim the call.

        The call's records are flushed first, so the next owner's continue them
        (turn numbers follow on) instead of racing them."""
        started = time.perf_counter()
        if self.recorder is not None:
            await asyncio.to_thread(self.recorder.flush, RECORDS_FLUSH_S)
        flushed = time.perf_counter()
        if not await self.save({**snapshot, "handed_over": True}):
            return False
        try:
            released = await self.shared.release_call(self.call_sid, self.owner, keep_for_s=self.orphan_s)
        except SharedStateUnavailable as exc:
            log.warning("call %s: could not hand it over: %s", self.call_sid, exc)
            return False
        log.info("call %s handed over in %.0f ms (records flushed in %.0f ms)", self.call_sid,
                 (time.perf_counter() - started) * 1000, (flushed - started) * 1000)
        return released

    async def after_stream(self, answer: str) -> None:
        """What /stream-ended answers for this call (`twiml.AfterStream`), put before the close."""
        await self.shared.put_after_stream(self.call_sid, answer, AFTER_STREAM_TTL_S)

    async def ended(self) -> None:
        """The call is over here for good: its checkpoint goes."""
        try:
            await self.shared.release_call(self.call_sid, self.owner, keep_for_s=None)
        except SharedStateUnavailable as exc:
            log.warning("call %s: its checkpoint will expire by itself: %s", self.call_sid, exc)


async def close_orphans(shared: SharedState, recorder: Any | None) -> int:
    """Close the records of calls whose instance died and that no instance carried on
    (Twilio did not come back for them): each is found by exactly one instance.

    A record that was already ended keeps its end: the call may have ended normally
    while the shared state was away, so its release never landed and it looks
    orphaned here, though its own instance wrote the true reason."""
    found = await shared.orphaned_calls()
    for call_sid, checkpoint in found:
        summary: dict[str, Any] = {}
        snapshot: dict[str, Any] = {}
        if checkpoint:
            try:
                snapshot = json.loads(checkpoint)
                summary = {"moves": snapshot.get("moves"), "agent_turns": snapshot.get("turns"),
                           **(snapshot.get("counters") or {})}
            except ValueError:
                pass
        if snapshot.get("handed_over"):  # a clean move nobody came back for: the caller left meanwhile
            reason = "the call was moving to another instance, and no stream came back for it"
        else:
            reason = "the instance handling the call stopped, and the call was not carried on"
        log.warning("call %s: %s; its record is closed unless it was already ended", call_sid, reason)
        if recorder is not None:
            recorder.call_ended(call_sid, reason=reason, summary=summary, at=time.time(), if_open=True)
    return len(found)
