"""Call records in PostgreSQL (DATABASE_URL): telephony/records_postgres.py.

Against a real server (telephony.testing.postgres_server), each test in a
database of its own: the same calls must read back exactly as SQLite gives
them, migrations must survive several servers starting at once, and a
PostgreSQL that goes away mid-call must cost the call nothing and the record
nothing that still fits in the queue.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import logging
import os
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import psycopg
import pytest
from psycopg.rows import dict_row

from telephony.app import create_app
from telephony.errors import SettingsError
from telephony.records import CallRecorder, SqliteRecords, open_records
from telephony.records_postgres import PostgresRecords, migrate, schema_version
from telephony.records_query import get_call, list_calls
from telephony.records_schema import (
    SCHEMA_VERSION,
    RecordsError,
    RecordsUnavailable,
)
from telephony.settings import Settings
from telephony.testing.server import ServerThread

ROOT = Path(__file__).parent.parent
T0 = 1_700_000_000.0
API_TOKEN = "calls-api-token-0123456789"
_names = itertools.count(1)


@pytest.fixture
def pg(postgres):
    """The session's PostgreSQL server (tests here stop and start it)."""
    return postgres


@pytest.fixture
def db_url(pg):
    """A new, empty database on the module's server."""
    pg.start()  # a test that stopped it may have failed before starting it again
    return pg.create_database(f"records_{os.getpid()}_{next(_names)}")


def settings(**env: str) -> Settings:
    return Settings.from_env({"GEMINI_API_KEY": "test-api-key-123", **env})


def connect(url: str):
    return psycopg.connect(url, autocommit=True, row_factory=dict_row)


def wait_for(condition, timeout: float = 15.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


def warnings_in(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]


# =========================================================================== schema and migrations


def sqlite_schema(path: Path) -> dict[str, object]:
    kinds = {"INTEGER": "integer", "TEXT": "text", "REAL": "float"}
    with contextlib.closing(sqlite3.connect(path)) as db:
        tables = [r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
        columns = {t: sorted((c[1], kinds[c[2]]) for c in db.execute(f"PRAGMA table_info({t})")) for t in tables}
        indexes = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type = 'index' AND sql IS NOT NULL")}
    return {"columns": columns, "indexes": indexes}


def postgres_schema(url: str) -> dict[str, object]:
    kinds = {"bigint": "integer", "text": "text", "double precision": "float"}  # SQLite's integers have 64 bits
    with connect(url) as conn:
        rows = conn.execute(
            "SELECT table_name, column_name, data_type FROM information_schema.columns "
            "WHERE table_schema = current_schema() AND table_name <> 'records_schema'"
        ).fetchall()
        indexes = {r["indexname"] for r in conn.execute(
            "SELECT indexname FROM pg_indexes WHERE schemaname = current_schema() "
            "AND indexname NOT LIKE '%\\_pkey' AND indexname NOT LIKE '%\\_key'")}
    columns: dict[str, list] = {}
    for r in rows:
        columns.setdefault(r["table_name"], []).append((r["column_name"], kinds[r["data_type"]]))
    return {"columns": {t: sorted(c) for t, c in columns.items()}, "indexes": indexes}


class TestSchema:
    def test_the_same_migrations_give_the_same_tables_columns_and_indexes_as_sqlite(self, db_url, tmp_path):
        CallRecorder(tmp_path / "calls.db", start=False).close()
        CallRecorder(db_url, start=False).close()
        assert postgres_schema(db_url) == sqlite_schema(tmp_path / "calls.db")
        with connect(db_url) as conn:
            assert schema_version(conn) == SCHEMA_VERSION
            types = {r["column_name"]: r["data_type"] for r in conn.execute(
                "SELECT column_name, data_type FROM information_schema.columns WHERE table_name = 'calls'")}
        assert types["started_at"] == "double precision"  # epoch seconds need more than REAL's 24 bits

    def test_servers_starting_at_once_migrate_once_and_none_fails(self, db_url):
        starts = 6
        barrier = threading.Barrier(starts)
        results: list[int] = []
        errors: list[BaseException] = []

        def start_a_server() -> None:
            try:
                with connect(db_url) as conn:
                    barrier.wait(timeout=10)
                    results.append(migrate(conn))
            except BaseException as exc:  # noqa: BLE001 - reported below
                errors.append(exc)

        threads = [threading.Thread(target=start_a_server) for _ in range(starts)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        assert errors == []
        assert sorted(results) == [0] + [SCHEMA_VERSION] * (starts - 1)  # one migrated, the others found it done
        with connect(db_url) as conn:
            assert schema_version(conn) == SCHEMA_VERSION

    def test_processes_starting_at_once_migrate_without_racing(self, db_url):
        # Each process connects first, then waits for the others: the migrations themselves start together.
        code = ("import sys, psycopg; from psycopg.rows import dict_row; from telephony.records_postgres import migrate; "
                "conn = psycopg.connect(sys.argv[1], autocommit=True, row_factory=dict_row); print('ready', flush=True); "
                "sys.stdin.readline(); print(migrate(conn))")
        procs = [subprocess.Popen([sys.executable, "-c", code, db_url], cwd=ROOT, stdin=subprocess.PIPE,
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(4)]
        try:
            for p in procs:
                assert p.stdout.readline() == "ready\n"
            for p in procs:
                p.stdin.write("go\n")
                p.stdin.flush()
            outcomes = [p.communicate(timeout=60) for p in procs]
        finally:
            for p in procs:
                p.kill() if p.poll() is None else None
        assert [p.returncode for p in procs] == [0] * len(procs), [err for _, err in outcomes]
        assert sorted(int(out) for out, _ in outcomes) == [0] + [SCHEMA_VERSION] * (len(procs) - 1)
        assert postgres_schema(db_url)["columns"].keys() == {"calls", "turns", "tool_calls", "events", "status_callbacks",
                                                             "turn_timings"}


# =========================================================================== the same records as SQLite


def record_calls(rec: CallRecorder) -> None:
    """A whole call, a call cut off mid-way, one known only from Twilio, and one only from its usage."""
    sid = "CA" + "a" * 32
    rec.status_callback(sid, "call", {"CallSid": sid, "CallStatus": "ringing", "From": "+15551230101",
                                      "FromCity": "SPRINGFIELD"}, T0 - 1)
    rec.call_started(sid, stream_sid="MZ" + "a" * 32, direction="inbound", caller="+15551230101",
                     called="+15559870000", at=T0, agent="bright-smile-es")
    rec.transcript(sid, "agent", "Hi, thanks ", T0 + 0.1)
    rec.transcript(sid, "agent", "for calling!", T0 + 0.6)
    rec.event(sid, "interruption", {"heard_s": 0.5}, T0 + 0.9)
    rec.call_outcome(sid, transfer_target="sales", transfer_outcome="declined")
    rec.transcript(sid, "caller", "Where is my order A1001?", T0 + 1.2)
    rec.tool_call(sid, call_id="fc-1", name="lookup_order", args={"order_id": "A1001", "verification": "SW1A 1AA"},
                  response={"result": {"found": True, "note": "call +15551230101"}}, outcome="ok", latency_ms=3.25,
                  at=T0 + 1.5)
    rec.transcript(sid, "agent", "It has shipped.", T0 + 1.7)
    rec.transcript(sid, "agent", "Anything else?", T0 + 2.9, new_turn=True)
    rec.event(sid, "dtmf", {"digit": "1"}, T0 + 3.1)
    rec.event(sid, "reconnect", {"reason": "goAway"}, T0 + 3.3)
    rec.usage(sid, prompt=800, response=90, total=890, by_modality={"AUDIO": 700, "TEXT": 100})
    rec.transcript(sid, "caller", "No, bye.", T0 + 4.0)
    rec.call_ended(sid, reason="caller hung up", at=T0 + 6.654, summary={
        "interruptions": 1, "live_reconnects": 1, "transcript": [["agent", "hi"]],
        "tokens": {"prompt": 1500, "response": 300, "total": 1800, "by_modality": {"AUDIO": 1400, "TEXT": 100}},
    })
    rec.status_callback(sid, "stream", {"CallSid": sid, "StreamEvent": "stream-stopped", "StreamSid": "MZ" + "a" * 32},
                        T0 + 6.7)
    rec.status_callback(sid, "call", {"CallSid": sid, "CallStatus": "completed", "CallDuration": "7"}, T0 + 7)

    cut = "CA" + "b" * 32
    rec.event(cut, "dtmf", {"digit": "#"}, T0 + 20.5)  # before its start: one calls row all the same
    rec.call_started(cut, stream_sid=None, direction="outbound-api", caller=None, called="client:alice", at=T0 + 20)
    rec.transcript(cut, "agent", "Hello, this is Acme.", T0 + 20.2)

    rec.status_callback("CA" + "c" * 32, "call", {"CallSid": "CA" + "c" * 32, "CallStatus": "no-answer"}, T0 + 30)
    rec.usage("CA" + "d" * 32, prompt=10, response=5, total=15, by_modality={})  # no start: listed last


SIDS = ["CA" + c * 32 for c in "abcd"] + ["CA-unknown"]


class TestTheSameRecordsAsSqlite:
    def test_a_whole_call_reads_back_exactly_as_sqlite_gives_it(self, db_url, tmp_path):
        stores = {"sqlite": tmp_path / "calls.db", "postgres": db_url}
        for target in stores.values():
            rec = CallRecorder(target, settings())
            record_calls(rec)
            assert rec.flush()
            rec.close()
        sqlite_calls, pg_calls = (list_calls(t, 50) for t in stores.values())
        assert pg_calls == sqlite_calls
        assert [c["call_sid"] for c in pg_calls] == ["CA" + "b" * 32, "CA" + "a" * 32, "CA" + "d" * 32]
        for sid in SIDS:
            assert get_call(db_url, sid) == get_call(stores["sqlite"], sid), sid

        whole = get_call(db_url, "CA" + "a" * 32)
        assert [(t["seq"], t["role"], t["text"]) for t in whole["turns"]] == [
            (1, "agent", "Hi, thanks for calling!"), (2, "caller", "Where is my order A1001?"),
            (3, "agent", "It has shipped."), (4, "agent", "Anything else?"), (5, "caller", "No, bye.")]
        assert (whole["started_at"], whole["ended_at"], whole["duration_s"]) == (T0, T0 + 6.654, 6.65)
        assert whole["agent"] == "bright-smile-es"  # the agent column, on both databases
        for target in stores.values():
            assert [c["call_sid"] for c in list_calls(target, 50, agent="bright-smile-es")] == ["CA" + "a" * 32]
        assert whole["tool_calls"][0]["args"] == {"order_id": "A1001", "verification": "***"}
        assert whole["tokens"]["total"] == 1800 and whole["estimated_cost_usd"] > 0
        assert (whole["transfer_target"], whole["transfer_outcome"], whole["amd_outcome"]) == ("sales", "declined", None)
        assert [e["type"] for e in whole["timeline"]][:2] == ["status_callback", "turn"]

    def test_numbers_and_secrets_never_reach_the_database(self, db_url):
        rec = CallRecorder(db_url, settings())
        record_calls(rec)
        assert rec.flush()
        rec.close()
        with connect(db_url) as conn:
            dump = json.dumps([conn.execute(f"SELECT * FROM {t}").fetchall() for t in
                               ("calls", "turns", "tool_calls", "events", "status_callbacks")])
        assert "+15551230101" not in dump and "alice" not in dump
        assert "SW1A" not in dump and "SPRINGFIELD" not in dump

    def test_a_nul_in_a_transcript_piece_does_not_lose_the_piece(self, db_url):
        rec = CallRecorder(db_url, settings())
        rec.transcript("CA-nul", "agent", "before\x00after", T0)
        assert rec.flush()
        rec.close()
        assert get_call(db_url, "CA-nul")["turns"][0]["text"] == "before\ufffdafter"

    def test_one_record_the_database_refuses_is_skipped_and_the_rest_of_its_batch_stored(self, db_url, caplog):
        rec = CallRecorder(db_url, settings(), start=False)
        rec.event("CA-bad", "dtmf", {"digit": "1"}, T0)
        rec.usage("CA-bad", prompt=2**70, response=1, total=2**70, by_modality={})  # beyond BIGINT
        rec.event("CA-bad", "hangup", None, T0 + 1)
        with caplog.at_level(logging.WARNING, logger="telephony.records"):
            rec.start()
            assert rec.flush()
        rec.close()
        assert [e["kind"] for e in get_call(db_url, "CA-bad")["events"]] == ["dtmf", "hangup"]
        assert any("could not store a usage" in m for m in warnings_in(caplog))


# =========================================================================== the CLI and the API


def test_telephony_calls_reads_database_url_without_an_api_key(db_url, pg):
    rec = CallRecorder(db_url, settings())
    record_calls(rec)
    assert rec.flush()
    rec.close()
    url = db_url.replace("postgres@", "postgres:cli-secret-pw@")  # trust auth: any password is accepted
    env = {k: v for k, v in os.environ.items() if k not in ("GEMINI_API_KEY", "GOOGLE_API_KEY", "CALLS_DB_PATH")}
    env["DATABASE_URL"] = url

    def cli(*args: str, code: int = 0) -> subprocess.CompletedProcess:
        done = subprocess.run([sys.executable, "-m", "telephony.cli", *args], env=env, cwd=ROOT,
                              capture_output=True, text=True, timeout=60)
        assert done.returncode == code, done.stderr
        assert "cli-secret-pw" not in done.stdout + done.stderr
        return done

    sid = "CA" + "a" * 32
    (line,) = [ln for ln in cli("calls").stdout.splitlines() if ln.startswith(sid)]
    assert "inbound" in line and "6.7 s" in line and "caller hung up" in line and "$" in line
    shown = cli("calls", "show", sid).stdout
    assert "from +1555***0101 to +1555***0000" in shown
    assert "caller: Where is my order A1001?" in shown
    assert 'tool lookup_order({"order_id": "A1001", "verification": "***"}) -> ok in 3 ms' in shown
    assert json.loads(cli("calls", "show", sid, "--json").stdout) == get_call(db_url, sid)
    assert "no call CA-nope in PostgreSQL postgresql://postgres:***@127.0.0.1" in cli("calls", "show", "CA-nope", code=1).stderr
    env["DATABASE_URL"] = "mysql://root:pw@localhost/calls"
    assert "DATABASE_URL must be a postgresql://" in cli("calls", code=2).stderr


def test_the_calls_api_returns_the_same_json_from_postgresql(db_url, tmp_path):
    env = {"GEMINI_API_KEY": "test-api-key-123", "DATABASE_URL": db_url, "CALLS_API_TOKEN": API_TOKEN,
           "CALLS_DB_PATH": str(tmp_path / "unused.db"), "ORDERS_DB_PATH": str(tmp_path / "orders.db")}
    with ServerThread(create_app(Settings.from_env(env))) as srv:
        rec = srv.app.state.recorder
        assert isinstance(rec.store, PostgresRecords)
        record_calls(rec)
        assert rec.flush()
        auth = {"Authorization": f"Bearer {API_TOKEN}"}
        listing = httpx.get(f"{srv.http_url}/calls?limit=10", headers=auth)
        assert listing.status_code == 200 and listing.json() == {"calls": list_calls(db_url, 10)}
        one = httpx.get(f"{srv.http_url}/calls/CA{'a' * 32}", headers=auth)
        assert one.status_code == 200 and one.json() == get_call(db_url, "CA" + "a" * 32)
        assert httpx.get(f"{srv.http_url}/calls/CA-unknown", headers=auth).status_code == 404
    assert not (tmp_path / "unused.db").exists()


# =========================================================================== PostgreSQL goes away


QUICK_S = 0.05  # a recorder method returns well within this, whatever the database does


def timed(call, *args, **kwargs) -> float:
    start = time.perf_counter()
    call(*args, **kwargs)
    return time.perf_counter() - start


class TestPostgresGoesAway:
    def test_stopped_mid_call_nothing_blocks_one_line_is_logged_and_the_records_arrive_when_it_is_back(
            self, pg, db_url, caplog):
        sid = "CA" + "e" * 32
        rec = CallRecorder(db_url, settings())
        rec.call_started(sid, stream_sid="MZ1", direction="inbound", caller="+15551230101", called=None, at=T0)
        rec.transcript(sid, "agent", "Hello, ", T0 + 0.1)
        assert rec.flush()
        try:
            with caplog.at_level(logging.DEBUG):
                pg.stop()
                took = [timed(rec.transcript, sid, "agent", "how can I help?", T0 + 0.5)]
                wait_for(lambda: warnings_in(caplog), what="the writer to notice")
                took += [
                    timed(rec.transcript, sid, "caller", "Where is my order?", T0 + 1),
                    timed(rec.tool_call, sid, call_id="fc-1", name="lookup_order", args={"order_id": "A1"},
                          response={"result": {}}, outcome="ok", latency_ms=2.0, at=T0 + 1.5),
                    timed(rec.event, sid, "interruption", {"heard_s": 1.0}, T0 + 2),
                    timed(rec.usage, sid, prompt=100, response=20, total=120, by_modality={"AUDIO": 100}),
                    timed(rec.call_ended, sid, reason="caller hung up", summary={}, at=T0 + 3),
                    timed(rec.status_callback, sid, "call", {"CallSid": sid, "CallStatus": "completed"}, T0 + 3.5),
                ]
                assert max(took) < QUICK_S, took
                assert not rec.flush(timeout=0.5)  # still queued
                time.sleep(1.0)  # several retries while it is down
                pg.start()
                assert rec.flush(timeout=30)
        finally:
            pg.start()
            rec.close()
        (warning,) = warnings_in(caplog)  # one line for the whole outage, and no other warning
        assert "is unreachable" in warning and "wait in the queue" in warning
        assert any("reachable again" in r.getMessage() for r in caplog.records)
        record = get_call(db_url, sid)
        assert [(t["role"], t["text"]) for t in record["turns"]] == [
            ("agent", "Hello, how can I help?"), ("caller", "Where is my order?")]
        assert record["tool_calls"][0]["name"] == "lookup_order"
        assert [e["kind"] for e in record["events"]] == ["interruption"]
        assert (record["end_reason"], record["duration_s"], record["tokens"]["total"]) == ("caller hung up", 3.0, 120)
        assert record["status_callbacks"][0]["status"] == "completed"

    def test_beyond_the_queue_bound_the_oldest_are_dropped_with_one_line(self, pg, db_url, caplog):
        rec = CallRecorder(db_url, settings(), max_queue=10)
        try:
            with caplog.at_level(logging.WARNING, logger="telephony.records"):
                pg.stop()
                rec.transcript("CA9", "agent", "0,", T0)
                wait_for(lambda: warnings_in(caplog), what="the writer to notice")
                for i in range(1, 25):
                    assert timed(rec.transcript, "CA9", "agent", f"{i},", T0 + i) < QUICK_S
                wait_for(lambda: rec.dropped == 15, what="15 records dropped")
                pg.start()
                assert rec.flush(timeout=30)
        finally:
            pg.start()
            rec.close()
        assert len([m for m in warnings_in(caplog) if "dropping the oldest" in m]) == 1
        assert len([m for m in warnings_in(caplog) if "unreachable" in m]) == 1
        (turn,) = get_call(db_url, "CA9")["turns"]
        assert turn["text"] == "".join(f"{i}," for i in range(15, 25))

    def test_unreachable_at_start_up_the_recorder_starts_and_migrates_when_it_is_back(self, pg, db_url, caplog):
        try:
            pg.stop()
            with caplog.at_level(logging.WARNING, logger="telephony.records"):
                started = time.perf_counter()
                rec = CallRecorder(db_url, settings())
                assert time.perf_counter() - started < 6  # at most one connection attempt, not a wait
                rec.call_started("CA-early", stream_sid=None, direction="inbound", caller=None, called=None, at=T0)
                rec.transcript("CA-early", "agent", "Hello", T0 + 1)
                time.sleep(0.5)
                pg.start()
                assert rec.flush(timeout=30)
                rec.close()
        finally:
            pg.start()
        (warning,) = warnings_in(caplog)
        assert "unreachable" in warning and "127.0.0.1" in warning
        assert get_call(db_url, "CA-early")["turns"][0]["text"] == "Hello"
        with connect(db_url) as conn:
            assert schema_version(conn) == SCHEMA_VERSION

    def test_close_while_it_is_down_gives_up_after_its_timeout(self, pg, db_url, caplog):
        rec = CallRecorder(db_url, settings())
        try:
            pg.stop()
            rec.event("CA-lost", "hangup", None, T0)
            with caplog.at_level(logging.WARNING, logger="telephony.records"):
                started = time.perf_counter()
                rec.close(timeout=1)
                assert time.perf_counter() - started < 3
            wait_for(lambda: not rec._thread.is_alive(), what="the writer to stop retrying")
        finally:
            pg.start()
        assert any("may be lost" in m for m in warnings_in(caplog))

    def test_reading_while_it_is_down_says_the_database_cannot_be_reached(self, pg, db_url):
        try:
            pg.stop()
            with pytest.raises(RecordsUnavailable, match="cannot read the call records database"):
                list_calls(db_url)
        finally:
            pg.start()


# =========================================================================== configuration


class TestConfiguration:
    def test_database_url_must_be_a_postgresql_url_and_is_never_shown(self):
        assert settings(DATABASE_URL="postgresql://u:pw@db/calls").database_url == "postgresql://u:pw@db/calls"
        assert settings(DATABASE_URL="postgres://u@db/calls").database_url == "postgres://u@db/calls"
        with pytest.raises(SettingsError, match="DATABASE_URL") as refused:
            settings(DATABASE_URL="mysql://u:hunter2-pw@db/calls")
        assert "hunter2" not in str(refused.value)
        s = settings(DATABASE_URL="postgresql://u:hunter2-pw@db/calls")
        assert s.describe()["database_url"] == "set" and "hunter2" not in repr(s)

    def test_the_password_is_redacted_from_the_logs(self, caplog):
        from telephony.security import install_log_redaction

        install_log_redaction(settings(DATABASE_URL="postgresql://u:hunter2-pw@db/calls"))
        with caplog.at_level(logging.INFO, logger="telephony.records"):
            logging.getLogger("telephony.records").info("oops: postgresql://u:hunter2-pw@db/calls and hunter2-pw")
        assert "hunter2" not in caplog.text

    def test_open_records_follows_database_url_else_calls_db_path(self, tmp_path):
        assert isinstance(open_records(settings(CALLS_DB_PATH=str(tmp_path / "c.db"))), SqliteRecords)
        store = open_records(settings(DATABASE_URL="postgresql://u:pw@db.example/calls"))
        assert isinstance(store, PostgresRecords) and str(store) == "PostgreSQL postgresql://u:***@db.example/calls"

    def test_without_psycopg_database_url_stops_start_up_in_one_line(self, monkeypatch):
        import telephony.records_postgres as records_postgres

        monkeypatch.setattr(records_postgres, "psycopg", None)
        with pytest.raises(RecordsError, match=r"DATABASE_URL is set but psycopg is not installed") as refused:
            CallRecorder(settings(DATABASE_URL="postgresql://u:pw@db/calls"))
        assert "\n" not in str(refused.value) and "[postgres]" in str(refused.value)


def test_serve_starts_with_postgresql_down_and_says_so_once(pg, db_url, serve_process):
    try:
        pg.stop()
        proc, port = serve_process(capture=True, DATABASE_URL=db_url)
        assert httpx.get(f"http://127.0.0.1:{port}/healthz").status_code == 200
    finally:
        pg.start()
    proc.terminate()
    out, _ = proc.communicate(timeout=30)
    assert len([ln for ln in out.splitlines() if "is unreachable" in ln]) == 1, out
