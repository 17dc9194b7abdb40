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
    "UNKNOWN_CALLER", "HOUR_S", "MAX_REMEMBERED",
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

    async def ping(self) -> None:
        await self._do("ping", self._redis.ping())

    async def aclose(self) -> None:
        await self._do("aclose", self._redis.aclose())


def open_shared_state(redis_url: str | None, **kw) -> SharedState:
    """Redis when a URL is configured (any number of processes), else this process's memory."""
    if redis_url:
        return RedisState(redis_url, **kw)
    return InProcessState(**kw)
