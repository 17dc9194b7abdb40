"""What a phone line needs: keypad input, the agent hanging up, transfers (docs/twilio-media-streams.md §2, §5, §7)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx
import numpy as np
import pytest

from telephony.app import create_app
from telephony.audio import ulaw_decode
from telephony.settings import Settings
from telephony.testing.emulator import CallTool, Reply, Say, Script
from telephony.testing.recordings import read_recording
from telephony.testing.server import ServerThread
from telephony.testing.simulator import CallSimulator
from telephony.testing.twilio_signing import (
    readdress,
    sign,
    stream_parameters,
    webhook_form,
)
from telephony.testing.twilio_standin import TwilioStandIn

GOODBYE_HZ = 660.0


def dominant_hz(pcm: np.ndarray, rate: int = 8000) -> float:
    spectrum = np.abs(np.fft.rfft(pcm.astype(np.float64) * np.hanning(len(pcm))))
    return float(np.fft.rfftfreq(len(pcm), 1 / rate)[np.argmax(spectrum)])


def test_keypad_digits_reach_the_model_as_one_text_turn(phone):
    phone.call("keypad_call.jsonl", Script(greeting=[Say(seconds=0.3)], replies=[]), speed=2)
    assert "(The caller typed 1 0 0 1 on the keypad.)" in phone.last_session.texts


def test_agent_hangs_up_only_after_its_goodbye_has_played(phone):
    server = phone.server
    script = Script(
        greeting=[Say(seconds=0.5)],
        replies=[Reply(heard="That's all, thanks.", steps=[  # as instructed: a goodbye, then end_call
            Say(text="Goodbye!", seconds=1.2, freq=GOODBYE_HZ),
            CallTool("end_call", {"reason": "caller is done"}),
        ])],
    )
    call = phone.call("order_call.jsonl", script)
    (answer,) = phone.last_session.tool_responses
    assert answer["name"] == "end_call" and answer["response"]["result"]["ended"] is True
    closed = [e for e in call.events if e.kind == "closed"][0]
    assert closed.detail["by"] == "server" and call.close_code == 1000
    assert not [e for e in call.events if e.kind == "sent_stop"], "the agent ended the call, not the caller"
    last_start, last_end, goodbye = call.spans[-1]
    assert len(goodbye) >= 1.2 * 8000 - 160  # the whole goodbye was heard...
    assert dominant_hz(ulaw_decode(goodbye)) == pytest.approx(GOODBYE_HZ, abs=10)
    assert closed.t >= last_end - 0.05  # ...before the stream was closed
    summary = server.finished_call(call.call_sid)
    assert summary["end_reason"] == "agent ended the call: caller is done"
    # Without REST credentials, Twilio asks what follows the stream: a plain hang-up.
    r = httpx.post(f"{server.http_url}/stream-ended", data={"CallSid": summary["call_sid"]})
    assert r.text.endswith("<Response><Hangup /></Response>")


def test_transfer_needs_a_configured_team(phone):
    """Without transfer targets the model is not offered transfer_call; if it calls it anyway,
    it is told there is no such tool, and the call goes on."""
    script = Script(greeting=[Say(seconds=0.3)], replies=[Reply(steps=[CallTool("transfer_call", {"destination": "sales"}), Say(seconds=0.3)])])
    phone.call("order_call.jsonl", script, speed=2)
    declared = [d["name"] for t in phone.last_session.setup["tools"]
                for d in t.get("functionDeclarations", t.get("function_declarations", []))]
    assert "transfer_call" not in declared
    answer = phone.last_session.tool_responses[0]
    assert "there is no tool named 'transfer_call'" in answer["response"]["error"]


# ------------------------------------------------ with REST credentials (Twilio stand-in)

PUBLIC = "https://agent.example.test"
AUTH_TOKEN = "0123456789abcdef0123456789abcdef"
ACCOUNT = "AC" + "3" * 32
OUR_NUMBER = "+15559870000"
SALES = "+15551230001"
FIXTURES = Path(__file__).parent / "fixtures"


@pytest.fixture(scope="module")
def line(server, emulator, tmp_path_factory):
    """A production-shaped server: verified Twilio traffic, REST through the stand-in."""
    with TwilioStandIn(auth_token=AUTH_TOKEN, account_sid=ACCOUNT) as standin:
        env = {
            **emulator.env(), **standin.env(), "PUBLIC_URL": PUBLIC,
            "TRANSFER_TARGETS": f"sales={SALES}", "STREAM_TOKEN_TTL_SECONDS": "300",
            "ORDERS_DB_PATH": str(tmp_path_factory.mktemp("line") / "orders.db"),
            "CALLS_DB_PATH": str(tmp_path_factory.mktemp("line") / "calls.db"),
        }
        with ServerThread(create_app(Settings.from_env(env))) as srv:
            srv.standin = standin
            yield srv


def signed_call(srv, emulator, script: Script, call_sid: str, caller: str, name: str = "order_call.jsonl"):
    emulator.script = script
    form = webhook_form(call_sid, caller, OUR_NUMBER, ACCOUNT)
    r = httpx.post(f"{srv.http_url}/incoming-call", data=form,
                   headers={"X-Twilio-Signature": sign(f"{PUBLIC}/incoming-call", form, AUTH_TOKEN)})
    assert r.status_code == 200, r.text
    messages = readdress(read_recording(FIXTURES / name), call_sid, ACCOUNT, stream_parameters(r.text))
    headers = {"X-Twilio-Signature": sign("wss://agent.example.test/media-stream", None, AUTH_TOKEN)}
    return asyncio.run(CallSimulator(srv.ws_url, messages, headers=headers, speed=1.0, linger=3.0).run())


def test_with_rest_the_hang_up_request_is_sent_only_after_the_goodbye_played(line, emulator):
    call_sid = "CA" + "e1" * 16
    script = Script(greeting=[Say(seconds=0.4)], replies=[Reply(steps=[
        Say(text="Goodbye!", seconds=1.2, freq=GOODBYE_HZ), CallTool("end_call", {"reason": "done"})])])
    call = signed_call(line, emulator, script, call_sid, "+15557770001")
    (hangup,) = line.standin.wait_for("calls.update", call_sid=call_sid)
    assert hangup.params["Status"] == "completed"
    goodbye_end = call.spans[-1][1]
    assert dominant_hz(ulaw_decode(call.spans[-1][2])) == pytest.approx(GOODBYE_HZ, abs=10)
    assert hangup.at - call.started_at >= goodbye_end - 0.05  # heard first, then hung up


def test_with_rest_a_transfer_dials_the_configured_number_and_its_stop_is_not_a_hang_up(line, emulator):
    call_sid = "CA" + "e2" * 16
    script = Script(greeting=[Say(seconds=0.4)], replies=[Reply(steps=[
        CallTool("transfer_call", {"destination": "Sales"}),
        Say(text="I'm transferring you to sales now.", seconds=1.0, freq=600.0)])])
    signed_call(line, emulator, script, call_sid, "+15557770002")
    (update,) = line.standin.wait_for("calls.update", call_sid=call_sid)
    assert update.params["Twiml"].endswith(f"<Response><Dial>{SALES}</Dial></Response>")
    assert "Status" not in update.params  # a transfer, not a hang-up
    summary = line.finished_call(call_sid)
    assert summary["end_reason"] == "transferred to sales"
    assert line.standin.requests_of("calls.update", call_sid) == [update]  # nothing else, e.g. no hang-up


def test_a_hang_up_for_a_call_that_already_ended_counts_as_done(line, emulator, caplog):
    call_sid = "CA" + "e3" * 16
    line.standin.end_call(call_sid)  # Twilio will answer 404 / 20404
    script = Script(greeting=[Say(seconds=0.4)], replies=[Reply(steps=[Say(seconds=0.5), CallTool("end_call", {"reason": "done"})])])
    call = signed_call(line, emulator, script, call_sid, "+15557770003")
    line.standin.wait_for("calls.update", call_sid=call_sid)
    assert call.close_code == 1000
    assert not [r for r in caplog.records if "could not hang up" in r.getMessage()]


@pytest.mark.parametrize("text, twiml_has", [
    ("hangup", "<Hangup />"), ("apology", "<Say>"), ("transfer:+15551230001", "<Dial>+15551230001</Dial>"),
    ("transfer:sip:desk@example.com", "<Sip>sip:desk@example.com</Sip>"),
    (None, "<Say>"), ("transfer:", "<Say>"), ("something else", "<Say>"),
])
def test_what_follows_the_stream_survives_the_shared_state_as_text(text, twiml_has):
    from telephony.twiml import AfterStream

    after = AfterStream.decode(text)
    assert twiml_has in after.twiml()
    assert AfterStream.decode(after.encode()) == after
