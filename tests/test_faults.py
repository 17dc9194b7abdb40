"""Fault injection: a misbehaving model, tools that hang or raise, callers that vanish.

Each call ends in its documented outcome and leaves no task behind. These calls
run against a server of their own whose registry holds misbehaving tools, on
the emulator's virtual clock (tests/conftest.py, `phone`).
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest

from telephony.app import create_app
from telephony.settings import Settings
from telephony.testing.emulator import CallTool, Fail, Reply, Say, Script
from telephony.testing.server import ServerThread
from telephony.testing.simulator import CallSimulator
from telephony.testing.virtual_clock import run_fast
from telephony.tool_registry import ToolRegistry

FIXTURES = Path(__file__).parent / "fixtures"


async def hang_forever(order_id: str) -> dict:
    """A tool whose backend never answers.

    Args:
        order_id: any order number.
    """
    await asyncio.Event().wait()
    return {}


def explode(order_id: str) -> dict:
    """A tool whose backend is broken.

    Args:
        order_id: any order number.
    """
    raise ConnectionError("orders backend is down")


async def slow(order_id: str) -> dict:
    """A tool still running when the caller hangs up (it finishes only when cancelled;
    its own timeout, 30 s, is far beyond the call).

    Args:
        order_id: any order number.
    """
    await asyncio.Event().wait()
    return {"ok": True}


@pytest.fixture(scope="module")
def faulty(server, emulator, tmp_path_factory):  # `server` puts the emulator in os.environ for the SDK
    registry = ToolRegistry(default_timeout=0.5)
    registry.register(hang_forever)
    registry.register(explode)
    registry.register(slow, timeout=30)
    env = {**os.environ, **emulator.env(), "ORDERS_DB_PATH": str(tmp_path_factory.mktemp("f") / "o.db")}
    env.pop("PUBLIC_URL", None)
    env.pop("TWILIO_AUTH_TOKEN", None)
    app = create_app(Settings.from_env(env), registry=registry)
    with ServerThread(app, loop=emulator.loop) as server:  # on the emulator's virtual clock
        yield server


def play(server, emulator, recording: str, script: Script, speed: float = 2.0):
    emulator.script = script
    before = len(emulator.sessions)
    call = run_fast(emulator.loop, CallSimulator(server.ws_url, FIXTURES / recording, speed=speed).run())
    return call, emulator.sessions[before:], server.finished_call(call.call_sid)


def no_call_tasks(server) -> bool:
    return not [n for n in server.task_names() if n in ("twilio-reader", "live", "live-reader") or n.startswith(("tool-", "timer-"))]


def test_a_tool_that_hangs_times_out_and_the_model_hears_why(faulty, emulator):
    script = Script(greeting=[Say(seconds=0.3)], replies=[Reply(steps=[CallTool("hang_forever", {"order_id": "A1"}), Say(seconds=0.5, freq=600)])])
    call, sessions, summary = play(faulty, emulator, "order_call.jsonl", script)
    answer = sessions[0].tool_responses[0]
    assert answer["name"] == "hang_forever" and "timed out" in answer["response"]["error"]
    assert call.close_code == 1000 and summary["end_reason"] == "caller hung up"
    assert no_call_tasks(faulty)


def test_a_tool_that_raises_becomes_an_error_response(faulty, emulator):
    script = Script(greeting=[Say(seconds=0.3)], replies=[Reply(steps=[CallTool("explode", {"order_id": "A1"}), Say(seconds=0.5)])])
    _, sessions, summary = play(faulty, emulator, "order_call.jsonl", script)
    answer = sessions[0].tool_responses[0]
    assert "ConnectionError" in answer["response"]["error"] and "backend is down" in answer["response"]["error"]
    assert [t["outcome"] for t in summary["tool_calls"]][0] == "error"


def test_caller_hanging_up_mid_tool_call_cancels_the_tool(faulty, emulator):
    # tone_call: the "caller" sounds at 1.0-2.0 s and hangs up at 3.5 s, while the tool still runs.
    script = Script(greeting=[Say(seconds=0.3)], replies=[Reply(steps=[CallTool("slow", {"order_id": "A1"}, wait=30)])])
    _, sessions, summary = play(faulty, emulator, "tone_call.jsonl", script, speed=1.0)
    assert [t["outcome"] for t in summary["tool_calls"]] == ["cancelled"]
    assert sessions[0].tool_responses == []  # a cancelled call is never answered
    assert no_call_tasks(faulty)


def test_an_abrupt_drop_of_the_live_connection_is_resumed(faulty, emulator):
    script = Script(greeting=[Say(seconds=0.3)], replies=[Reply(steps=[Fail(drop=True)]), Reply(steps=[Say(seconds=0.5, freq=600)])])
    call, sessions, summary = play(faulty, emulator, "order_call.jsonl", script)
    assert len(sessions) == 2 and summary["live_reconnects"] == 1
    assert summary["end_reason"] == "caller hung up" and call.close_code == 1000


def test_a_malformed_message_from_live_is_dropped_and_the_call_goes_on(faulty, emulator):
    script = Script(
        greeting=[Say(seconds=0.3)],
        replies=[Reply(steps=[Fail(raw="this is not json"), Fail(raw={"someFutureMessage": {}}), Say(seconds=0.5, freq=600)])],
    )
    call, sessions, summary = play(faulty, emulator, "order_call.jsonl", script)
    assert len(sessions) == 1 and summary["end_reason"] == "caller hung up"
    assert summary["agent_turns"] >= 2  # the greeting and the reply after the bad frames


def test_a_send_to_live_that_fails_is_one_error_line_and_a_fresh_session_takes_over(faulty, emulator, caplog):
    # The first session answers setupComplete and its close in one write: the greeting,
    # the first thing sent, finds the socket closed before any read has seen the close.
    script = Script(greeting=[Say(seconds=0.3)], replies=[Reply(steps=[Say(seconds=0.5, freq=600)])],
                    close_after_setup=1, setup_close_code=1011, setup_close_reason="internal error")
    with caplog.at_level("INFO", logger="telephony"):
        call, sessions, summary = play(faulty, emulator, "order_call.jsonl", script)
    errors = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert len(errors) == 1 and "sending to Live failed" in errors[0] and summary["call_sid"] in errors[0]
    assert len(sessions) == 2 and summary["live_reconnects"] == 1
    assert sessions[1].texts, "the greeting that did not go out went to the next session"
    assert summary["agent_turns"] >= 2 and summary["end_reason"] == "caller hung up" and call.close_code == 1000


def test_sends_that_fail_on_every_session_end_the_call_with_the_apology(faulty, emulator, caplog):
    script = Script(greeting=[Say(seconds=0.3)], close_after_setup=100, setup_close_code=1011,
                    setup_close_reason="internal error")
    with caplog.at_level("INFO", logger="telephony"):
        call, sessions, summary = play(faulty, emulator, "order_call.jsonl", script)
    errors = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert len(sessions) == 4 and len(errors) == 5  # one line per broken session, one for the end
    assert all("sending to Live failed" in e and summary["call_sid"] in e for e in errors)
    assert summary["end_reason"].startswith("4 Live sessions in a row ended before they were healthy")
    assert summary["end_reason"] in errors[-1] and "apology" in errors[-1]
    assert faulty.app.state.recent_calls[-1]["end_reason"] == summary["end_reason"]
    assert no_call_tasks(faulty)


def test_a_model_that_closes_every_session_after_setup_ends_the_call_with_the_apology(faulty, emulator, caplog):
    script = Script(greeting=[Say(seconds=0.3)], close_after_setup=100, close_after_first_message=True,
                    setup_close_code=1011, setup_close_reason="internal error")
    with caplog.at_level("INFO", logger="telephony"):
        call, sessions, summary = play(faulty, emulator, "order_call.jsonl", script)
    errors = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert len(sessions) == script.closed_after_setup == 4
    assert summary["end_reason"].startswith("4 Live sessions in a row ended before they were healthy")
    (end,) = [e for e in errors if "before they were healthy" in e]
    assert summary["call_sid"] in end and summary["end_reason"] in end and "apology" in end
    # Mostly the reader sees each close; a send that finds the socket closed first is its own line.
    assert all("sending to Live failed" in e for e in errors if e != end)
    assert faulty.app.state.recent_calls[-1]["end_reason"] == summary["end_reason"]
    assert no_call_tasks(faulty)


def test_a_session_that_worked_before_it_dropped_does_not_count_toward_the_bound(faulty, emulator, caplog):
    # The first session greets and answers, then drops; the next three close right after
    # setup; the fifth works. Four sessions ended in a row, but the first was healthy.
    script = Script(greeting=[Say(seconds=0.3)], replies=[Reply(steps=[Fail(drop=True)]), Reply(steps=[Say(seconds=0.5, freq=600)])],
                    close_after_setup=3, close_after_setup_spares=1, close_after_first_message=True,
                    setup_close_code=1011, setup_close_reason="internal error")
    with caplog.at_level("INFO", logger="telephony"):
        call, sessions, summary = play(faulty, emulator, "order_call.jsonl", script)
    assert len(sessions) == 5 and script.closed_after_setup == 3 and summary["live_reconnects"] == 4
    assert summary["end_reason"] == "caller hung up" and call.close_code == 1000
    errors = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert all("sending to Live failed" in e for e in errors)  # no end, only a send that saw a close first
