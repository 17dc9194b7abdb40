"""The call records database: its tables, their versions, and what a store must do.

Why its own module: the schema is the one thing the SQLite store (records.py)
and the PostgreSQL store (records_postgres.py) share, and the record a newcomer
looks up first ("what is in a call record?"). Keeping it apart from the writer
thread lets both stores import it without importing each other.

Schema changes are migrations: `MIGRATIONS[n]` takes a database from version n
to n + 1 (`PRAGMA user_version` in SQLite), each in its own transaction, so a
later version can add columns to a file an older one wrote. The statements are
written in SQL both stores accept, with `?` placeholders, in SQLite's spelling
of the column types, which the PostgreSQL store translates.
"""

from __future__ import annotations

import sqlite3
from typing import Any, Callable, Sequence

from .errors import TelephonyError

__all__ = [
    "MIGRATIONS", "SCHEMA_VERSION", "RecordsError", "RecordsUnavailable", "RecordRejected", "RecordsStore",
    "migrate", "user_version",
]

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
    # 2 -> 3: which agent answered (agents.py): its configured name.
    (
        "ALTER TABLE calls ADD COLUMN agent TEXT",
        "CREATE INDEX calls_by_agent ON calls (agent, started_at)",
    ),
    # 3 -> 4: what a contact centre asks of a call: who answered an outbound call, and a warm transfer's outcome.
    (
        "ALTER TABLE calls ADD COLUMN answered_by TEXT",       # Twilio's AnsweredBy: human, machine_end_beep, fax, ...
        "ALTER TABLE calls ADD COLUMN amd_outcome TEXT",       # human | machine | message left
        "ALTER TABLE calls ADD COLUMN transfer_target TEXT",   # the team's name
        "ALTER TABLE calls ADD COLUMN transfer_outcome TEXT",  # cold | accepted | declined | no-answer | busy | ...
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
    start = user_version(conn)
    if start > len(migrations):
        raise RecordsError(
            f"the call records database is at schema version {start}, newer than this code knows "
            f"({len(migrations)}): upgrade the package, or point CALLS_DB_PATH at another file"
        )
    for target in range(start + 1, len(migrations) + 1):
        conn.execute("BEGIN IMMEDIATE")
        try:
            if user_version(conn) < target:
                for statement in migrations[target - 1]:
                    conn.execute(statement)
                conn.execute(f"PRAGMA user_version = {int(target)}")
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
    return start


def user_version(conn: sqlite3.Connection) -> int:
    """The schema version of a SQLite database (0 for a new file)."""
    return int(conn.execute("PRAGMA user_version").fetchone()[0])


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
