"""What a phone line needs: keypad input, the agent hanging up, transfers (twilio-media-streams.md §2, §5, §7)."""

from __future__ import annotations

from pathlib import Path

import httpx
import numpy as np
import pytest

from telephony.audio import ulaw_decode
from telephony.testing.emulator import CallTool, Reply, Say, Script

GOODBYE_HZ = 660.0


def dominant_hz(pcm: np.ndarray, rate: int = 8000) -> float:
    spectrum = np.abs(np.fft.rfft(pcm.astype(np.float64) * np.hanning(len(pcm))))
    return float(np.fft.rfftfreq(len(pcm), 1 / rate)[np.argmax(spectrum)])


def test_keypad_digits_reach_the_model_as_one_text_turn(phone):
    phone.call("keypad_call.jsonl", Script(greeting=[Say(seconds=0.3)], replies=[]), speed=2)
    assert "(The caller typed 1 0 0 1 on the keypad.)" in phone.last_session.texts


def test_agent_hangs_up_only_after_its_goodbye_has_played(phone, server):
    script = Script(
        greeting=[Say(seconds=0.5)],
        replies=[Reply(heard="That's all, thanks.", steps=[
            CallTool("end_call", {"reason": "caller is done"}),
            Say(text="Goodbye!", seconds=1.2, freq=GOODBYE_HZ),
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
    summary = server.app.state.recent_calls[-1]
    assert summary["end_reason"] == "agent ended the call: caller is done"
    # Without REST credentials, Twilio asks what follows the stream: a plain hang-up.
    r = httpx.post(f"{server.http_url}/stream-ended", data={"CallSid": summary["call_sid"]})
    assert r.text.endswith("<Response><Hangup /></Response>")


def test_transfer_needs_a_configured_team(phone):
    script = Script(greeting=[Say(seconds=0.3)], replies=[Reply(steps=[CallTool("transfer_call", {"destination": "sales"}), Say(seconds=0.3)])])
    phone.call("order_call.jsonl", script, speed=2)
    answer = phone.last_session.tool_responses[0]
    assert answer["response"]["result"]["transferred"] is False
