"""Call records: every call, its transcript, tool calls and timeline, in one SQLite file.

Why a database and not the log: a record must outlive the process and be
queried later (`telephony calls`, `GET /calls`), and it must survive a crash
mid-call. So transcript pieces are written as they arrive: a piece appends to
the current turn row of its role, and what was said before a crash is already
committed.

Why a writer thread: sqlite3 blocks, and the event loop carries live audio.
`CallRecorder`'s methods only put a plain tuple on a bounded queue; one
background thread owns one connection (WAL mode) and commits a batch at most
`BATCH_WINDOW_S` after its first record. If the writer falls behind (a full
disk, a locked file), the queue drops its oldest record and logs one line:
a call is never slowed down for its own paperwork. Reads (CLI, API) open
their own connections; WAL lets them run beside the writer.

Where records live is a `RecordsStore` (records_schema.py), chosen by
`open_records`: this SQLite file by default, or PostgreSQL when DATABASE_URL
is set (records_postgres.py), for deployments with several servers or no
persistent disk. Both run the same migrations (records_schema.py) and the same
statements. Around the recorder: what it may keep about a person
(personal_data.py), what a call cost (pricing.py), reading records back
(records_query.py) and printing them (records_cli.py).
"""

from __future__ import annotations

import json
import logging
import sqlite3
import threading
import time
from collections import OrderedDict, deque
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

from .personal_data import MAX_TEXT_CHARS, scrubbed_json, status_payload
from .pricing import PriceTable, estimate_cost
from .records_schema import (
    SCHEMA_VERSION,
    RecordRejected,
    RecordsError,
    RecordsStore,
    RecordsUnavailable,
    migrate,
    user_version,
)
from .security import mask_phone
from .settings import is_postgres_url

__all__ = ["CallRecorder", "SqliteRecords", "open_records"]

log = logging.getLogger(__name__)

#: The writer commits at most this long after the first record of a batch arrives.
BATCH_WINDOW_S = 0.05
#: Records per transaction, at most.
MAX_BATCH = 500
#: Records waiting for the writer; beyond this the oldest is dropped.
MAX_QUEUE = 10_000
#: How long a connection waits for another one's lock before giving up.
BUSY_TIMEOUT_S = 5.0
#: Calls whose current turn the writer remembers (a call's entry goes at its end).
MAX_OPEN_CALLS = 10_000
#: While the database is unreachable, the writer retries after this long, doubling up to RETRY_MAX_S.
RETRY_MIN_S = 0.25
RETRY_MAX_S = 10.0

ROLES = ("caller", "agent")
#: The calls columns `call_outcome` may set.
OUTCOME_COLUMNS = ("answered_by", "amd_outcome", "transfer_target", "transfer_outcome")

# ----------------------------------------------------------------------------- the SQLite store


def _connect(path: Path) -> sqlite3.Connection:
    # isolation_level=None: transactions are ours (BEGIN/COMMIT), not the module's guesses.
    conn = sqlite3.connect(str(path), timeout=BUSY_TIMEOUT_S, isolation_level=None, check_same_thread=False)
    conn.row_factory = sqlite3.Row
    return conn


def _open_for_writing(path: Path) -> sqlite3.Connection:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        conn = _connect(path)
        try:
            # WAL: readers never block the writer; NORMAL: a commit survives a
            # process crash (only a power cut can lose the last ones), without an fsync each.
            conn.execute("PRAGMA journal_mode = WAL")
            conn.execute("PRAGMA synchronous = NORMAL")
            migrate(conn)
        except BaseException:
            conn.close()
            raise
    except RecordsError:
        raise
    except (OSError, sqlite3.Error) as exc:
        raise RecordsError(f"CALLS_DB_PATH={str(path)!r}: cannot open the call records database: {exc}") from None
    return conn


def _open_for_reading(path: Path | str) -> sqlite3.Connection | None:
    """A connection of its own, or None when no call was ever recorded there."""
    path = Path(path)
    if not path.is_file():
        return None
    try:
        conn = _connect(path)
        if user_version(conn) != SCHEMA_VERSION:
            migrate(conn)  # an older file (or a brand-new empty one): bring it up to date
        conn.execute("PRAGMA query_only = ON")
    except RecordsError:
        raise
    except sqlite3.Error as exc:
        raise RecordsError(f"cannot read the call records database {str(path)!r}: {exc}") from None
    return conn


class SqliteRecords(RecordsStore):
    """CALLS_DB_PATH: one file, in WAL mode so that readers run beside the writer."""

    recent_first = "c.started_at DESC, c.rowid DESC"

    def __init__(self, path: Path | str):
        self.path = Path(path)

    def __str__(self) -> str:
        return str(self.path)

    def __repr__(self) -> str:
        return f"SqliteRecords({str(self.path)!r})"

    def check(self) -> None:
        """A path that cannot hold the file stops start-up, naming CALLS_DB_PATH."""
        self.prepare()

    def prepare(self) -> None:
        _open_for_writing(self.path).close()

    def connect(self) -> sqlite3.Connection:
        return _open_for_writing(self.path)

    def write(self, conn: sqlite3.Connection, batch: Sequence[tuple], apply: Callable[[Any, tuple], None]) -> None:
        conn.execute("BEGIN IMMEDIATE")
        try:
            for record in batch:
                apply(conn, record)
            conn.execute("COMMIT")
        except BaseException as exc:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            if isinstance(exc, sqlite3.Error) and not isinstance(exc, sqlite3.OperationalError):
                raise RecordRejected(str(exc)) from exc
            raise  # full disk, I/O error, lock timeout: the batch is lost

    @contextmanager
    def reading(self) -> Iterator[sqlite3.Connection | None]:
        conn = _open_for_reading(self.path)
        try:
            yield conn
        finally:
            if conn is not None:
                conn.close()


def open_records(target: Any) -> RecordsStore:
    """The store for `target`: Settings (DATABASE_URL if set, else CALLS_DB_PATH), a
    postgresql:// URL, a SQLite path, or a store (returned as it is).

    A PostgreSQL store is only built, never connected, here: a missing psycopg
    raises RecordsError naming DATABASE_URL.
    """
    if isinstance(target, RecordsStore):
        return target
    if hasattr(target, "calls_db_path"):
        target = getattr(target, "database_url", None) or target.calls_db_path
    if isinstance(target, str) and is_postgres_url(target):
        from .records_postgres import PostgresRecords

        return PostgresRecords(target)
    return SqliteRecords(target)


# ----------------------------------------------------------------------------- the recorder


class CallRecorder:
    """Records calls without ever blocking the caller of its methods.

    Every method takes plain Python values, checks them, and queues a tuple;
    the writer thread applies the queue in batches. `flush()` waits for what
    was queued so far; `close()` flushes and stops the writer (the app calls
    it at shutdown). A bad value is logged and skipped, never raised.

    `target` is anything `open_records` takes: a store, Settings, a SQLite path
    or a postgresql:// URL. A database that cannot be reached (PostgreSQL
    down, at start-up or mid-call) is one warning line: records wait in the
    queue, the writer retries with backoff, and what is still queued is
    written when it is back.
    """

    def __init__(self, target: Any, settings: Any = None, *, max_queue: int = MAX_QUEUE, start: bool = True):
        self.store = open_records(target)
        self.path: Path | None = getattr(self.store, "path", None)  # the SQLite file, if that is the store
        self.prices = PriceTable.from_settings(settings)
        self.max_queue = max(1, int(max_queue))
        self._outage_since: float | None = None  # monotonic time the database became unreachable
        try:
            self.store.prepare()  # create and migrate now: a bad path stops start-up
        except RecordsUnavailable as exc:
            self._outage(exc)
        self._queue: deque[tuple] = deque()
        self._cond = threading.Condition()
        self._submitted = 0  # records ever queued
        self._done = 0       # records written, failed or dropped
        self._urgent = False
        self._closing = False
        self._abandoned = False  # close() gave up waiting: the writer stops retrying
        self._overflowing = False
        self.dropped = 0
        self._warned: set[str] = set()
        self._open_turns: OrderedDict[str, tuple[str, int]] = OrderedDict()  # call -> (role, seq) of its last turn
        self._thread: threading.Thread | None = None
        if start:
            self.start()

    def start(self) -> None:
        """Start the writer (the constructor does, unless `start=False`)."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="call-records-writer", daemon=True)
            self._thread.start()

    # ------------------------------------------------------------ what the bridge calls

    def call_started(self, call_sid: str, *, stream_sid: str | None, direction: str, caller: str | None,
                     called: str | None, at: float, agent: str | None = None) -> None:
        if not self._sid_ok(call_sid, "call_started"):
            return
        direction = (direction or "").lower()
        if direction.startswith("outbound"):
            direction = "outbound"
        elif direction != "inbound":
            self._warn_once("direction", "call records: direction %r is neither inbound nor outbound; stored as inbound", direction)
            direction = "inbound"
        self._put(("call_started", call_sid, stream_sid, direction,
                   mask_phone(caller) if caller else None, mask_phone(called) if called else None, float(at),
                   agent))

    def transcript(self, call_sid: str, role: str, text: str, at: float, new_turn: bool = False) -> None:
        if not self._sid_ok(call_sid, "transcript") or not text:
            return
        if role not in ROLES:
            self._warn_once(f"role:{role}", "call records: transcript role %r is not caller or agent; skipped", role)
            return
        self._put(("transcript", call_sid, role, str(text)[:MAX_TEXT_CHARS], float(at), bool(new_turn)))

    def tool_call(self, call_sid: str, *, call_id: str, name: str, args: dict, response: dict | None, outcome: str,
                  latency_ms: float | None, at: float) -> None:
        if not self._sid_ok(call_sid, "tool_call"):
            return
        self._put(("tool_call", call_sid, str(call_id), str(name), scrubbed_json(args or {}) or "{}",
                   scrubbed_json(response), str(outcome), None if latency_ms is None else float(latency_ms), float(at)))

    def event(self, call_sid: str, kind: str, detail: dict | None, at: float) -> None:
        if not self._sid_ok(call_sid, "event") or not kind:
            return
        self._put(("event", call_sid, str(kind), scrubbed_json(detail), float(at)))

    def usage(self, call_sid: str, *, prompt: int, response: int, total: int, by_modality: dict[str, int]) -> None:
        """Cumulative totals so far: each call overwrites the last."""
        if not self._sid_ok(call_sid, "usage"):
            return
        by = {str(k): int(v) for k, v in (by_modality or {}).items()}
        cost = estimate_cost(prompt, response, by, self.prices)
        self._put(("usage", call_sid, int(prompt), int(response), int(total), json.dumps(by), cost))

    def call_ended(self, call_sid: str, *, reason: str, summary: dict, at: float) -> None:
        if not self._sid_ok(call_sid, "call_ended"):
            return
        summary = {k: v for k, v in (summary or {}).items() if k != "transcript"}  # the turns table has it
        tokens = summary.get("tokens") if isinstance(summary.get("tokens"), dict) else None
        usage = None
        if tokens is not None:
            by = {str(k): int(v) for k, v in (tokens.get("by_modality") or {}).items()}
            p, r, t = (int(tokens.get(k) or 0) for k in ("prompt", "response", "total"))
            usage = (p, r, t, json.dumps(by), estimate_cost(p, r, by, self.prices))
        duration = summary.get("duration_s")
        self._put(("call_ended", call_sid, str(reason or ""), scrubbed_json(summary), float(at),
                   float(duration) if isinstance(duration, (int, float)) else None,
                   _int_or_none(summary.get("interruptions")), _int_or_none(summary.get("live_reconnects")), usage))

    def call_outcome(self, call_sid: str, **fields: str | None) -> None:
        """What became of the call beyond its end reason (OUTCOME_COLUMNS): an outbound
        call's answering-machine verdict, a transfer's outcome. Possibly from another
        instance than the one that held the call, possibly after it ended."""
        if not self._sid_ok(call_sid, "call_outcome"):
            return
        unknown = set(fields) - set(OUTCOME_COLUMNS)
        if unknown:
            raise ValueError(f"call_outcome: unknown column(s) {sorted(unknown)}")
        for column, value in fields.items():
            if value is not None:
                self._put(("call_outcome", call_sid, column, str(value)[:200], time.time()))

    def turn_timing(self, call_sid: str, *, role: str, seq: int, started_at: float, ended_at: float | None,
                    response_latency_ms: float | None, interrupted: bool) -> None:
        """When one side spoke, and for the agent how long it took to answer (observe.py)."""
        if not self._sid_ok(call_sid, "turn_timing") or role not in ROLES:
            return
        self._put(("turn_timing", call_sid, role, int(seq), float(started_at),
                   None if ended_at is None else float(ended_at),
                   None if response_latency_ms is None else float(response_latency_ms), 1 if interrupted else 0))

    def status_callback(self, call_sid: str, kind: str, payload: dict, at: float) -> None:
        if not self._sid_ok(call_sid, "status_callback"):
            return
        if kind not in ("call", "stream"):
            self._warn_once(f"kind:{kind}", "call records: status callback kind %r is not call or stream; skipped", kind)
            return
        payload = status_payload(payload or {})
        status = payload.get("StreamEvent") if kind == "stream" else payload.get("CallStatus")
        self._put(("status_callback", call_sid, kind, None if status is None else str(status),
                   scrubbed_json(payload) or "{}", float(at)))

    # ------------------------------------------------------------ life cycle

    def flush(self, timeout: float = 5) -> bool:
        """Wait until everything queued so far is written (or dropped); False on timeout."""
        with self._cond:
            target = self._submitted
            self._urgent = True
            self._cond.notify_all()
            if self._thread is None or not self._thread.is_alive():
                return self._done >= target
            return self._cond.wait_for(lambda: self._done >= target, timeout)

    def close(self, timeout: float = 10) -> None:
        """Write what is queued, then stop the writer. Later records are ignored (and logged once)."""
        with self._cond:
            if self._closing:
                return
            self._closing = True
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout)
            if self._thread.is_alive():
                log.warning("call records: the writer did not finish within %.0f s; %d record(s) may be lost",
                            timeout, len(self._queue))
                with self._cond:
                    self._abandoned = True
                    self._cond.notify_all()
        if self.dropped:
            log.warning("call records: %d record(s) were dropped in all because the writer fell behind", self.dropped)

    @property
    def pending(self) -> int:
        return len(self._queue)

    # ------------------------------------------------------------ queue

    def _sid_ok(self, call_sid: str, what: str) -> bool:
        if isinstance(call_sid, str) and call_sid:
            return True
        self._warn_once(f"sid:{what}", "call records: %s without a call sid; skipped", what)
        return False

    def _warn_once(self, key: str, msg: str, *args: object) -> None:
        if key not in self._warned and len(self._warned) < 1000:
            self._warned.add(key)
            log.warning(msg, *args)

    def _put(self, record: tuple) -> None:
        with self._cond:
            if self._closing:
                self._warn_once("closed", "call records: a %s arrived after the recorder closed; not recorded", record[0])
                return
            self._queue.append(record)
            self._submitted += 1
            self._drop_overflow()
            self._cond.notify_all()

    def _requeue(self, batch: list[tuple]) -> None:
        """Put a batch the database could not take back in front, to be retried first."""
        with self._cond:
            self._queue.extendleft(reversed(batch))
            self._drop_overflow()

    def _drop_overflow(self) -> None:
        """Beyond `max_queue`, drop the oldest records (one log line until the writer catches up)."""
        excess = len(self._queue) - self.max_queue
        if excess <= 0:
            return
        for _ in range(excess):
            self._queue.popleft()
        self.dropped += excess
        self._done += excess
        if not self._overflowing:
            self._overflowing = True
            log.warning("call records: the writer is behind (%d records queued); dropping the oldest "
                        "records until it catches up", len(self._queue))

    def _take_batch(self) -> list[tuple] | None:
        """The next batch, once it is due; None when closed and empty."""
        with self._cond:
            while not self._queue:
                if self._closing or self._abandoned:
                    return None
                self._cond.wait()
            if self._abandoned:
                return None
            deadline = time.monotonic() + BATCH_WINDOW_S
            while not (self._closing or self._urgent) and len(self._queue) < MAX_BATCH:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._cond.wait(left)
            batch = [self._queue.popleft() for _ in range(min(MAX_BATCH, len(self._queue)))]
            if not self._queue:
                self._urgent = False
            return batch

    def _finished(self, batch: list[tuple]) -> None:
        """The batch is written, or lost for good."""
        with self._cond:
            self._done += len(batch)
            if not self._queue:
                self._overflowing = False
            self._cond.notify_all()

    def _outage(self, exc: Exception) -> None:
        if self._outage_since is None:
            self._outage_since = time.monotonic()
            log.warning("call records: %s is unreachable (%s); calls go on, their records wait in the queue "
                        "(at most %d) and are written when it is back", self.store, exc, self.max_queue)

    def _back(self) -> None:
        if self._outage_since is not None:
            log.info("call records: %s is reachable again after %.1f s; writing the queued records",
                     self.store, time.monotonic() - self._outage_since)
            self._outage_since = None

    def _pause(self, seconds: float) -> None:
        """Wait before retrying; close() cuts the wait short once, for a last attempt."""
        with self._cond:
            closing = self._closing
            self._cond.wait_for(lambda: self._abandoned or self._closing != closing, seconds)

    # ------------------------------------------------------------ the writer thread

    def _run(self) -> None:
        conn: Any = None
        delay = RETRY_MIN_S
        try:
            while True:
                batch = self._take_batch()
                if batch is None:
                    return
                try:
                    if conn is None:
                        conn = self.store.connect()
                    self._write(conn, batch)
                except RecordsUnavailable as exc:  # PostgreSQL is down: keep the batch and wait for it
                    self._open_turns.clear()  # rows may not exist: look them up again
                    conn = _close_quietly(conn)
                    self._requeue(batch)
                    self._outage(exc)
                    self._pause(delay)
                    delay = min(delay * 2, RETRY_MAX_S)
                    continue
                except Exception as exc:  # the file went away, the disk is full: lose this batch, not the server
                    log.error("call records: could not write %d record(s): %s", len(batch), exc)
                    self._open_turns.clear()
                    conn = _close_quietly(conn)
                else:
                    self._back()
                    delay = RETRY_MIN_S
                self._finished(batch)
        finally:
            _close_quietly(conn)
            with self._cond:  # nobody waits for a writer that is gone
                self._done = max(self._done, self._submitted)
                self._cond.notify_all()

    def _write(self, conn: Any, batch: list[tuple]) -> None:
        try:
            self.store.write(conn, batch, self._apply)
        except RecordRejected:
            self._open_turns.clear()  # the batch was rolled back
            for record in batch:
                try:
                    self.store.write(conn, [record], self._apply)
                except RecordRejected as exc:
                    self._open_turns.clear()
                    cause = type(exc.__cause__ or exc).__name__
                    self._warn_once(f"apply:{record[0]}:{cause}", "call records: could not store a %s: %s", record[0], exc)

    def _apply(self, conn: Any, record: tuple) -> None:
        getattr(self, f"_apply_{record[0]}")(conn, *record[1:])

    @staticmethod
    def _stub(conn: Any, call_sid: str, at: float) -> None:
        """A calls row for records that arrive before `call_started` (or without it)."""
        conn.execute("INSERT INTO calls (call_sid, started_at) VALUES (?, ?) ON CONFLICT (call_sid) DO NOTHING",
                     (call_sid, at))

    def _apply_call_started(self, conn, call_sid, stream_sid, direction, caller, called, at, agent=None) -> None:
        conn.execute(
            """
            INSERT INTO calls (call_sid, stream_sid, direction, caller_masked, called_masked, started_at, agent)
            VALUES (?, ?, ?, ?, ?, ?, ?)
            ON CONFLICT (call_sid) DO UPDATE SET
                stream_sid = coalesce(excluded.stream_sid, calls.stream_sid),
                direction = excluded.direction,
                agent = coalesce(excluded.agent, calls.agent),
                caller_masked = coalesce(excluded.caller_masked, calls.caller_masked),
                called_masked = coalesce(excluded.called_masked, calls.called_masked),
                started_at = CASE WHEN calls.started_at IS NULL OR excluded.started_at < calls.started_at
                                  THEN excluded.started_at ELSE calls.started_at END
            """,
            (call_sid, stream_sid, direction, caller, called, at, agent),
        )
        # The first words of a call start a turn of their own, even if the sid was seen before.
        last = conn.execute("SELECT max(seq) AS seq FROM turns WHERE call_sid = ?", (call_sid,)).fetchone()["seq"]
        self._open_turns[call_sid] = ("", last or 0)

    def _apply_transcript(self, conn, call_sid, role, text, at, new_turn) -> None:
        current = self._open_turns.get(call_sid)
        if current is None:
            row = conn.execute("SELECT role, seq FROM turns WHERE call_sid = ? ORDER BY seq DESC LIMIT 1",
                               (call_sid,)).fetchone()
            current = (row["role"], row["seq"]) if row else ("", 0)
        last_role, seq = current
        if seq and last_role == role and not new_turn:
            conn.execute("UPDATE turns SET text = text || ?, updated_at = ? WHERE call_sid = ? AND seq = ?",
                         (text, at, call_sid, seq))
        else:
            self._stub(conn, call_sid, at)
            seq += 1
            conn.execute(
                "INSERT INTO turns (call_sid, seq, role, text, started_at, updated_at) VALUES (?, ?, ?, ?, ?, ?)",
                (call_sid, seq, role, text, at, at),
            )
        self._open_turns[call_sid] = (role, seq)
        self._open_turns.move_to_end(call_sid)
        while len(self._open_turns) > MAX_OPEN_CALLS:
            self._open_turns.popitem(last=False)

    def _apply_tool_call(self, conn, call_sid, call_id, name, args, result, outcome, latency_ms, at) -> None:
        self._stub(conn, call_sid, at)
        conn.execute(
            "INSERT INTO tool_calls (call_sid, call_id, name, args, result, outcome, latency_ms, at) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (call_sid, call_id, name, args, result, outcome, latency_ms, at),
        )

    def _apply_event(self, conn, call_sid, kind, detail, at) -> None:
        self._stub(conn, call_sid, at)
        conn.execute("INSERT INTO events (call_sid, at, kind, detail) VALUES (?, ?, ?, ?)", (call_sid, at, kind, detail))
        if kind == "interruption":
            conn.execute("UPDATE calls SET interruptions = interruptions + 1 WHERE call_sid = ?", (call_sid,))
        elif kind == "reconnect":
            conn.execute("UPDATE calls SET reconnects = reconnects + 1 WHERE call_sid = ?", (call_sid,))

    def _apply_usage(self, conn, call_sid, prompt, response, total, by_modality, cost) -> None:
        conn.execute("INSERT INTO calls (call_sid) VALUES (?) ON CONFLICT (call_sid) DO NOTHING", (call_sid,))
        conn.execute(
            "UPDATE calls SET prompt_tokens = ?, response_tokens = ?, total_tokens = ?, tokens_by_modality = ?, "
            "estimated_cost_usd = ? WHERE call_sid = ?",
            (prompt, response, total, by_modality, cost, call_sid),
        )

    def _apply_call_ended(self, conn, call_sid, reason, summary, at, duration, interruptions, reconnects, usage) -> None:
        self._stub(conn, call_sid, at)
        conn.execute(
            """
            UPDATE calls SET
                ended_at = ?, end_reason = ?, summary = ?,
                duration_s = coalesce(?, CASE WHEN started_at IS NULL THEN NULL
                                              ELSE round(CAST(? - started_at AS NUMERIC), 2) END),
                interruptions = coalesce(?, interruptions),
                reconnects = coalesce(?, reconnects)
            WHERE call_sid = ?
            """,
            (at, reason, summary, duration, at, interruptions, reconnects, call_sid),
        )
        if usage is not None:
            self._apply_usage(conn, call_sid, *usage)
        self._open_turns.pop(call_sid, None)

    def _apply_turn_timing(self, conn, call_sid, role, seq, started_at, ended_at, latency_ms, interrupted) -> None:
        self._stub(conn, call_sid, started_at)
        conn.execute(
            "INSERT INTO turn_timings (call_sid, role, seq, started_at, ended_at, response_latency_ms, interrupted) "
            "VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (call_sid, role, seq) DO UPDATE SET "
            "ended_at = excluded.ended_at, response_latency_ms = excluded.response_latency_ms, "
            "interrupted = excluded.interrupted",
            (call_sid, role, seq, started_at, ended_at, latency_ms, interrupted),
        )

    def _apply_call_outcome(self, conn, call_sid, column, value, at) -> None:
        assert column in OUTCOME_COLUMNS
        self._stub(conn, call_sid, at)
        conn.execute(f"UPDATE calls SET {column} = ? WHERE call_sid = ?", (value, call_sid))

    def _apply_status_callback(self, conn, call_sid, kind, status, payload, at) -> None:
        conn.execute(
            "INSERT INTO status_callbacks (call_sid, kind, status, payload, received_at) VALUES (?, ?, ?, ?, ?)",
            (call_sid, kind, status, payload, at),
        )


def _close_quietly(conn: Any) -> None:
    """Close a connection that may already be broken; always None, for `conn = _close_quietly(conn)`."""
    if conn is not None:
        try:
            conn.close()
        except Exception:
            pass
    return None


def _int_or_none(value: Any) -> int | None:
    return int(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None
