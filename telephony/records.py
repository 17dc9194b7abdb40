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

Personal data: phone numbers are stored masked (`security.mask_phone`), also
inside status-callback payloads and tool arguments; secret-looking tool
arguments (`verification`, `token`, ...) are stored as `***`. Transcripts keep
what was said, which may include anything the caller chose to say.

Schema changes are migrations: `MIGRATIONS[n]` takes a database from version n
to n + 1 (`PRAGMA user_version`), each in its own transaction, so a later
version can add columns to a file an older one wrote.

Where records live is a `RecordsStore`, chosen by `open_records`: this SQLite
file by default, or PostgreSQL when DATABASE_URL is set (records_postgres.py),
for deployments with several servers or no persistent disk. Both run the same
migrations and the same statements: they are written in SQL both accept, with
`?` placeholders, in SQLite's spelling of the column types, which the
PostgreSQL store translates. `list_calls` and `get_call` take a store, a path
or a URL, so the CLI and the API read either the same way.
"""

from __future__ import annotations

import json
import logging
import math
import re
import sqlite3
import threading
import time
from collections import OrderedDict, deque
from dataclasses import dataclass
from pathlib import Path
from contextlib import contextmanager
from typing import Any, Callable, Iterable, Iterator, Mapping, Sequence

from .errors import TelephonyError
from .security import mask_phone
from .settings import is_postgres_url

__all__ = [
    "CallRecorder", "RecordsError", "RecordsUnavailable", "RecordsStore", "SqliteRecords", "open_records",
    "PriceTable", "estimate_cost", "migrate", "list_calls", "get_call", "MIGRATIONS", "SCHEMA_VERSION",
    "format_call_list", "format_call",
]

log = logging.getLogger("telephony.records")

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
#: Text longer than this (one transcript piece, one JSON value) is cut.
MAX_TEXT_CHARS = 100_000
#: While the database is unreachable, the writer retries after this long, doubling up to RETRY_MAX_S.
RETRY_MIN_S = 0.25
RETRY_MAX_S = 10.0

ROLES = ("caller", "agent")

# ----------------------------------------------------------------------------- schema

MIGRATIONS: tuple[tuple[str, ...], ...] = (
    # 0 -> 1: the first schema.
    (
        """
        CREATE TABLE calls (
            call_sid           TEXT PRIMARY KEY,
            stream_sid         TEXT,
            direction          TEXT NOT NULL DEFAULT 'inbound' CHECK (direction IN ('inbound', 'outbound')),
            caller_masked      TEXT,              -- security.mask_phone(From): never the number itself
            called_masked      TEXT,
            started_at         REAL,              -- epoch seconds
            ended_at           REAL,
            duration_s         REAL,
            end_reason         TEXT,
            interruptions      INTEGER NOT NULL DEFAULT 0,
            reconnects         INTEGER NOT NULL DEFAULT 0,
            prompt_tokens      INTEGER NOT NULL DEFAULT 0,
            response_tokens    INTEGER NOT NULL DEFAULT 0,
            total_tokens       INTEGER NOT NULL DEFAULT 0,
            tokens_by_modality TEXT NOT NULL DEFAULT '{}',  -- JSON {"AUDIO": n, "TEXT": n}
            estimated_cost_usd REAL,
            summary            TEXT               -- JSON: the bridge's call summary
        )
        """,
        "CREATE INDEX calls_by_start ON calls (started_at)",
        """
        CREATE TABLE turns (
            id         INTEGER PRIMARY KEY,
            call_sid   TEXT NOT NULL,
            seq        INTEGER NOT NULL,          -- 1, 2, ... within the call
            role       TEXT NOT NULL CHECK (role IN ('caller', 'agent')),
            text       TEXT NOT NULL,
            started_at REAL NOT NULL,
            updated_at REAL NOT NULL,
            UNIQUE (call_sid, seq)
        )
        """,
        """
        CREATE TABLE tool_calls (
            id         INTEGER PRIMARY KEY,
            call_sid   TEXT NOT NULL,
            call_id    TEXT NOT NULL,
            name       TEXT NOT NULL,
            args       TEXT NOT NULL,             -- JSON
            result     TEXT,                      -- JSON, null when cancelled
            outcome    TEXT NOT NULL,             -- ok | error | cancelled | ...
            latency_ms REAL,
            at         REAL NOT NULL
        )
        """,
        "CREATE INDEX tool_calls_by_call ON tool_calls (call_sid, at)",
        """
        CREATE TABLE events (
            id       INTEGER PRIMARY KEY,
            call_sid TEXT NOT NULL,
            at       REAL NOT NULL,
            kind     TEXT NOT NULL,               -- interruption | reconnect | dtmf | transfer | hangup | ...
            detail   TEXT                         -- JSON
        )
        """,
        "CREATE INDEX events_by_call ON events (call_sid, at)",
        """
        CREATE TABLE status_callbacks (
            id          INTEGER PRIMARY KEY,
            call_sid    TEXT NOT NULL,            -- no foreign key: callbacks may come before, after or without a call row
            kind        TEXT NOT NULL CHECK (kind IN ('call', 'stream')),
            status      TEXT,                     -- CallStatus or StreamEvent
            payload     TEXT NOT NULL,            -- JSON, numbers masked
            received_at REAL NOT NULL
        )
        """,
        "CREATE INDEX status_callbacks_by_call ON status_callbacks (call_sid, received_at)",
    ),
    # 1 -> 2: who spoke when, and how long each agent turn took to answer (observe.py).
    (
        """
        CREATE TABLE turn_timings (
            id                  INTEGER PRIMARY KEY,
            call_sid            TEXT NOT NULL,
            role                TEXT NOT NULL CHECK (role IN ('caller', 'agent')),
            seq                 INTEGER NOT NULL,  -- 1, 2, ... per role within the call
            started_at          REAL NOT NULL,     -- caller: speech began; agent: first audio sent to Twilio
            ended_at            REAL,              -- caller: speech ended; agent: last audio played (or cut)
            response_latency_ms REAL,              -- agent: from the caller's end of speech to its first audio
            interrupted         INTEGER NOT NULL DEFAULT 0,  -- agent: 1 if the caller barged in
            UNIQUE (call_sid, role, seq)
        )
        """,
        "CREATE INDEX turn_timings_by_call ON turn_timings (call_sid, started_at)",
    ),
)
SCHEMA_VERSION = len(MIGRATIONS)


class RecordsError(TelephonyError):
    """The call records database cannot be opened, or was written by a newer version."""


class RecordsUnavailable(TelephonyError):
    """The records database cannot be reached for now (PostgreSQL down, restarting, cut
    off): nothing was written, and the same records can be written once it is back."""


class RecordRejected(Exception):
    """The database refused one of a batch's records (a constraint, a value it cannot
    hold); the batch was rolled back, and its other records can be written without it."""


def migrate(conn: sqlite3.Connection, migrations: Sequence[Sequence[str]] = MIGRATIONS) -> int:
    """Bring the database to `len(migrations)`; return the version it was at.

    Each step runs in its own `BEGIN IMMEDIATE` transaction and re-reads the
    version inside it, so two processes starting at once (the server and the
    CLI) cannot both apply a step. Running it again does nothing.
    """
    start = _user_version(conn)
    if start > len(migrations):
        raise RecordsError(
            f"the call records database is at schema version {start}, newer than this code knows "
            f"({len(migrations)}): upgrade the package, or point CALLS_DB_PATH at another file"
        )
    for target in range(start + 1, len(migrations) + 1):
        conn.execute("BEGIN IMMEDIATE")
        try:
            if _user_version(conn) < target:
                for statement in migrations[target - 1]:
                    conn.execute(statement)
                conn.execute(f"PRAGMA user_version = {int(target)}")
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
    return start


def _user_version(conn: sqlite3.Connection) -> int:
    return int(conn.execute("PRAGMA user_version").fetchone()[0])


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


# ----------------------------------------------------------------------------- where records live


class RecordsStore:
    """A records database, as the recorder and the readers see it.

    The writer thread calls `connect` and `write`; `list_calls` and `get_call`
    read through `reading`. Statements use `?` placeholders and name their
    result columns, so one text serves every store.
    """

    #: The order of `list_calls`: newest first, then a tie-break the store can offer.
    recent_first = "c.started_at DESC"

    def check(self) -> None:
        """Raise RecordsError if the server should not start with this store."""

    def prepare(self) -> None:
        """Create and migrate now. RecordsError: start-up should stop; RecordsUnavailable:
        it cannot be reached now (the recorder queues and retries)."""

    def connect(self) -> Any:
        """The writer's own connection, migrated. May raise RecordsUnavailable."""
        raise NotImplementedError

    def write(self, conn: Any, batch: Sequence[tuple], apply: Callable[[Any, tuple], None]) -> None:
        """`apply` every record of the batch in one transaction, all or nothing.

        Raises RecordsUnavailable (keep the batch, retry later), RecordRejected
        (one record is bad: write them one at a time) or anything else (the
        batch is lost).
        """
        raise NotImplementedError

    def reading(self) -> Any:
        """A context manager giving a connection to read from, or None when nothing was ever recorded."""
        raise NotImplementedError


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


# ----------------------------------------------------------------------------- cost


@dataclass(frozen=True)
class PriceTable:
    """USD per million tokens, by modality (TEXT, and every other modality priced as
    audio). `cached_fraction` is the share of the input price a cached prompt token
    costs: 1.0 assumes no discount, as no Live model has a published cache price.
    The defaults are gemini-3.8-live's (MODEL_PRICES); the README gives each price's
    date and source."""

    audio_input: float = 0.75
    audio_output: float = 4.50
    text_input: float = 0.75
    text_output: float = 4.50
    cached_fraction: float = 1.0

    @classmethod
    def for_model(cls, model: str | None) -> "PriceTable":
        """The table of `model`'s family; an unknown model gets the default model's
        prices, so a cost is always estimated (and the README says to set yours)."""
        for prefix, table in MODEL_PRICES.items():
            if model and str(model).removeprefix("models/").startswith(prefix):
                return table
        return cls()

    @classmethod
    def from_settings(cls, settings: Any) -> "PriceTable":
        """The model's table, with every PRICE_* variable that is set taking precedence."""
        base = cls.for_model(getattr(settings, "gemini_model", None))
        overrides = {
            kind: float(value)
            for kind in ("audio_input", "audio_output", "text_input", "text_output")
            if (value := getattr(settings, f"price_{kind}_per_mtok", None)) is not None
        }
        if (fraction := getattr(settings, "price_cached_input_fraction", None)) is not None:
            overrides["cached_fraction"] = float(fraction)
        return cls(**{**vars(base), **overrides})


#: Prices per Live model family, by model-name prefix (the README lists each one's
#: date and source). 3.8 Live: third-party gateways' figures ($0.75 in, $4.50 out, no
#: modality split), as Google's page gave none. 2.5 native audio: Google's published
#: Live prices (audio in $3, out $12; text in $0.50, out $2), the same on Vertex.
MODEL_PRICES: dict[str, PriceTable] = {
    "gemini-3.8-live": PriceTable(),
    "gemini-2.5-flash-native-audio": PriceTable(audio_input=3.0, audio_output=12.0, text_input=0.5, text_output=2.0),
    "gemini-live-2.5-flash": PriceTable(audio_input=3.0, audio_output=12.0, text_input=0.5, text_output=2.0),
}


_OUTPUT_SIDES = ("RESPONSE", "OUTPUT", "CANDIDATES")


def estimate_cost(prompt: int, response: int, by_modality: Mapping[str, int], prices: PriceTable) -> float:
    """Estimated USD for a call's tokens.

    `by_modality` keys are modalities of input tokens (`AUDIO`, `TEXT`, ... from
    `prompt_tokens_details`), or `response:AUDIO` / `output:TEXT` for output
    tokens. TEXT is priced as text, every other modality (audio, image, video,
    unspecified) as audio. The billed extras `live.py` reports have their own prefix:

    - `thoughts:` is thinking, billed as output (and not in the prompt or response);
    - `tool_use:` is tool-use prompt tokens, billed as input on top of the prompt;
    - `cached:` tokens are part of the prompt, billed at `cached_fraction` of the
      input price: they are taken out of the same modality's input.

    Rules where the details fall short:

    - no output details: the response is audio (a native-audio model speaks);
    - input details adding up to more than `prompt` were merged with the
      response's (as `live.py` once reported them): the response is taken out of AUDIO;
    - input tokens no detail accounts for are priced as audio (the dearer guess).
    """
    inputs: dict[str, int] = {}
    outputs: dict[str, int] = {}
    extras: dict[str, dict[str, int]] = {"THOUGHTS": {}, "TOOL_USE": {}, "CACHED": {}}
    for key, count in by_modality.items():
        if not isinstance(count, (int, float)) or isinstance(count, bool) or count <= 0:
            continue
        side, sep, modality = str(key).upper().rpartition(":")
        if not sep:
            side, modality = "", str(key).upper()
        bucket = outputs if side in _OUTPUT_SIDES else extras.get(side, inputs)
        bucket[modality] = bucket.get(modality, 0) + int(count)
    prompt, response = max(0, int(prompt)), max(0, int(response))
    if not outputs:
        outputs = {"AUDIO": response}
        if sum(inputs.values()) > prompt and response:
            inputs["AUDIO"] = max(0, inputs.get("AUDIO", 0) - response)
    unaccounted = prompt - sum(inputs.values())
    if unaccounted > 0:
        inputs["AUDIO"] = inputs.get("AUDIO", 0) + unaccounted
    for modality, count in extras["CACHED"].items():
        # A cached token of unknown modality is taken from, and priced like, audio.
        price_as = "TEXT" if modality == "TEXT" else "AUDIO"
        inputs[price_as] = max(0, inputs.get(price_as, 0) - count)

    def input_price(modality: str) -> float:
        return prices.text_input if modality == "TEXT" else prices.audio_input

    def output_price(modality: str) -> float:
        return prices.text_output if modality == "TEXT" else prices.audio_output

    usd = sum(count * input_price(m) for m, count in inputs.items())
    usd += sum(count * input_price(m) for m, count in extras["TOOL_USE"].items())
    usd += sum(count * input_price(m) * prices.cached_fraction for m, count in extras["CACHED"].items())
    usd += sum(count * output_price(m) for m, count in outputs.items())
    usd += sum(count * output_price(m) for m, count in extras["THOUGHTS"].items())
    return round(usd / 1_000_000, 6)


# ----------------------------------------------------------------------------- personal data

_NUMBER_RE = re.compile(r"\+\d{7,15}(?!\d)")
#: Status-callback fields that hold a phone number or identity: stored masked.
_IDENTITY_FIELDS = frozenset({"From", "To", "Caller", "Called", "ForwardedFrom"})
#: Fields not worth keeping about a person (or a secret): not stored at all.
_DROPPED_FIELDS = re.compile(r"(From|To|Caller|Called)(City|Zip)|CallerName|CallToken")
#: Tool arguments that are secrets or proofs of identity: stored as "***".
_SECRET_ARGS = frozenset({"verification", "token", "auth_token", "api_key", "password", "pin", "secret"})


def _mask_text(text: str) -> str:
    return _NUMBER_RE.sub(lambda m: mask_phone(m.group(0)), text)


def _scrub(value: Any, depth: int = 0) -> Any:
    """A JSON-ready copy with phone numbers masked and secret-looking fields hidden."""
    if depth > 20:
        return "…"
    if isinstance(value, Mapping):
        return {
            str(k): "***" if str(k).lower() in _SECRET_ARGS else _scrub(v, depth + 1)
            for k, v in value.items()
        }
    if isinstance(value, (list, tuple)):
        return [_scrub(v, depth + 1) for v in value]
    if isinstance(value, str):
        return _mask_text(value[:MAX_TEXT_CHARS])
    if value is None or isinstance(value, (bool, int)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    return _mask_text(str(value)[:MAX_TEXT_CHARS])


def _json(value: Any) -> str | None:
    return None if value is None else json.dumps(_scrub(value), separators=(",", ":"), ensure_ascii=False)


def _status_payload(payload: Mapping[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in payload.items():
        key = str(key)
        if _DROPPED_FIELDS.fullmatch(key):
            continue
        out[key] = mask_phone(str(value)) if key in _IDENTITY_FIELDS and value else value
    return out


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
                     called: str | None, at: float) -> None:
        if not self._sid_ok(call_sid, "call_started"):
            return
        direction = (direction or "").lower()
        if direction.startswith("outbound"):
            direction = "outbound"
        elif direction != "inbound":
            self._warn_once("direction", "call records: direction %r is neither inbound nor outbound; stored as inbound", direction)
            direction = "inbound"
        self._put(("call_started", call_sid, stream_sid, direction,
                   mask_phone(caller) if caller else None, mask_phone(called) if called else None, float(at)))

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
        self._put(("tool_call", call_sid, str(call_id), str(name), _json(args or {}) or "{}", _json(response),
                   str(outcome), None if latency_ms is None else float(latency_ms), float(at)))

    def event(self, call_sid: str, kind: str, detail: dict | None, at: float) -> None:
        if not self._sid_ok(call_sid, "event") or not kind:
            return
        self._put(("event", call_sid, str(kind), _json(detail), float(at)))

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
        self._put(("call_ended", call_sid, str(reason or ""), _json(summary), float(at),
                   float(duration) if isinstance(duration, (int, float)) else None,
                   _int_or_none(summary.get("interruptions")), _int_or_none(summary.get("live_reconnects")), usage))

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
        payload = _status_payload(payload or {})
        status = payload.get("StreamEvent") if kind == "stream" else payload.get("CallStatus")
        self._put(("status_callback", call_sid, kind, None if status is None else str(status), _json(payload) or "{}",
                   float(at)))

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

    def _apply_call_started(self, conn, call_sid, stream_sid, direction, caller, called, at) -> None:
        conn.execute(
            """
            INSERT INTO calls (call_sid, stream_sid, direction, caller_masked, called_masked, started_at)
            VALUES (?, ?, ?, ?, ?, ?)
            ON CONFLICT (call_sid) DO UPDATE SET
                stream_sid = coalesce(excluded.stream_sid, calls.stream_sid),
                direction = excluded.direction,
                caller_masked = coalesce(excluded.caller_masked, calls.caller_masked),
                called_masked = coalesce(excluded.called_masked, calls.called_masked),
                started_at = CASE WHEN calls.started_at IS NULL OR excluded.started_at < calls.started_at
                                  THEN excluded.started_at ELSE calls.started_at END
            """,
            (call_sid, stream_sid, direction, caller, called, at),
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


# ----------------------------------------------------------------------------- reading


def _open_for_reading(path: Path | str) -> sqlite3.Connection | None:
    """A connection of its own, or None when no call was ever recorded there."""
    path = Path(path)
    if not path.is_file():
        return None
    try:
        conn = _connect(path)
        if _user_version(conn) != SCHEMA_VERSION:
            migrate(conn)  # an older file (or a brand-new empty one): bring it up to date
        conn.execute("PRAGMA query_only = ON")
    except RecordsError:
        raise
    except sqlite3.Error as exc:
        raise RecordsError(f"cannot read the call records database {str(path)!r}: {exc}") from None
    return conn


def _loads(text: str | None) -> Any:
    if text is None:
        return None
    try:
        return json.loads(text)
    except ValueError:
        return text


def _call_dict(row: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "call_sid": row["call_sid"],
        "stream_sid": row["stream_sid"],
        "direction": row["direction"],
        "caller_masked": row["caller_masked"],
        "called_masked": row["called_masked"],
        "started_at": row["started_at"],
        "ended_at": row["ended_at"],
        "duration_s": row["duration_s"],
        "end_reason": row["end_reason"],
        "interruptions": row["interruptions"],
        "reconnects": row["reconnects"],
        "tokens": {
            "prompt": row["prompt_tokens"], "response": row["response_tokens"], "total": row["total_tokens"],
            "by_modality": _loads(row["tokens_by_modality"]) or {},
        },
        "estimated_cost_usd": row["estimated_cost_usd"],
    }


def list_calls(target: Any, limit: int = 20) -> list[dict[str, Any]]:
    """The most recent calls first, each with its number of transcript turns.

    `target`: what `open_records` takes (a store, Settings, a path or a URL).
    """
    store = open_records(target)
    limit = max(1, min(int(limit), 1000))
    with store.reading() as conn:
        if conn is None:
            return []
        rows = conn.execute(
            f"""
            SELECT c.*, (SELECT count(*) FROM turns t WHERE t.call_sid = c.call_sid) AS turn_count
            FROM calls c ORDER BY {store.recent_first} LIMIT ?
            """,
            (limit,),
        ).fetchall()
    return [{**_call_dict(row), "turn_count": row["turn_count"]} for row in rows]


def get_call(target: Any, call_sid: str) -> dict[str, Any] | None:
    """One call with its turns, tool calls, events and status callbacks, and all of
    them merged into one `timeline` ordered by time. None if nothing is known of it.

    Status callbacks count as knowing a call: Twilio may report calls that never
    reached a stream (turned away, unanswered outbound calls).
    """
    with open_records(target).reading() as conn:
        if conn is None:
            return None
        call = conn.execute("SELECT * FROM calls WHERE call_sid = ?", (call_sid,)).fetchone()
        turns = [
            {"seq": r["seq"], "role": r["role"], "text": r["text"], "started_at": r["started_at"], "updated_at": r["updated_at"]}
            for r in conn.execute("SELECT * FROM turns WHERE call_sid = ? ORDER BY seq", (call_sid,))
        ]
        tools = [
            {"call_id": r["call_id"], "name": r["name"], "args": _loads(r["args"]), "result": _loads(r["result"]),
             "outcome": r["outcome"], "latency_ms": r["latency_ms"], "at": r["at"]}
            for r in conn.execute("SELECT * FROM tool_calls WHERE call_sid = ? ORDER BY at, id", (call_sid,))
        ]
        events = [
            {"at": r["at"], "kind": r["kind"], "detail": _loads(r["detail"])}
            for r in conn.execute("SELECT * FROM events WHERE call_sid = ? ORDER BY at, id", (call_sid,))
        ]
        callbacks = [
            {"kind": r["kind"], "status": r["status"], "payload": _loads(r["payload"]), "received_at": r["received_at"]}
            for r in conn.execute("SELECT * FROM status_callbacks WHERE call_sid = ? ORDER BY received_at, id", (call_sid,))
        ]
        timings = [
            {"role": r["role"], "seq": r["seq"], "started_at": r["started_at"], "ended_at": r["ended_at"],
             "response_latency_ms": r["response_latency_ms"], "interrupted": bool(r["interrupted"])}
            for r in conn.execute("SELECT * FROM turn_timings WHERE call_sid = ? ORDER BY started_at, id", (call_sid,))
        ]
    if call is None and not (turns or tools or events or callbacks):
        return None
    record: dict[str, Any] = _call_dict(call) if call is not None else {"call_sid": call_sid}
    record["summary"] = _loads(call["summary"]) if call is not None else None
    timeline: list[tuple[float, int, dict[str, Any]]] = []
    for order, (kind, items, at_key) in enumerate(
        (("status_callback", callbacks, "received_at"), ("turn", turns, "started_at"),
         ("tool_call", tools, "at"), ("event", events, "at"))
    ):
        for item in items:
            timeline.append((item[at_key], order, {"type": kind, "at": item[at_key], **{k: v for k, v in item.items() if k != at_key}}))
    timeline.sort(key=lambda entry: (entry[0], entry[1]))
    record.update(turns=turns, tool_calls=tools, events=events, status_callbacks=callbacks,
                  timeline=[entry for _, _, entry in timeline], turn_timings=timings,
                  response_latency=_latency_summary(timings))
    return record


def _latency_summary(timings: list[dict[str, Any]]) -> dict[str, Any]:
    """The agent turns' response latencies at a glance: count, median and worst (ms)."""
    values = sorted(t["response_latency_ms"] for t in timings
                    if t["role"] == "agent" and t["response_latency_ms"] is not None)
    if not values:
        return {"turns": 0, "median_ms": None, "max_ms": None}
    mid = len(values) // 2
    median = values[mid] if len(values) % 2 else (values[mid - 1] + values[mid]) / 2
    return {"turns": len(values), "median_ms": round(median, 1), "max_ms": values[-1]}


# ----------------------------------------------------------------------------- printing (telephony calls)


def _when(at: float | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(at)) if at is not None else "-"


def _cost(usd: float | None) -> str:
    return "-" if usd is None else f"${usd:.4f}"


def format_call_list(calls: Iterable[dict[str, Any]]) -> str:
    rows = [("CALL SID", "STARTED", "DURATION", "DIRECTION", "TURNS", "COST", "END REASON")]
    for c in calls:
        rows.append((
            c["call_sid"], _when(c["started_at"]),
            "-" if c["duration_s"] is None else f"{c['duration_s']:.1f} s",
            c["direction"], str(c["turn_count"]), _cost(c["estimated_cost_usd"]),
            c["end_reason"] if c["ended_at"] is not None else "(in progress, or cut off)",
        ))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]) - 1)]
    return "\n".join(
        "  ".join(cell.rjust(w) if i in (2, 4, 5) else cell.ljust(w) for i, (cell, w) in enumerate(zip(r, widths)))
        + "  " + r[-1]
        for r in rows
    )


def _short_json(value: Any, limit: int = 160) -> str:
    text = json.dumps(value, ensure_ascii=False, separators=(", ", ": "))
    return text if len(text) <= limit else text[: limit - 3] + "..."


def format_call(record: dict[str, Any]) -> str:
    """The transcript and timeline of one call, for a terminal."""
    lines = [f"call {record['call_sid']}"]
    started = record.get("started_at")
    if "direction" in record:
        lines.append(f"  {record['direction']} call from {record['caller_masked'] or '(unknown)'} "
                     f"to {record['called_masked'] or '(unknown)'}, stream {record['stream_sid'] or '-'}")
        duration = "-" if record["duration_s"] is None else f"{record['duration_s']:.2f} s"
        ended = f"ended {_when(record['ended_at'])}, {duration}: {record['end_reason']}" if record["ended_at"] is not None \
            else "no end recorded (still in progress, or the server stopped mid-call)"
        lines.append(f"  started {_when(started)}; {ended}")
        tokens = record["tokens"]
        by = ", ".join(f"{k} {v}" for k, v in sorted(tokens["by_modality"].items()))
        lines.append(f"  tokens: prompt {tokens['prompt']}, response {tokens['response']}, total {tokens['total']}"
                     f"{f' ({by})' if by else ''}; estimated cost {_cost(record['estimated_cost_usd'])}")
        lines.append(f"  interruptions {record['interruptions']}, reconnects {record['reconnects']}")
    else:
        lines.append("  no call row: only Twilio status callbacks were received for this sid")
    lines.append("")
    lines.append("timeline:")
    zero = started if started is not None else (record["timeline"][0]["at"] if record["timeline"] else 0.0)
    for item in record["timeline"]:
        at = f"{item['at'] - zero:+8.2f}s"
        kind = item["type"]
        if kind == "turn":
            text = f"{item['role']:>6}: {item['text'].strip()}"
        elif kind == "tool_call":
            latency = "" if item["latency_ms"] is None else f" in {item['latency_ms']:.0f} ms"
            text = (f"  tool {item['name']}({_short_json(item['args'], 80)}) -> {item['outcome']}{latency}"
                    + ("" if item["result"] is None else f": {_short_json(item['result'])}"))
        elif kind == "event":
            detail = "" if not item["detail"] else f" {_short_json(item['detail'])}"
            text = f"  {item['kind']}{detail}"
        else:
            payload = item["payload"] or {}
            extra = ", ".join(f"{k}={payload[k]}" for k in ("CallDuration", "SequenceNumber", "StreamError", "StreamSid")
                              if payload.get(k) not in (None, ""))
            text = f"  twilio {item['kind']} status: {item['status'] or '?'}{f' ({extra})' if extra else ''}"
        lines.append(f"{at}  {text}")
    if not record["timeline"]:
        lines.append("  (nothing recorded)")
    agent = [t for t in record.get("turn_timings", []) if t["role"] == "agent"]
    if agent:
        lines.append("")
        lines.append("agent turns (response latency: the caller's end of speech -> the agent's first audio):")
        for t in agent:
            latency = "      -" if t["response_latency_ms"] is None else f"{t['response_latency_ms']:5.0f} ms"
            spoke = "" if t["ended_at"] is None else f", spoke {t['ended_at'] - t['started_at']:.2f} s"
            lines.append(f"{t['started_at'] - zero:+8.2f}s  turn {t['seq']}: {latency}{spoke}"
                         f"{'  (interrupted)' if t['interrupted'] else ''}")
    return "\n".join(lines)


def calls_command(args: Any) -> int:
    """`telephony calls [--limit N]` and `telephony calls show CALLSID` (see cli.py).

    Reads DATABASE_URL, else CALLS_DB_PATH, straight from the environment (or
    --db, a path or a URL): listing records needs neither the Gemini API key
    nor the rest of the server's settings.
    """
    import os
    import sys

    from .errors import SettingsError
    from .settings import Settings, database_url_from

    try:
        url = database_url_from(os.environ.get("DATABASE_URL"))
        path = getattr(args, "db", None) or url or os.environ.get("CALLS_DB_PATH", "").strip() or Settings.calls_db_path
        store = open_records(path)
    except (SettingsError, RecordsError) as exc:
        print(f"telephony: {exc}", file=sys.stderr)
        return 2
    as_json = bool(getattr(args, "json", False))
    try:
        if getattr(args, "calls_command", None) == "show":
            record = get_call(store, args.call_sid)
            if record is None:
                print(f"telephony: no call {args.call_sid} in {store}", file=sys.stderr)
                return 1
            print(json.dumps(record, indent=2, ensure_ascii=False) if as_json else format_call(record))
            return 0
        calls = list_calls(store, args.limit)
    except (RecordsError, RecordsUnavailable) as exc:
        print(f"telephony: {exc}", file=sys.stderr)
        return 2
    if as_json:
        print(json.dumps({"calls": calls}, indent=2, ensure_ascii=False))
    elif not calls:
        print(f"no calls recorded in {store}")
    else:
        print(format_call_list(calls))
    return 0
