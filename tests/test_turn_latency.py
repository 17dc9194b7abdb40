"""Per-turn response latency in the call record (observe.py -> records.py `turn_timings`).

An order call is played at a real server; its record then says, for every
agent turn, how long the agent took to answer the end of the caller's speech
and whether the caller barged in, through GET /calls/{sid} and `telephony calls show`.
"""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from telephony.testing.watched import authorized, place_call, watched_server

from telephony.records import CallRecorder
from telephony.records_query import get_call
from telephony.settings import Settings
from telephony.testing.order_story import order_script

ROOT = Path(__file__).parent.parent


@pytest.fixture(scope="module")
def order_call(emulator, tmp_path_factory):
    folder = tmp_path_factory.mktemp("latency")
    emulator.script = order_script()
    with watched_server(emulator, folder) as server:
        sid, call = place_call(server.ws_url)
        server.finished_call(sid)
        assert server.app.state.recorder.flush()
        record = httpx.get(f"{server.http_url}/calls/{sid}", headers=authorized()).json()
        yield sid, call, record, folder / "calls.db"


def agent_turns(record: dict) -> list[dict]:
    return [t for t in record["turn_timings"] if t["role"] == "agent"]


class TestEachAgentTurnHasItsLatency:
    def test_the_greeting_answers_nobody_and_the_answers_have_a_latency(self, order_call):
        _, _, record, _ = order_call
        turns = agent_turns(record)
        assert turns[0]["seq"] == 1 and turns[0]["response_latency_ms"] is None  # the greeting
        answers = [t for t in turns[1:] if t["response_latency_ms"] is not None]
        assert len(answers) >= 2
        assert all(0 < t["response_latency_ms"] < 3000 for t in answers)
        assert record["response_latency"]["turns"] == len(answers)

    def test_the_turn_the_caller_talked_over_is_marked_interrupted(self, order_call):
        _, call, record, _ = order_call
        interrupted = [t for t in agent_turns(record) if t["interrupted"]]
        assert len(interrupted) == len(call.clears) >= 1
        assert not agent_turns(record)[-1]["interrupted"]  # the goodbye was heard to its end

    def test_the_callers_speech_is_timed_too_and_precedes_each_answer(self, order_call):
        _, _, record, _ = order_call
        caller = [t for t in record["turn_timings"] if t["role"] == "caller"]
        assert len(caller) >= 2 and all(t["ended_at"] > t["started_at"] for t in caller)
        first_answer = next(t for t in agent_turns(record) if t["response_latency_ms"] is not None)
        assert first_answer["started_at"] > caller[0]["ended_at"]

    def test_calls_show_prints_the_latency_of_each_agent_turn(self, order_call):
        sid, _, record, db = order_call
        env = {**os.environ, "CALLS_DB_PATH": str(db)}
        env.pop("DATABASE_URL", None)
        out = subprocess.run([sys.executable, "-m", "telephony.cli", "calls", "show", sid], env=env, cwd=ROOT,
                             capture_output=True, text=True, timeout=30)
        assert out.returncode == 0, out.stderr
        assert "agent turns (response latency" in out.stdout
        assert "(interrupted)" in out.stdout
        latency = next(t for t in agent_turns(record) if t["response_latency_ms"] is not None)["response_latency_ms"]
        assert f"{latency:5.0f} ms" in out.stdout


def test_an_older_records_file_gains_the_turn_timings_table(tmp_path):
    from telephony.records_schema import MIGRATIONS, migrate

    db = sqlite3.connect(tmp_path / "old.db", isolation_level=None)
    db.row_factory = sqlite3.Row
    migrate(db, MIGRATIONS[:1])
    db.execute("INSERT INTO calls (call_sid, started_at) VALUES ('CAold', 1.0)")
    assert migrate(db) == 1
    assert db.execute("SELECT count(*) FROM turn_timings").fetchone()[0] == 0
    db.close()
    recorder = CallRecorder(tmp_path / "old.db", Settings.from_env({"GEMINI_API_KEY": "test-api-key-123"}))
    recorder.turn_timing("CAold", role="agent", seq=1, started_at=2.0, ended_at=3.5, response_latency_ms=640.0,
                         interrupted=True)
    recorder.close()
    record = get_call(tmp_path / "old.db", "CAold")
    assert record["turn_timings"] == [{"role": "agent", "seq": 1, "started_at": 2.0, "ended_at": 3.5,
                                       "response_latency_ms": 640.0, "interrupted": True}]

