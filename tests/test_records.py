"""Call records: the SQLite database every call leaves behind (telephony/records.py).

Unit tests drive `CallRecorder` directly; the rest play calls at real servers
(the session `server`, a verifying one for the API, and a `telephony serve`
subprocess killed mid-call) and read the database the way the CLI and the
API do.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from twilio.request_validator import RequestValidator
from websockets.asyncio.client import connect

from telephony.app import create_app
from telephony.pricing import MODEL_PRICES, PriceTable, estimate_cost
from telephony.records import CallRecorder
from telephony.records_query import get_call, list_calls
from telephony.records_schema import SCHEMA_VERSION, RecordsError
from telephony.settings import Settings
from telephony.testing.emulator import CallTool, Reply, Say, Script
from telephony.testing.server import ServerThread

ROOT = Path(__file__).parent.parent
FIXTURES = Path(__file__).parent / "fixtures"
AUTH_TOKEN = "0123456789abcdef0123456789abcdef"
ACCOUNT = "AC" + "3" * 32
PUBLIC = "https://records.example.test"
API_TOKEN = "calls-api-token-0123456789"
T0 = 1_700_000_000.0


def settings(**env: str) -> Settings:
    return Settings.from_env({"GEMINI_API_KEY": "test-api-key-123", **env})


@pytest.fixture
def recorder(tmp_path):
    rec = CallRecorder(tmp_path / "records" / "calls.db", settings())
    yield rec
    rec.close()


def tables(path: Path) -> dict[str, str]:
    with contextlib.closing(sqlite3.connect(path)) as db:
        return dict(db.execute("SELECT name, sql FROM sqlite_master WHERE type IN ('table', 'index')").fetchall())


def turns_of(path: Path, call_sid: str) -> list[tuple[str, str]]:
    record = get_call(path, call_sid)
    return [(t["role"], t["text"]) for t in record["turns"]] if record else []


# =========================================================================== schema and migrations


class TestSchema:
    def test_the_database_and_its_folders_are_created_at_the_current_schema_version(self, recorder):
        assert recorder.path.is_file()
        with contextlib.closing(sqlite3.connect(recorder.path)) as db:
            assert db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
            assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert {"calls", "turns", "tool_calls", "events", "status_callbacks"} <= set(tables(recorder.path))

    def test_an_unusable_path_stops_start_up_naming_the_variable(self, tmp_path):
        (tmp_path / "a-file").write_text("not a folder")
        with pytest.raises(RecordsError, match="CALLS_DB_PATH="):
            CallRecorder(tmp_path / "a-file" / "calls.db", settings())


# =========================================================================== the recorder


class TestRecorder:
    def test_transcript_pieces_append_to_the_current_turn_until_the_role_changes_or_a_turn_ends(self, recorder):
        sid = "CA" + "1" * 32
        recorder.call_started(sid, stream_sid="MZ1", direction="inbound", caller="+15551230101", called="+15559870000", at=T0)
        for i, (role, text, new_turn) in enumerate([
            ("agent", "Hi, thanks ", False), ("agent", "for calling!", False),  # one turn in pieces
            ("caller", "Where is my order?", False),                             # the role changes
            ("agent", "Let me check.", False),
            ("agent", "It has shipped.", True),                                  # a turn boundary
        ]):
            recorder.transcript(sid, role, text, T0 + i, new_turn=new_turn)
        recorder.flush()
        record = get_call(recorder.path, sid)
        assert [(t["seq"], t["role"], t["text"]) for t in record["turns"]] == [
            (1, "agent", "Hi, thanks for calling!"), (2, "caller", "Where is my order?"),
            (3, "agent", "Let me check."), (4, "agent", "It has shipped."),
        ]
        first = record["turns"][0]
        assert (first["started_at"], first["updated_at"]) == (T0, T0 + 1)

    def test_every_piece_is_in_the_database_before_the_call_ends(self, recorder):
        recorder.call_started("CA2", stream_sid=None, direction="inbound", caller=None, called=None, at=T0)
        recorder.transcript("CA2", "agent", "Hello", T0 + 0.1)
        recorder.flush()
        with contextlib.closing(sqlite3.connect(recorder.path)) as other_process:  # what a crash would leave
            assert other_process.execute("SELECT role, text FROM turns WHERE call_sid = 'CA2'").fetchall() == [("agent", "Hello")]
            assert other_process.execute("SELECT ended_at FROM calls WHERE call_sid = 'CA2'").fetchone() == (None,)

    def test_a_whole_call_is_recorded_with_tools_events_usage_and_its_end(self, recorder):
        sid = "CA3"
        recorder.call_started(sid, stream_sid="MZ3", direction="outbound-api", caller="+15551230101", called="+15559870000", at=T0)
        recorder.tool_call(sid, call_id="fc-1", name="lookup_order", args={"order_id": "A1001"},
                           response={"result": {"found": True}}, outcome="ok", latency_ms=12.5, at=T0 + 2)
        recorder.event(sid, "interruption", {"heard_s": 1.2}, T0 + 3)
        recorder.event(sid, "reconnect", {"reason": "goAway"}, T0 + 4)
        recorder.usage(sid, prompt=1000, response=200, total=1200, by_modality={"AUDIO": 900, "TEXT": 100})
        recorder.call_ended(sid, reason="caller hung up", at=T0 + 10, summary={
            "interruptions": 1, "live_reconnects": 1, "transcript": [["agent", "hi"]],
            "tokens": {"prompt": 1500, "response": 300, "total": 1800, "by_modality": {"AUDIO": 1400, "TEXT": 100}},
        })
        recorder.flush()
        record = get_call(recorder.path, sid)
        assert record["direction"] == "outbound"
        assert (record["started_at"], record["ended_at"], record["duration_s"]) == (T0, T0 + 10, 10.0)
        assert (record["end_reason"], record["interruptions"], record["reconnects"]) == ("caller hung up", 1, 1)
        assert record["tokens"] == {"prompt": 1500, "response": 300, "total": 1800, "by_modality": {"AUDIO": 1400, "TEXT": 100}}
        assert record["estimated_cost_usd"] == estimate_cost(1500, 300, {"AUDIO": 1400, "TEXT": 100}, PriceTable())
        assert "transcript" not in record["summary"]  # kept once, in the turns table
        (tool,) = record["tool_calls"]
        assert (tool["name"], tool["args"], tool["result"], tool["outcome"], tool["latency_ms"]) == (
            "lookup_order", {"order_id": "A1001"}, {"result": {"found": True}}, "ok", 12.5)
        assert [(e["type"], e.get("kind")) for e in record["timeline"]] == [
            ("tool_call", None), ("event", "interruption"), ("event", "reconnect")]

    def test_usage_overwrites_the_running_totals_and_keeps_a_cost_estimate_mid_call(self, recorder):
        recorder.call_started("CA4", stream_sid=None, direction="inbound", caller=None, called=None, at=T0)
        recorder.usage("CA4", prompt=100, response=10, total=110, by_modality={"AUDIO": 100})
        recorder.usage("CA4", prompt=300, response=50, total=350, by_modality={"AUDIO": 300})
        recorder.flush()
        (call,) = list_calls(recorder.path)
        assert call["tokens"]["total"] == 350 and call["ended_at"] is None
        default = PriceTable()  # gemini-3.8-live's
        assert call["estimated_cost_usd"] == pytest.approx((300 * default.audio_input + 50 * default.audio_output) / 1e6)

    def test_phone_numbers_are_stored_masked_and_secret_arguments_hidden(self, recorder):
        recorder.call_started("CA5", stream_sid=None, direction="inbound", caller="+15551230101", called="client:alice", at=T0)
        recorder.tool_call("CA5", call_id="fc-1", name="lookup_order", args={"order_id": "A1", "verification": "SW1A 1AA"},
                           response={"result": {"note": "call +15551230101"}}, outcome="ok", latency_ms=1.0, at=T0)
        recorder.status_callback("CA5", "call", {"CallSid": "CA5", "CallStatus": "ringing", "From": "+15551230101",
                                                 "FromCity": "SPRINGFIELD", "CallerName": "Jane Doe"}, T0)
        recorder.flush()
        with contextlib.closing(sqlite3.connect(recorder.path)) as db:
            dump = "\n".join(db.iterdump())
        assert "+15551230101" not in dump and "alice" not in dump
        assert "SW1A" not in dump and "SPRINGFIELD" not in dump and "Jane" not in dump
        record = get_call(recorder.path, "CA5")
        assert (record["caller_masked"], record["called_masked"]) == ("+1555***0101", "client:***")
        assert record["tool_calls"][0]["args"] == {"order_id": "A1", "verification": "***"}
        assert record["status_callbacks"][0]["payload"]["From"] == "+1555***0101"

    def test_records_that_come_before_the_start_still_make_one_call_row(self, recorder):
        recorder.event("CA6", "dtmf", {"digit": "1"}, T0 + 1)
        recorder.call_started("CA6", stream_sid="MZ6", direction="inbound", caller=None, called=None, at=T0)
        recorder.flush()
        (call,) = list_calls(recorder.path)
        assert (call["call_sid"], call["stream_sid"], call["started_at"]) == ("CA6", "MZ6", T0)

    def test_status_callbacks_are_kept_for_calls_that_never_had_a_stream(self, recorder):
        recorder.status_callback("CA7", "call", {"CallSid": "CA7", "CallStatus": "no-answer"}, T0)
        recorder.status_callback("CA7", "stream", {"CallSid": "CA7", "StreamEvent": "stream-error", "StreamError": "x"}, T0 + 1)
        recorder.flush()
        assert list_calls(recorder.path) == []
        record = get_call(recorder.path, "CA7")
        assert [(c["kind"], c["status"]) for c in record["status_callbacks"]] == [("call", "no-answer"), ("stream", "stream-error")]
        assert get_call(recorder.path, "CA-unknown") is None

    def test_bad_input_is_logged_and_skipped_without_raising(self, recorder, caplog):
        with caplog.at_level(logging.WARNING, logger="telephony.records"):
            recorder.transcript("CA8", "robot", "beep", T0)
            recorder.transcript("", "agent", "who?", T0)
            recorder.status_callback("CA8", "sms", {}, T0)
            recorder.call_started("CA8", stream_sid=None, direction="sideways", caller=None, called=None, at=T0)
        recorder.flush()
        assert get_call(recorder.path, "CA8")["turns"] == []
        assert get_call(recorder.path, "CA8")["direction"] == "inbound"
        messages = " | ".join(r.getMessage() for r in caplog.records)
        assert "'robot'" in messages and "without a call sid" in messages and "'sms'" in messages and "'sideways'" in messages

    def test_a_full_queue_drops_the_oldest_records_logs_one_line_and_never_blocks(self, tmp_path, caplog):
        rec = CallRecorder(tmp_path / "calls.db", settings(), max_queue=10, start=False)  # a writer that is stuck
        with caplog.at_level(logging.WARNING, logger="telephony.records"):
            for i in range(25):
                rec.transcript("CA9", "agent", f"{i},", T0 + i)  # returns at once, every time
        assert rec.pending == 10 and rec.dropped == 15
        assert len([r for r in caplog.records if "dropping the oldest" in r.getMessage()]) == 1
        rec.start()
        assert rec.flush()
        assert turns_of(rec.path, "CA9") == [("agent", "".join(f"{i}," for i in range(15, 25)))]
        rec.close()

    def test_records_after_close_are_ignored_with_one_log_line(self, tmp_path, caplog):
        rec = CallRecorder(tmp_path / "calls.db", settings())
        rec.close()
        with caplog.at_level(logging.WARNING, logger="telephony.records"):
            rec.event("CA10", "hangup", None, T0)
            rec.event("CA10", "hangup", None, T0)
        assert len([r for r in caplog.records if "after the recorder closed" in r.getMessage()]) == 1
        assert get_call(rec.path, "CA10") is None


def test_the_printed_timeline_shows_status_callbacks_and_a_call_cut_off_mid_way(recorder):
    from telephony.records_cli import format_call

    recorder.call_started("CA11", stream_sid="MZ11", direction="inbound", caller="+15551230101", called=None, at=T0)
    recorder.transcript("CA11", "agent", "Hello", T0 + 0.5)
    recorder.status_callback("CA11", "call", {"CallSid": "CA11", "CallStatus": "completed", "CallDuration": "3"}, T0 + 3)
    recorder.flush()
    text = format_call(get_call(recorder.path, "CA11"))
    assert "no end recorded" in text
    assert "   +0.50s   agent: Hello" in text
    assert "   +3.00s    twilio call status: completed (CallDuration=3)" in text


def test_a_transfer_and_an_answering_machine_verdict_are_printed_with_the_call(recorder):
    from telephony.records_cli import format_call, format_call_list
    from telephony.records_query import list_calls

    recorder.call_started("CA12", stream_sid="MZ12", direction="inbound", caller=None, called=None, at=T0)
    recorder.call_outcome("CA12", transfer_target="sales", transfer_outcome="declined")
    recorder.call_started("CA13", stream_sid="MZ13", direction="outbound", caller=None, called=None, at=T0 + 1)
    recorder.call_outcome("CA13", answered_by="machine_end_beep", amd_outcome="message left")
    with pytest.raises(ValueError, match="unknown column"):
        recorder.call_outcome("CA13", end_reason="not this way")
    recorder.flush()
    assert "[transfer to sales: declined]" in format_call(get_call(recorder.path, "CA12"))
    listing = format_call_list(list_calls(recorder.path))
    assert "[answered by message left (machine_end_beep)]" in listing and "[transfer to sales: declined]" in listing


class TestCost:
    @pytest.mark.parametrize("prompt, response, by_modality, usd_per_mtok", [
        # input details by modality; no output details: the response is audio
        (1000, 200, {"AUDIO": 900, "TEXT": 100}, 900 * 3 + 100 * 0.5 + 200 * 12),
        # live.py today: prompt and response details merged under the same keys
        (1000, 200, {"AUDIO": 1100, "TEXT": 100}, 900 * 3 + 100 * 0.5 + 200 * 12),
        # output details given
        (1000, 200, {"AUDIO": 1000, "response:TEXT": 50, "response:AUDIO": 150}, 1000 * 3 + 50 * 2 + 150 * 12),
        # no details at all: the prompt is priced as audio
        (500, 100, {}, 500 * 3 + 100 * 12),
        (0, 0, {}, 0),
    ])
    def test_the_estimate_follows_tokens_by_modality(self, prompt, response, by_modality, usd_per_mtok):
        native_audio = MODEL_PRICES["gemini-2.5-flash-native-audio"]
        assert estimate_cost(prompt, response, by_modality, native_audio) == pytest.approx(usd_per_mtok / 1e6)

    def test_thinking_is_billed_as_output_tool_use_as_input_and_cached_tokens_at_the_cached_price(self):
        prices = PriceTable(audio_input=3, audio_output=12, text_input=0.5, text_output=2, cached_fraction=0.25)
        by_modality = {"AUDIO": 900, "TEXT": 100, "response:AUDIO": 200,
                       "thoughts:TEXT": 50, "tool_use:TEXT": 30, "cached:TEXT": 80}
        expected = (900 * 3 + 20 * 0.5 + 80 * 0.5 * 0.25  # the prompt, 80 of its text tokens cached
                    + 30 * 0.5  # tool-use prompt, on top of the prompt
                    + 200 * 12 + 50 * 2)  # the spoken answer, and the thinking as text output
        assert estimate_cost(1000, 200, by_modality, prices) == pytest.approx(expected / 1e6)

    def test_each_model_has_its_own_prices_and_3_8_live_is_the_default(self):
        assert PriceTable() == MODEL_PRICES["gemini-3.8-live"] == PriceTable.from_settings(settings())
        assert (PriceTable().text_input, PriceTable().audio_output) == (0.75, 4.50)
        native = PriceTable.from_settings(settings(GEMINI_MODEL="gemini-2.5-flash-native-audio-preview-12-2025"))
        assert (native.audio_input, native.audio_output, native.text_input, native.text_output) == (3, 12, 0.5, 2)
        assert PriceTable.for_model("gemini-live-2.5-flash-native-audio") == native

    def test_a_price_variable_overrides_only_its_own_price_of_the_model(self):
        prices = PriceTable.from_settings(settings(GEMINI_MODEL="gemini-2.5-flash-native-audio-preview-12-2025",
                                                   PRICE_AUDIO_OUTPUT_PER_MTOK="10", PRICE_CACHED_INPUT_FRACTION="0.1"))
        assert prices == PriceTable(audio_input=3, audio_output=10, text_input=0.5, text_output=2, cached_fraction=0.1)

    def test_the_price_table_comes_from_the_environment(self, tmp_path):
        s = settings(PRICE_AUDIO_INPUT_PER_MTOK="1", PRICE_AUDIO_OUTPUT_PER_MTOK="2",
                     PRICE_TEXT_INPUT_PER_MTOK="0.25", PRICE_TEXT_OUTPUT_PER_MTOK="0")
        rec = CallRecorder(tmp_path / "calls.db", s)
        rec.close()
        assert rec.prices == PriceTable(audio_input=1, audio_output=2, text_input=0.25, text_output=0)
        assert estimate_cost(1000, 1000, {"AUDIO": 600, "TEXT": 400}, rec.prices) == pytest.approx((600 + 100 + 2000) / 1e6)

    def test_a_bad_price_stops_start_up_naming_the_variable(self):
        from telephony.errors import SettingsError

        with pytest.raises(SettingsError, match="PRICE_AUDIO_OUTPUT_PER_MTOK"):
            settings(PRICE_AUDIO_OUTPUT_PER_MTOK="cheap")


# =========================================================================== a simulated call through the session server


def record_script() -> Script:
    """The order call of tests/test_phone_calls.py: greeting, lookup_order, answer, goodbye."""
    return Script(
        greeting=[Say(text="Hi, thanks for calling Acme Outfitters!", seconds=1.5, freq=440.0)],
        replies=[
            Reply(heard="Where is my order A1001?",
                  steps=[CallTool("lookup_order", {"order_id": "A1001"}), Say(text="Your order has shipped.", seconds=5.0, freq=520.0)]),
            Reply(heard="Thanks, bye.", steps=[Say(text="Goodbye!", seconds=1.5, freq=660.0)]),
        ],
    )


def with_call_sid(recording: Path, call_sid: str, out: Path) -> Path:
    """A copy of a recording under a CallSid of its own (other tests play the same file)."""
    old = json.loads(recording.read_text().splitlines()[1])["start"]["callSid"]
    out.write_text(recording.read_text().replace(old, call_sid))
    return out


@pytest.fixture(scope="module")
def recorded_call(phone, tmp_path_factory):
    server = phone.server
    sid = "CA" + "e" * 32
    recording = with_call_sid(FIXTURES / "order_call.jsonl", sid, tmp_path_factory.mktemp("rec") / "order_call.jsonl")
    call = phone.call(str(recording), record_script(), speed=2)
    assert server.app.state.recorder.flush()
    path = Path(server.app.state.settings.calls_db_path)
    return call, get_call(path, sid), path


class TestARecordedCall:
    def test_the_call_row_says_who_when_and_why_it_ended(self, recorded_call):
        call, record, _ = recorded_call
        assert record["call_sid"] == call.call_sid and record["stream_sid"] == call.stream_sid
        assert (record["direction"], record["caller_masked"], record["called_masked"]) == ("inbound", "+1555***0101", "+1555***0000")
        assert record["end_reason"] == "caller hung up"
        assert record["ended_at"] > record["started_at"] and record["duration_s"] > 0

    def test_the_transcript_turns_alternate_as_they_were_spoken(self, recorded_call):
        _, record, _ = recorded_call
        turns = [(t["role"], t["text"].strip()) for t in record["turns"]]
        assert turns[:3] == [("agent", "Hi, thanks for calling Acme Outfitters!"), ("caller", "Where is my order A1001?"),
                             ("agent", "Your order has shipped.")]
        assert [t["seq"] for t in record["turns"]] == list(range(1, len(turns) + 1))
        assert all(a["started_at"] <= b["started_at"] for a, b in zip(record["turns"], record["turns"][1:]))

    def test_the_tool_call_is_kept_with_its_arguments_result_and_latency(self, recorded_call):
        _, record, _ = recorded_call
        (tool,) = record["tool_calls"]
        assert (tool["name"], tool["args"], tool["outcome"]) == ("lookup_order", {"order_id": "A1001"}, "ok")
        assert tool["result"]["result"]["found"] is True and tool["result"]["result"]["status"] == "shipped"
        assert tool["latency_ms"] is not None and tool["latency_ms"] >= 0

    def test_token_usage_by_modality_and_the_estimated_cost_are_recorded(self, recorded_call, server):
        _, record, _ = recorded_call
        tokens = record["tokens"]
        assert tokens["prompt"] > 0 and tokens["response"] > 0 and tokens["total"] == tokens["prompt"] + tokens["response"]
        assert set(tokens["by_modality"]) >= {"AUDIO", "TEXT"}
        assert record["estimated_cost_usd"] == estimate_cost(
            tokens["prompt"], tokens["response"], tokens["by_modality"], PriceTable.from_settings(server.app.state.settings))
        assert record["estimated_cost_usd"] > 0

    def test_a_call_that_thinks_uses_tools_and_hits_the_cache_costs_what_those_tokens_cost(self, phone, tmp_path):
        server = phone.server
        sid = "CA" + "7" * 32
        script = record_script()
        script.thoughts_tokens, script.tool_use_prompt_tokens, script.cached_tokens = 40, 25, 60
        phone.call(str(with_call_sid(FIXTURES / "order_call.jsonl", sid, tmp_path / "call.jsonl")), script, speed=2)
        assert server.app.state.recorder.flush()
        record = get_call(Path(server.app.state.settings.calls_db_path), sid)

        tokens, by = record["tokens"], record["tokens"]["by_modality"]
        turns = by["thoughts:TEXT"] // 40
        assert turns >= 2  # one usage report per turn that ended before the caller hung up
        assert (by["thoughts:TEXT"], by["tool_use:TEXT"], by["cached:TEXT"]) == (40 * turns, 25 * turns, 60 * turns)
        summed = record["summary"]["tokens"]
        assert (summed["thoughts"], summed["tool_use_prompt"], summed["cached"]) == (40 * turns, 25 * turns, 60 * turns)
        # 3.8 Live leaves the thinking out of the total; the bill does not.
        assert tokens["total"] == tokens["prompt"] + tokens["response"] + 25 * turns
        prices = PriceTable.from_settings(server.app.state.settings)
        without_extras = {k: v for k, v in by.items() if ":" not in k or k.startswith("response:")}
        plain = estimate_cost(tokens["prompt"], tokens["response"], without_extras, prices)
        extras = (40 * turns * prices.text_output + 25 * turns * prices.text_input
                  - 60 * turns * prices.text_input * (1 - prices.cached_fraction)) / 1e6
        assert record["estimated_cost_usd"] == pytest.approx(plain + extras, abs=2e-6)
        assert record["estimated_cost_usd"] > plain  # thinking and tool use are not free

    def test_the_timeline_orders_turns_tools_and_events_by_time(self, recorded_call):
        _, record, _ = recorded_call
        times = [item["at"] for item in record["timeline"]]
        assert times == sorted(times)
        kinds = [item["type"] for item in record["timeline"]]
        assert kinds.index("tool_call") > kinds.index("turn")  # the caller asked before the model looked it up
        interruptions = [e for e in record["events"] if e["kind"] == "interruption"]
        assert record["interruptions"] == len(interruptions) >= 1  # the caller talks over the answer

    def test_the_cli_lists_the_call_and_prints_its_transcript_and_timeline_without_an_api_key(self, recorded_call):
        call, _, path = recorded_call
        env = {k: v for k, v in os.environ.items() if k not in ("GEMINI_API_KEY", "GOOGLE_API_KEY")}
        env["CALLS_DB_PATH"] = str(path)

        def cli(*args: str) -> str:
            done = subprocess.run([sys.executable, "-m", "telephony.cli", *args], env=env, cwd=ROOT,
                                  capture_output=True, text=True, timeout=60)
            assert done.returncode == 0, done.stderr
            return done.stdout

        listing = cli("calls", "--limit", "50")
        (line,) = [ln for ln in listing.splitlines() if ln.startswith(call.call_sid)]
        assert "inbound" in line and "caller hung up" in line and "$" in line
        shown = cli("calls", "show", call.call_sid)
        assert "from +1555***0101 to +1555***0000" in shown
        assert "agent: Hi, thanks for calling Acme Outfitters!" in shown
        assert "caller: Where is my order A1001?" in shown
        assert 'tool lookup_order({"order_id": "A1001"}) -> ok in ' in shown and " ms: " in shown
        assert "estimated cost $" in shown
        as_json = json.loads(cli("calls", "show", call.call_sid, "--json"))
        assert as_json["call_sid"] == call.call_sid and as_json["turns"]

    def test_the_cli_says_so_when_a_call_is_unknown(self, recorded_call):
        _, _, path = recorded_call
        done = subprocess.run([sys.executable, "-m", "telephony.cli", "calls", "show", "CA-nope", "--db", str(path)],
                              cwd=ROOT, capture_output=True, text=True, timeout=60)
        assert done.returncode == 1 and "no call CA-nope" in done.stderr


# =========================================================================== the HTTP API and status callbacks


@pytest.fixture(scope="module")
def records_server(server, emulator, tmp_path_factory):
    """A verifying server with the records API on (`server` first, for the SDK's environment)."""
    folder = tmp_path_factory.mktemp("records-api")
    env = {**emulator.env(), "TWILIO_AUTH_TOKEN": AUTH_TOKEN, "TWILIO_ACCOUNT_SID": ACCOUNT, "PUBLIC_URL": PUBLIC,
           "CALLS_API_TOKEN": API_TOKEN, "CALLS_DB_PATH": str(folder / "calls.db"), "ORDERS_DB_PATH": str(folder / "o.db")}
    with ServerThread(create_app(Settings.from_env(env))) as srv:
        rec = srv.app.state.recorder
        rec.call_started("CA-api", stream_sid="MZ-api", direction="inbound", caller="+15551230101", called=None, at=T0)
        rec.transcript("CA-api", "agent", "Hello!", T0 + 0.5)
        rec.call_ended("CA-api", reason="caller hung up", summary={}, at=T0 + 5)
        assert rec.flush()
        yield srv


def status_form(call_sid: str, **fields: str) -> dict[str, str]:
    return {"AccountSid": ACCOUNT, "CallSid": call_sid, "ApiVersion": "2010-04-01", **fields}


def post_status(srv: ServerThread, form: dict[str, str], signature: str | None = "sign") -> httpx.Response:
    headers = {}
    if signature == "sign":
        signature = RequestValidator(AUTH_TOKEN).compute_signature(f"{PUBLIC}/twilio/status", form)
    if signature is not None:
        headers["X-Twilio-Signature"] = signature
    return httpx.post(f"{srv.http_url}/twilio/status", data=form, headers=headers)


class TestCallsApi:
    def test_without_the_token_the_api_answers_401(self, records_server):
        for headers in ({}, {"Authorization": "Bearer wrong-token-0123456789"}, {"Authorization": f"Basic {API_TOKEN}"}):
            r = httpx.get(f"{records_server.http_url}/calls", headers=headers)
            assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer"
            assert httpx.get(f"{records_server.http_url}/calls/CA-api", headers=headers).status_code == 401
        assert httpx.get(f"{records_server.http_url}/healthz").json()["rejected"]["calls_api_unauthorized"] >= 6

    def test_with_the_token_it_lists_calls_and_returns_one_with_its_timeline(self, records_server):
        auth = {"Authorization": f"Bearer {API_TOKEN}"}
        listing = httpx.get(f"{records_server.http_url}/calls?limit=5", headers=auth)
        assert listing.status_code == 200
        (call,) = [c for c in listing.json()["calls"] if c["call_sid"] == "CA-api"]
        assert call["caller_masked"] == "+1555***0101" and call["turn_count"] == 1 and call["duration_s"] == 5.0
        one = httpx.get(f"{records_server.http_url}/calls/CA-api", headers=auth).json()
        assert one["turns"][0]["text"] == "Hello!" and one["timeline"][0]["type"] == "turn"
        assert httpx.get(f"{records_server.http_url}/calls/CA-unknown", headers=auth).status_code == 404
        assert httpx.get(f"{records_server.http_url}/calls?limit=zero", headers=auth).status_code == 400

    def test_without_calls_api_token_the_endpoints_do_not_exist(self, server):
        assert server.app.state.settings.calls_api_token is None
        for path in ("/calls", "/calls/CA-api"):
            r = httpx.get(f"{server.http_url}{path}", headers={"Authorization": f"Bearer {API_TOKEN}"})
            assert r.status_code == 404


class TestStatusCallbacks:
    def test_signed_call_and_stream_callbacks_are_recorded_even_several_for_one_call(self, records_server):
        sid = "CA" + "c" * 32
        forms = [
            status_form(sid, CallStatus="ringing", SequenceNumber="0", From="+15551230101", To="+15559870000"),
            status_form(sid, StreamSid="MZ" + "c" * 32, StreamName="agent", StreamEvent="stream-started",
                        Timestamp="2024-05-01T12:00:00Z"),
            status_form(sid, CallStatus="completed", CallDuration="14", SequenceNumber="2", From="+15551230101"),
        ]
        for form in forms:
            assert post_status(records_server, form).status_code == 204
        assert records_server.app.state.recorder.flush()
        record = get_call(records_server.app.state.settings.calls_db_path, sid)
        assert [(c["kind"], c["status"]) for c in record["status_callbacks"]] == [
            ("call", "ringing"), ("stream", "stream-started"), ("call", "completed")]
        assert record["status_callbacks"][2]["payload"]["CallDuration"] == "14"
        assert record["status_callbacks"][0]["payload"]["From"] == "+1555***0101"

    @pytest.mark.parametrize("signature", [None, "forged", "wrong-url"])
    def test_unsigned_or_forged_callbacks_get_403_and_are_not_recorded(self, records_server, signature):
        sid = "CA" + "d" * 32
        form = status_form(sid, CallStatus="completed")
        if signature == "forged":
            signature = RequestValidator("f" * 32).compute_signature(f"{PUBLIC}/twilio/status", form)
        elif signature == "wrong-url":
            signature = RequestValidator(AUTH_TOKEN).compute_signature(f"{PUBLIC}/incoming-call", form)
        assert post_status(records_server, form, signature).status_code == 403
        assert records_server.app.state.recorder.flush()
        assert get_call(records_server.app.state.settings.calls_db_path, sid) is None


# =========================================================================== a server killed mid-call


GREETING = "Hello, you are through to the records test line."


def test_a_partial_record_survives_a_server_killed_mid_call(emulator, tmp_path, serve_process):
    db = tmp_path / "calls.db"
    emulator.script = Script(greeting=[Say(text=GREETING, seconds=8.0)], replies=[])
    sid = "CA" + "f" * 32
    stream = "MZ" + "f" * 32
    start = {"event": "start", "sequenceNumber": "1", "streamSid": stream,
             "start": {"accountSid": ACCOUNT, "streamSid": stream, "callSid": sid, "tracks": ["inbound"],
                       "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1},
                       "customParameters": {"From": "+15551230101", "To": "+15559870000"}}}
    proc, port = serve_process(CALLS_DB_PATH=str(db))
    try:
        async def call_until_the_greeting_is_recorded() -> None:
            async with connect(f"ws://127.0.0.1:{port}/media-stream") as ws:
                await ws.send(json.dumps({"event": "connected", "protocol": "Call", "version": "1.0.0"}))
                await ws.send(json.dumps(start))
                await ws.recv()  # the agent is speaking
                deadline = time.monotonic() + 20
                while not turns_of(db, sid):
                    assert time.monotonic() < deadline, "the greeting never reached the database"
                    await asyncio.sleep(0.05)
                proc.send_signal(signal.SIGKILL)  # mid-greeting: no shutdown, no summary, no flush
                proc.wait(timeout=10)

        asyncio.run(call_until_the_greeting_is_recorded())
    finally:
        proc.wait(timeout=10)
    assert proc.returncode == -signal.SIGKILL
    record = get_call(db, sid)
    assert record is not None and record["stream_sid"] == stream and record["caller_masked"] == "+1555***0101"
    assert record["started_at"] is not None and record["ended_at"] is None  # cut off: no end was ever written
    role, text = turns_of(db, sid)[0]
    assert role == "agent" and text.startswith("Hello") and GREETING.startswith(text)  # the pieces said so far
