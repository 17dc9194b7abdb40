"""Schema migrations of the call records, the same test for both databases.

SQLite (CALLS_DB_PATH, `PRAGMA user_version`) and PostgreSQL (DATABASE_URL, a
`records_schema` table under an advisory lock) keep their version differently,
but promise the same: migrating again changes nothing, a later migration keeps
the rows an older version wrote, and a database written by a newer version is
refused with a clear error before anything is touched.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import sqlite3
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import psycopg
import pytest
from psycopg.rows import dict_row

from telephony import records_postgres, records_schema
from telephony.records import CallRecorder
from telephony.records_query import list_calls
from telephony.records_schema import MIGRATIONS, SCHEMA_VERSION, RecordsError
from telephony.settings import Settings

T0 = 1_700_000_000.0
_names = itertools.count(1)


@dataclass
class Database:
    """One database of either kind, seen the same way by the tests below."""

    target: str | Path  # what CALLS_DB_PATH / DATABASE_URL would say
    variable: str
    connect: Callable[[], Any]  # a context manager giving a connection `migrate` takes
    migrate: Callable[..., int]
    rows: Callable[[Any, str], list[tuple]]
    set_version: Callable[[Any, int], None]
    version: Callable[[Any], int]
    version_rows: Callable[[Any], int]  # where the version is kept: one row (SQLite: one pragma)
    schema: Callable[[], object]


def sqlite_database(path: Path) -> Database:
    def schema() -> object:
        with contextlib.closing(sqlite3.connect(path)) as db:
            return sorted(db.execute("SELECT type, name, sql FROM sqlite_master").fetchall(), key=str)

    return Database(
        target=path, variable="CALLS_DB_PATH",
        connect=lambda: contextlib.closing(sqlite3.connect(path, isolation_level=None)),
        migrate=records_schema.migrate,
        rows=lambda db, sql: [tuple(r) for r in db.execute(sql).fetchall()],
        set_version=lambda db, n: db.execute(f"PRAGMA user_version = {n}"),
        version=lambda db: db.execute("PRAGMA user_version").fetchone()[0],
        version_rows=lambda db: 1,
        schema=schema,
    )


def postgres_database(url: str) -> Database:
    def connect():
        return psycopg.connect(url, autocommit=True, row_factory=dict_row)

    def schema() -> object:
        with connect() as conn:
            columns = conn.execute(
                "SELECT table_name, column_name, data_type FROM information_schema.columns "
                "WHERE table_schema = current_schema() ORDER BY 1, 2").fetchall()
            indexes = conn.execute("SELECT indexname, indexdef FROM pg_indexes WHERE schemaname = current_schema() "
                                   "ORDER BY 1").fetchall()
            versions = conn.execute(f"SELECT count(*) AS n FROM {records_postgres.VERSION_TABLE}").fetchone()
        return columns, indexes, versions

    def set_version(conn, n: int) -> None:
        conn.execute(f"UPDATE {records_postgres.VERSION_TABLE} SET version = %s", (n,))

    return Database(
        target=url, variable="DATABASE_URL", connect=connect, migrate=records_postgres.migrate,
        rows=lambda conn, sql: [tuple(r.values()) for r in conn.execute(sql).fetchall()],
        set_version=set_version, schema=schema, version=records_postgres.schema_version,
        version_rows=lambda conn: conn.execute(f"SELECT count(*) AS n FROM {records_postgres.VERSION_TABLE}").fetchone()["n"],
    )


@pytest.fixture(params=["sqlite", "postgres"])
def database(request, tmp_path) -> Database:
    """An empty database of each kind: a file, or a fresh database on the session's PostgreSQL."""
    if request.param == "sqlite":
        return sqlite_database(tmp_path / "records" / "calls.db")
    pg = request.getfixturevalue("postgres")
    pg.start()  # a test that stopped it may have failed before starting it again
    return postgres_database(pg.create_database(f"migrations_{os.getpid()}_{next(_names)}"))


def settings() -> Settings:
    return Settings.from_env({"GEMINI_API_KEY": "test-api-key-123"})


def test_migrating_again_changes_nothing(database):
    CallRecorder(database.target, settings(), start=False).close()
    before = database.schema()
    CallRecorder(database.target, settings(), start=False).close()  # a second start of the app
    with database.connect() as conn:
        assert database.migrate(conn) == SCHEMA_VERSION
        assert database.version_rows(conn) == 1
    assert database.schema() == before


def test_a_later_migration_adds_a_column_and_keeps_the_rows_an_older_version_wrote(database):
    rec = CallRecorder(database.target, settings())
    rec.call_started("CA1", stream_sid="MZ1", direction="inbound", caller=None, called=None, at=T0)
    assert rec.flush()
    rec.close()
    newer = (*MIGRATIONS, ("ALTER TABLE calls ADD COLUMN recording_url TEXT",))
    with database.connect() as conn:
        assert database.migrate(conn, newer) == SCHEMA_VERSION
        assert database.migrate(conn, newer) == SCHEMA_VERSION + 1  # already there: nothing to do
        assert database.rows(conn, "SELECT call_sid, recording_url FROM calls") == [("CA1", None)]
        assert database.version(conn) == SCHEMA_VERSION + 1


def test_a_database_written_by_a_newer_version_is_refused_with_a_clear_error(database):
    CallRecorder(database.target, settings(), start=False).close()
    with database.connect() as conn:
        database.set_version(conn, SCHEMA_VERSION + 5)
    with pytest.raises(RecordsError, match=f"newer than this code knows.*{database.variable}"):
        CallRecorder(database.target, settings())
    with pytest.raises(RecordsError, match="newer than this code knows"):
        list_calls(database.target)
