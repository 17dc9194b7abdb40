"""What every server process must agree on, behind one small async interface.

Behind a load balancer without session affinity, a call's webhook, its media
stream and Twilio's /stream-ended request can each reach a different process,
on a different machine. Whatever decides about a call must therefore be
decided in one shared place:

- replay memory: a CallSid is answered once, a stream token, an outbound ref
  and a CallSid's stream are each used once (`take_once`);
- per-caller limits: simultaneous calls and calls per hour (`admit_caller`,
  `caller_streaming`, `caller_ended`);
- what an ended stream gives Twilio's /stream-ended (`put_after_stream`,
  `pop_after_stream`);
- which instances are alive, and which are draining (`heartbeat`,
  `instances`), so a draining instance knows whether others take new calls;
- each call in progress: its checkpoint and the lease of the one instance that
  owns it (`claim_call`, `save_checkpoint`, `release_call`, `orphaned_calls`),
  so a call can move to another instance, on a deploy or after a crash.
- short notes about a call that a callback reaching any instance leaves for
  the instance holding its stream, or for a later stream of the same call
  (`put_note`, `get_note`, `take_note`): an answering-machine verdict, a warm
  transfer's state, the Live handle a caller returning from a transfer resumes.

`InProcessState` keeps it in this process (one server process, development,
tests); `RedisState` keeps it in Redis, for any number of processes.

Fail closed: when the store cannot be reached every method raises
`SharedStateUnavailable`, never a guess. A replay check or a caller limit that
cannot be checked must refuse the call; admitting it would hand out Live
minutes to whoever knows how to make Redis slow.
"""

from __future__ import annotations

import hashlib
import math
import time
from abc import ABC, abstractmethod
from collections import OrderedDict, deque
from dataclasses import dataclass
from typing import Awaitable, Callable, TypeVar
from urllib.parse import urlsplit

from .errors import SettingsError, TelephonyError

__all__ = [
    "SharedState", "InProcessState", "RedisState", "InstanceInfo", "SharedStateUnavailable", "open_shared_state",
    "UNKNOWN_CALLER", "HOUR_S", "MAX_REMEMBERED", "Claim",
]

Clock = Callable[[], float]
T = TypeVar("T")

#: Key under which callers without a usable From share their limits.
UNKNOWN_CALLER = "(unknown)"
#: The sliding window of the hourly per-caller limit.
HOUR_S = 3600.0
#: Entries any one in-process memory keeps before dropping its oldest (a memory bound).
MAX_REMEMBERED = 200_000


class SharedStateUnavailable(TelephonyError):
    """The shared store could not be reached or did not answer in time."""


@dataclass(frozen=True)
class InstanceInfo:
    """One server instance as it last reported itself; `seen_at` is on the store's clock."""

    instance_id: str
    draining: bool
    active_calls: int
    seen_at: float


@dataclass(frozen=True)
class Claim:
    """The answer to `claim_call`: whether this instance now owns the call, the
    checkpoint it left behind (None for a call never checkpointed), and who holds
    the lease when the claim failed."""

    owned: bool
    checkpoint: str | None = None
    holder: str | None = None


def _too_many_active(count: int, limit: int) -> str:
    return f"{count} calls already in progress (limit {limit})"


def _too_many_recent(count: int, limit: int) -> str:
    return f"{count} calls in the last hour (limit {limit})"


class SharedState(ABC):
    """The state calls must agree on, whichever process handles them."""

    @abstractmethod
    async def take_once(self, kind: str, key: str, ttl_s: float) -> bool:
        """Remember `key` for `ttl_s`; True only for the one taker that found it unremembered.

        `kind` names the memory ("answered", "token", "streamed", ...): keys
        of different kinds never collide.
        """

    @abstractmethod
    async def admit_caller(
        self, caller: str | None, call_sid: str, *, max_active: int, max_per_hour: int, lease_s: float,
    ) -> str | None:
        """Take a simultaneous slot and an hourly admission for `call_sid`, or
        return why `caller` is over a limit (and take nothing).

        The slot lapses after `lease_s` unless `caller_streaming` extends it:
        a caller who hangs up during the TwiML must not hold it. Callers with
        no number share one key, `UNKNOWN_CALLER`.
        """

    @abstractmethod
    async def caller_streaming(self, call_sid: str, max_stream_s: float) -> None:
        """The call's stream started: hold its slot until `caller_ended`, or
        `max_stream_s` at the latest, so a lost end cannot lock a caller out.
        A slot that already lapsed stays lapsed."""

    @abstractmethod
    async def caller_ended(self, call_sid: str) -> None:
        """Free the call's slot."""

    @abstractmethod
    async def active_calls_of(self, caller: str | None) -> int:
        """How many slots `caller` holds now."""

    @abstractmethod
    async def put_after_stream(self, call_sid: str, answer: str, ttl_s: float) -> None:
        """What /stream-ended answers for this call ("hangup", "apology",
        "transfer:<destination>"); Twilio asks right after the stream closes,
        possibly at another process."""

    @abstractmethod
    async def pop_after_stream(self, call_sid: str) -> str | None:
        """The answer put for `call_sid`, given once; None if none (or expired)."""

    @abstractmethod
    async def put_note(self, kind: str, key: str, value: str, ttl_s: float) -> None:
        """Leave `value` under (`kind`, `key`) for `ttl_s`, replacing any earlier one."""

    @abstractmethod
    async def get_note(self, kind: str, key: str) -> str | None:
        """The note left under (`kind`, `key`), or None if none (or expired)."""

    @abstractmethod
    async def take_note(self, kind: str, key: str) -> str | None:
        """The note left under (`kind`, `key`), removed: exactly one taker gets it."""

    @abstractmethod
    async def heartbeat(self, instance_id: str, *, draining: bool, active_calls: int, ttl_s: float) -> None:
        """Report this instance alive for `ttl_s`: an instance that stops
        reporting drops out of `instances()` on its own."""

    @abstractmethod
    async def instances(self) -> list[InstanceInfo]:
        """The instances whose last heartbeat has not expired, by id."""

    @abstractmethod
    async def forget_instance(self, instance_id: str) -> None:
        """Drop an instance at once (it is shutting down), rather than at its heartbeat's expiry."""

    @abstractmethod
    async def claim_call(self, call_sid: str, owner: str, *, lease_s: float, orphan_s: float) -> Claim:
        """Take the lease of `call_sid` for `owner` unless another owner holds it
        (an unexpired lease); return its checkpoint with it. The call is listed
        until `lease_s + orphan_s` from now (`orphaned_calls`)."""

    @abstractmethod
    async def save_checkpoint(self, call_sid: str, owner: str, checkpoint: str | None, *, lease_s: float,
                              orphan_s: float, ttl_s: float) -> bool:
        """Renew `owner`'s lease (and store `checkpoint` for `ttl_s`, unless None);
        False, with nothing written, if `owner` does not hold the lease."""

    @abstractmethod
    async def load_checkpoint(self, call_sid: str) -> str | None:
        """The call's last checkpoint, whoever owns it (None: none, or expired)."""

    @abstractmethod
    async def release_call(self, call_sid: str, owner: str, *, keep_for_s: float | None) -> bool:
        """`owner` lets go of the call. `keep_for_s` None: the call is over, its
        checkpoint is dropped. Otherwise the checkpoint waits that long for another
        instance to claim it (a move). False if `owner` did not hold the lease."""

    @abstractmethod
    async def orphaned_calls(self, limit: int = 20) -> list[tuple[str, str | None]]:
        """Calls whose owner stopped renewing its lease and that nobody claimed
        within their orphan time, each given to exactly one asker, with its last
        checkpoint: (call_sid, checkpoint)."""

    @abstractmethod
    async def ping(self) -> None:
        """Raise `SharedStateUnavailable` unless the store answers (a readiness check)."""

    async def aclose(self) -> None:
        """Release connections; the object is not used afterwards."""

    async def __aenter__(self) -> "SharedState":
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()


def _check_kind(kind: str) -> None:
    if not kind or not kind.replace("_", "").isalnum():
        raise ValueError(f"a take_once kind is letters, digits and '_', not {kind!r}")


# --------------------------------------------------------------------------- one process


class InProcessState(SharedState):
    """All state in this process's memory: correct for exactly one server process.

    Every memory is bounded (`max_items`, oldest dropped first) and forgets
    expired entries, so a flood of calls cannot grow it without limit.
    """

    def __init__(self, clock: Clock = time.time, max_items: int = MAX_REMEMBERED):
        self._clock = clock
        self._max = max_items
        self._once: dict[str, OrderedDict[str, float]] = {}     # kind -> {key: forgotten at}
        self._active: dict[str, dict[str, float]] = {}          # caller -> {call_sid: lapses at}
        self._recent: dict[str, deque[float]] = {}              # caller -> admission times, oldest first
        self._owner: dict[str, str] = {}                        # call_sid -> caller
        self._admissions = 0
        self._after: OrderedDict[str, tuple[str, float]] = OrderedDict()  # call_sid -> (answer, forgotten at)
        self._instances: dict[str, tuple[InstanceInfo, float]] = {}      # id -> (info, forgotten at)
        self._leases: dict[str, tuple[str, float]] = {}                   # call_sid -> (owner, lapses at)
        self._checkpoints: dict[str, tuple[str, float]] = {}              # call_sid -> (checkpoint, forgotten at)
        self._calls: dict[str, float] = {}                                # call_sid -> orphaned at
        self._notes: OrderedDict[str, tuple[str, float]] = OrderedDict()  # kind:key -> (value, forgotten at)

    async def take_once(self, kind: str, key: str, ttl_s: float) -> bool:
        _check_kind(kind)
        now = self._clock()
        seen = self._once.setdefault(kind, OrderedDict())
        _forget_expired(seen, now, lambda until: until)
        until = seen.get(key)
        if until is not None and until > now:
            return False
        seen[key] = now + ttl_s
        seen.move_to_end(key)
        while len(seen) > self._max:
            seen.popitem(last=False)
        return True

    async def admit_caller(
        self, caller: str | None, call_sid: str, *, max_active: int, max_per_hour: int, lease_s: float,
    ) -> str | None:
        now = self._clock()
        key = caller or UNKNOWN_CALLER
        self._admissions += 1
        if self._admissions % 256 == 0:
            for other in list(self._active.keys() | self._recent.keys()):
                self._prune(other, now)
        self._prune(key, now)
        active = self._active.get(key, {})
        recent = self._recent.get(key, deque())
        if len(active) >= max_active:
            return _too_many_active(len(active), max_active)
        if len(recent) >= max_per_hour:
            return _too_many_recent(len(recent), max_per_hour)
        self._active.setdefault(key, {})[call_sid] = now + lease_s
        self._recent.setdefault(key, deque()).append(now)
        self._owner[call_sid] = key
        return None

    async def caller_streaming(self, call_sid: str, max_stream_s: float) -> None:
        now = self._clock()
        key = self._owner.get(call_sid)
        slots = self._active.get(key) if key is not None else None
        if slots is not None and call_sid in slots and slots[call_sid] > now:
            slots[call_sid] = now + max_stream_s

    async def caller_ended(self, call_sid: str) -> None:
        key = self._owner.pop(call_sid, None)
        if key is not None:
            self._active.get(key, {}).pop(call_sid, None)
            self._prune(key, self._clock())

    async def active_calls_of(self, caller: str | None) -> int:
        key = caller or UNKNOWN_CALLER
        self._prune(key, self._clock())
        return len(self._active.get(key, {}))

    def _prune(self, key: str, now: float) -> None:
        slots = self._active.get(key)
        if slots is not None:
            for sid in [s for s, until in slots.items() if until <= now]:
                del slots[sid]
                self._owner.pop(sid, None)
            if not slots:
                del self._active[key]
        times = self._recent.get(key)
        if times is not None:
            while times and times[0] <= now - HOUR_S:
                times.popleft()
            if not times:
                del self._recent[key]

    async def put_after_stream(self, call_sid: str, answer: str, ttl_s: float) -> None:
        now = self._clock()
        _forget_expired(self._after, now, lambda entry: entry[1])
        self._after[call_sid] = (answer, now + ttl_s)
        self._after.move_to_end(call_sid)
        while len(self._after) > self._max:
            self._after.popitem(last=False)

    async def pop_after_stream(self, call_sid: str) -> str | None:
        entry = self._after.pop(call_sid, None)
        if entry is None or entry[1] <= self._clock():
            return None
        return entry[0]

    async def put_note(self, kind: str, key: str, value: str, ttl_s: float) -> None:
        _check_kind(kind)
        now = self._clock()
        _forget_expired(self._notes, now, lambda entry: entry[1])
        name = f"{kind}:{key}"
        self._notes[name] = (value, now + ttl_s)
        self._notes.move_to_end(name)
        while len(self._notes) > self._max:
            self._notes.popitem(last=False)

    async def get_note(self, kind: str, key: str) -> str | None:
        _check_kind(kind)
        entry = self._notes.get(f"{kind}:{key}")
        if entry is None or entry[1] <= self._clock():
            return None
        return entry[0]

    async def take_note(self, kind: str, key: str) -> str | None:
        _check_kind(kind)
        entry = self._notes.pop(f"{kind}:{key}", None)
        if entry is None or entry[1] <= self._clock():
            return None
        return entry[0]

    async def heartbeat(self, instance_id: str, *, draining: bool, active_calls: int, ttl_s: float) -> None:
        now = self._clock()
        self._forget_silent_instances(now)
        info = InstanceInfo(instance_id, draining, active_calls, seen_at=now)
        self._instances[instance_id] = (info, now + ttl_s)

    async def instances(self) -> list[InstanceInfo]:
        self._forget_silent_instances(self._clock())
        return [info for _, (info, _) in sorted(self._instances.items())]

    def _forget_silent_instances(self, now: float) -> None:
        for instance_id in [i for i, (_, until) in self._instances.items() if until <= now]:
            del self._instances[instance_id]

    async def forget_instance(self, instance_id: str) -> None:
        self._instances.pop(instance_id, None)

    def _holder(self, call_sid: str, now: float) -> str | None:
        lease = self._leases.get(call_sid)
        if lease is None or lease[1] <= now:
            self._leases.pop(call_sid, None)
            return None
        return lease[0]

    def _checkpoint(self, call_sid: str, now: float) -> str | None:
        entry = self._checkpoints.get(call_sid)
        if entry is None or entry[1] <= now:
            self._checkpoints.pop(call_sid, None)
            return None
        return entry[0]

    async def claim_call(self, call_sid: str, owner: str, *, lease_s: float, orphan_s: float) -> Claim:
        now = self._clock()
        holder = self._holder(call_sid, now)
        if holder is not None and holder != owner:
            return Claim(False, holder=holder)
        if len(self._calls) >= self._max and call_sid not in self._calls:
            for sid in [sid for sid, at in self._calls.items() if at <= now]:
                self._calls.pop(sid)
        self._leases[call_sid] = (owner, now + lease_s)
        self._calls[call_sid] = now + lease_s + orphan_s
        return Claim(True, self._checkpoint(call_sid, now), owner)

    async def save_checkpoint(self, call_sid: str, owner: str, checkpoint: str | None, *, lease_s: float,
                              orphan_s: float, ttl_s: float) -> bool:
        now = self._clock()
        if self._holder(call_sid, now) != owner:
            return False
        self._leases[call_sid] = (owner, now + lease_s)
        self._calls[call_sid] = now + lease_s + orphan_s
        if checkpoint is not None:
            self._checkpoints[call_sid] = (checkpoint, now + ttl_s)
        return True

    async def load_checkpoint(self, call_sid: str) -> str | None:
        return self._checkpoint(call_sid, self._clock())

    async def release_call(self, call_sid: str, owner: str, *, keep_for_s: float | None) -> bool:
        now = self._clock()
        if self._holder(call_sid, now) != owner:
            return False
        del self._leases[call_sid]
        if keep_for_s is None:
            self._checkpoints.pop(call_sid, None)
            self._calls.pop(call_sid, None)
        else:
            entry = self._checkpoints.get(call_sid)
            if entry is not None:
                self._checkpoints[call_sid] = (entry[0], max(entry[1], now + keep_for_s))
            self._calls[call_sid] = now + keep_for_s
        return True

    async def orphaned_calls(self, limit: int = 20) -> list[tuple[str, str | None]]:
        now = self._clock()
        found = []
        for sid, at in sorted(self._calls.items(), key=lambda item: item[1]):
            if len(found) >= limit or at > now:
                break
            del self._calls[sid]
            if self._holder(sid, now) is not None:
                continue
            found.append((sid, self._checkpoint(sid, now)))
            self._checkpoints.pop(sid, None)
        return found

    async def ping(self) -> None:
        return None


def _forget_expired(items: OrderedDict, now: float, until_of: Callable) -> None:
    """Drop expired entries from the front (the oldest writes); later ones are
    checked on lookup, so mixed lifetimes stay correct, just kept a bit longer."""
    while items:
        first = next(iter(items.values()))
        if until_of(first) > now:
            break
        items.popitem(last=False)


# --------------------------------------------------------------------------- Redis

# Every script reads the time from Redis itself, so machines with skewed clocks
# agree on windows and lapses. Times are integer milliseconds; every key gets
# an expiry on every write, at the last moment anything in it still matters.

_NOW = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local function expire_with_last(key, also)
  local last = redis.call('ZRANGE', key, -1, -1, 'WITHSCORES')
  if last[2] then
    local ms = math.max(1, tonumber(last[2]) - now)
    redis.call('PEXPIRE', key, ms)
    if also then redis.call('PEXPIRE', also, ms) end
  end
end
"""

# KEYS: active (zset call_sid -> lapses at), admitted (zset "<ms>:<call_sid>" -> admitted at), slot (call_sid -> caller)
# ARGV: call_sid, max_active, max_per_hour, lease_ms, window_ms, caller
_ADMIT = _NOW + """
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now - tonumber(ARGV[5]))
local active = redis.call('ZCARD', KEYS[1])
if active >= tonumber(ARGV[2]) then return {'active', active} end
local recent = redis.call('ZCARD', KEYS[2])
if recent >= tonumber(ARGV[3]) then return {'recent', recent} end
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[4]), ARGV[1])
redis.call('ZADD', KEYS[2], now, now .. ':' .. ARGV[1])
redis.call('SET', KEYS[3], ARGV[6], 'PX', ARGV[4])
expire_with_last(KEYS[1])
redis.call('PEXPIRE', KEYS[2], ARGV[5])
return false
"""

# KEYS: active, slot; ARGV: call_sid, caller, max_stream_ms
_STREAMING = _NOW + """
if redis.call('GET', KEYS[2]) ~= ARGV[2] then return 0 end
local lapses = redis.call('ZSCORE', KEYS[1], ARGV[1])
if not lapses or tonumber(lapses) <= now then return 0 end
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[3]), ARGV[1])
redis.call('SET', KEYS[2], ARGV[2], 'PX', ARGV[3])
expire_with_last(KEYS[1])
return 1
"""

# KEYS: active, slot; ARGV: call_sid, caller
_ENDED = """
if redis.call('GET', KEYS[2]) ~= ARGV[2] then return 0 end
redis.call('ZREM', KEYS[1], ARGV[1])
redis.call('DEL', KEYS[2])
return 1
"""

# KEYS: active
_ACTIVE = _NOW + """
return redis.call('ZCOUNT', KEYS[1], '(' .. now, '+inf')
"""

_PRUNE_INSTANCES = """
for _, id in ipairs(redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now)) do redis.call('HDEL', KEYS[2], id) end
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
"""

# KEYS: instances (zset id -> forgotten at), instance info (hash id -> "<draining> <active_calls> <seen at ms>")
# ARGV: instance_id, draining (0/1), active_calls, ttl_ms
_HEARTBEAT = _NOW + _PRUNE_INSTANCES + """
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[4]), ARGV[1])
redis.call('HSET', KEYS[2], ARGV[1], ARGV[2] .. ' ' .. ARGV[3] .. ' ' .. now)
expire_with_last(KEYS[1], KEYS[2])
"""

# KEYS: as _HEARTBEAT; returns {{id, info}, ...}
_INSTANCES = _NOW + _PRUNE_INSTANCES + """
local out = {}
for _, id in ipairs(redis.call('ZRANGE', KEYS[1], 0, -1)) do
  local info = redis.call('HGET', KEYS[2], id)
  if info then out[#out + 1] = {id, info} end
end
return out
"""

# KEYS: lease (string owner), checkpoint (string), calls (zset call_sid -> orphaned at)
# ARGV: call_sid, owner, lease_ms, orphan_ms
_CLAIM = _NOW + """
local holder = redis.call('GET', KEYS[1])
if holder and holder ~= ARGV[2] then return {0, false, holder} end
redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', now - 86400000)
redis.call('ZADD', KEYS[3], now + tonumber(ARGV[3]) + tonumber(ARGV[4]), ARGV[1])
expire_with_last(KEYS[3])
return {1, redis.call('GET', KEYS[2]), ARGV[2]}
"""

# KEYS: lease, checkpoint, calls; ARGV: call_sid, owner, lease_ms, orphan_ms, ttl_ms, checkpoint (or '')
_SAVE = _NOW + """
if redis.call('GET', KEYS[1]) ~= ARGV[2] then return 0 end
redis.call('PEXPIRE', KEYS[1], ARGV[3])
redis.call('ZADD', KEYS[3], now + tonumber(ARGV[3]) + tonumber(ARGV[4]), ARGV[1])
expire_with_last(KEYS[3])
if ARGV[6] ~= '' then redis.call('SET', KEYS[2], ARGV[6], 'PX', ARGV[5]) end
return 1
"""

# KEYS: lease, checkpoint, calls; ARGV: call_sid, owner, keep_ms (or '' when the call is over)
_RELEASE = _NOW + """
if redis.call('GET', KEYS[1]) ~= ARGV[2] then return 0 end
redis.call('DEL', KEYS[1])
if ARGV[3] == '' then
  redis.call('DEL', KEYS[2])
  redis.call('ZREM', KEYS[3], ARGV[1])
else
  local keep = tonumber(ARGV[3])
  if redis.call('PTTL', KEYS[2]) < keep then redis.call('PEXPIRE', KEYS[2], keep) end
  redis.call('ZADD', KEYS[3], now + keep, ARGV[1])
  expire_with_last(KEYS[3])
end
return 1
"""

# KEYS: calls; ARGV: prefix, limit. Returns {call_sid, checkpoint or false, ...}
_ORPHANS = _NOW + """
local out = {}
for _, sid in ipairs(redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'LIMIT', 0, tonumber(ARGV[2]))) do
  redis.call('ZREM', KEYS[1], sid)
  if redis.call('EXISTS', ARGV[1] .. 'lease:' .. sid) == 0 then
    local checkpoint = redis.call('GET', ARGV[1] .. 'checkpoint:' .. sid)
    redis.call('DEL', ARGV[1] .. 'checkpoint:' .. sid)
    out[#out + 1] = sid
    out[#out + 1] = checkpoint
  end
end
return out
"""

#: Callers longer than this are keyed by their hash (a From is whatever the webhook sent).
_MAX_KEY_PART = 128


def _ms(seconds: float) -> int:
    return max(1, math.ceil(seconds * 1000))


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


class RedisState(SharedState):
    """All state in one Redis (a single server or a primary; not Redis Cluster:
    a caller's keys and its calls' keys are touched by one script).

    Atomic across processes: each decision is a single Lua script or `SET NX`.
    Every key expires; sorted sets are pruned by score on every write.
    `timeout_s` bounds connecting and each reply: a call waits at most about
    that long before it is refused.
    """

    def __init__(self, url: str, *, prefix: str = "telephony:", timeout_s: float = 1.5):
        try:
            import redis.asyncio as aioredis
            from redis.asyncio.retry import Retry
            from redis.backoff import NoBackoff
            from redis.exceptions import ConnectionError as RedisConnectionError
            from redis.exceptions import RedisError
        except ImportError:
            raise SettingsError("a Redis URL is set for the shared state but the redis package is not installed "
                                "(pip install 'redis>=5.0.1')") from None
        self._errors: tuple[type[BaseException], ...] = (RedisError, OSError)
        self.prefix = prefix
        parts = urlsplit(url)
        self.where = f"{parts.hostname}:{parts.port or 6379}" if parts.hostname else (parts.path or url.split("@")[-1])
        # One immediate retry, on connection errors only: a pooled connection
        # broken by a Redis restart is replaced at once; a timeout is not repeated.
        self._redis = aioredis.from_url(
            url, decode_responses=True, socket_timeout=timeout_s, socket_connect_timeout=timeout_s,
            retry=Retry(NoBackoff(), 1, supported_errors=(RedisConnectionError,)),
        )
        self._admit = self._redis.register_script(_ADMIT)
        self._streaming = self._redis.register_script(_STREAMING)
        self._ended = self._redis.register_script(_ENDED)
        self._active = self._redis.register_script(_ACTIVE)
        self._heartbeat = self._redis.register_script(_HEARTBEAT)
        self._instances = self._redis.register_script(_INSTANCES)
        self._claim = self._redis.register_script(_CLAIM)
        self._save = self._redis.register_script(_SAVE)
        self._release = self._redis.register_script(_RELEASE)
        self._orphans = self._redis.register_script(_ORPHANS)

    def _key(self, *parts: str) -> str:
        return self.prefix + ":".join(parts)

    def _caller_key(self, caller: str | None) -> str:
        key = caller or UNKNOWN_CALLER
        if len(key) > _MAX_KEY_PART:
            key = "sha256:" + hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest()
        return key

    async def _do(self, what: str, operation: Awaitable[T]) -> T:
        try:
            return await operation
        except self._errors as exc:
            raise SharedStateUnavailable(
                f"shared state unavailable: Redis at {self.where} failed during {what} ({_one_line(exc)})"
            ) from exc

    async def take_once(self, kind: str, key: str, ttl_s: float) -> bool:
        _check_kind(kind)
        taken = await self._do(f"take_once({kind})",
                               self._redis.set(self._key("once", kind, key), "1", nx=True, px=_ms(ttl_s)))
        return bool(taken)

    async def admit_caller(
        self, caller: str | None, call_sid: str, *, max_active: int, max_per_hour: int, lease_s: float,
    ) -> str | None:
        key = self._caller_key(caller)
        refused = await self._do("admit_caller", self._admit(
            keys=[self._key("active", key), self._key("admitted", key), self._key("slot", call_sid)],
            args=[call_sid, max_active, max_per_hour, _ms(lease_s), _ms(HOUR_S), key],
        ))
        if not refused:
            return None
        which, count = refused[0], int(refused[1])
        if which == "active":
            return _too_many_active(count, max_active)
        return _too_many_recent(count, max_per_hour)

    async def caller_streaming(self, call_sid: str, max_stream_s: float) -> None:
        slot = self._key("slot", call_sid)
        caller = await self._do("caller_streaming", self._redis.get(slot))
        if caller is not None:
            await self._do("caller_streaming", self._streaming(
                keys=[self._key("active", caller), slot], args=[call_sid, caller, _ms(max_stream_s)]))

    async def caller_ended(self, call_sid: str) -> None:
        slot = self._key("slot", call_sid)
        caller = await self._do("caller_ended", self._redis.get(slot))
        if caller is not None:
            await self._do("caller_ended", self._ended(keys=[self._key("active", caller), slot], args=[call_sid, caller]))

    async def active_calls_of(self, caller: str | None) -> int:
        count = await self._do("active_calls_of", self._active(keys=[self._key("active", self._caller_key(caller))]))
        return int(count)

    async def put_after_stream(self, call_sid: str, answer: str, ttl_s: float) -> None:
        await self._do("put_after_stream", self._redis.set(self._key("after", call_sid), answer, px=_ms(ttl_s)))

    async def pop_after_stream(self, call_sid: str) -> str | None:
        return await self._do("pop_after_stream", self._redis.getdel(self._key("after", call_sid)))

    async def put_note(self, kind: str, key: str, value: str, ttl_s: float) -> None:
        _check_kind(kind)
        await self._do(f"put_note({kind})", self._redis.set(self._key("note", kind, key), value, px=_ms(ttl_s)))

    async def get_note(self, kind: str, key: str) -> str | None:
        _check_kind(kind)
        return await self._do(f"get_note({kind})", self._redis.get(self._key("note", kind, key)))

    async def take_note(self, kind: str, key: str) -> str | None:
        _check_kind(kind)
        return await self._do(f"take_note({kind})", self._redis.getdel(self._key("note", kind, key)))

    async def heartbeat(self, instance_id: str, *, draining: bool, active_calls: int, ttl_s: float) -> None:
        await self._do("heartbeat", self._heartbeat(
            keys=[self._key("instances"), self._key("instance_info")],
            args=[instance_id, int(draining), int(active_calls), _ms(ttl_s)],
        ))

    async def instances(self) -> list[InstanceInfo]:
        rows = await self._do("instances", self._instances(keys=[self._key("instances"), self._key("instance_info")]))
        found = []
        for instance_id, info in rows:
            draining, active_calls, seen_ms = info.split(" ")
            found.append(InstanceInfo(instance_id, draining == "1", int(active_calls), float(seen_ms) / 1000))
        return sorted(found, key=lambda i: i.instance_id)

    async def forget_instance(self, instance_id: str) -> None:
        async def forget() -> None:
            async with self._redis.pipeline(transaction=True) as pipe:
                pipe.zrem(self._key("instances"), instance_id)
                pipe.hdel(self._key("instance_info"), instance_id)
                await pipe.execute()

        await self._do("forget_instance", forget())

    def _call_keys(self, call_sid: str) -> list[str]:
        return [self._key("lease", call_sid), self._key("checkpoint", call_sid), self._key("calls")]

    async def claim_call(self, call_sid: str, owner: str, *, lease_s: float, orphan_s: float) -> Claim:
        owned, checkpoint, holder = await self._do("claim_call", self._claim(
            keys=self._call_keys(call_sid), args=[call_sid, owner, _ms(lease_s), _ms(orphan_s)]))
        return Claim(bool(owned), checkpoint or None, holder or None)

    async def save_checkpoint(self, call_sid: str, owner: str, checkpoint: str | None, *, lease_s: float,
                              orphan_s: float, ttl_s: float) -> bool:
        saved = await self._do("save_checkpoint", self._save(
            keys=self._call_keys(call_sid),
            args=[call_sid, owner, _ms(lease_s), _ms(orphan_s), _ms(ttl_s), checkpoint or ""]))
        return bool(saved)

    async def load_checkpoint(self, call_sid: str) -> str | None:
        return await self._do("load_checkpoint", self._redis.get(self._key("checkpoint", call_sid)))

    async def release_call(self, call_sid: str, owner: str, *, keep_for_s: float | None) -> bool:
        released = await self._do("release_call", self._release(
            keys=self._call_keys(call_sid), args=[call_sid, owner, "" if keep_for_s is None else _ms(keep_for_s)]))
        return bool(released)

    async def orphaned_calls(self, limit: int = 20) -> list[tuple[str, str | None]]:
        flat = await self._do("orphaned_calls", self._orphans(keys=[self._key("calls")], args=[self.prefix, limit]))
        return [(flat[i], flat[i + 1] or None) for i in range(0, len(flat), 2)]

    async def ping(self) -> None:
        await self._do("ping", self._redis.ping())

    async def aclose(self) -> None:
        await self._do("aclose", self._redis.aclose())


def open_shared_state(redis_url: str | None, **kw) -> SharedState:
    """Redis when a URL is configured (any number of processes), else this process's memory."""
    if redis_url:
        return RedisState(redis_url, **kw)
    return InProcessState(**kw)
