"""Calls that outlive a Live connection (docs/gemini-live.md §5): goAway handovers lose nothing."""

from __future__ import annotations

import dataclasses
import json
import threading
import time
from pathlib import Path

import httpx
import pytest

from telephony.audio import InboundAudio, inbound_resampler
from telephony.testing.emulator import Fail, Reply, Say, Script
from telephony.testing.recordings import read_recording

FIXTURES = Path(__file__).parent / "fixtures"


def expected_live_input(recording: Path, resampler: str) -> bytes:
    """The 16 kHz PCM the bridge must deliver for a recording: each frame converted once, in order."""
    inbound = InboundAudio(inbound_resampler(resampler))
    return b"".join(
        inbound.convert(m["media"]["payload"]) for m in read_recording(recording) if m["event"] == "media"
    )


def test_a_call_survives_three_go_away_handovers_with_sample_exact_caller_audio(realtime_phone, emulator, server):
    phone = realtime_phone  # another thread sends goAway on a wall-clock schedule
    script = Script(greeting=[Say(seconds=1.0)], replies=[Reply(steps=[Say(seconds=1.0, freq=600.0)])])
    before = len(emulator.sessions)
    stop = threading.Event()

    def send_go_aways() -> None:
        # One goAway every ~2.5 s to whichever session is current.
        for _ in range(3):
            if stop.wait(2.5):
                return
            current = emulator.sessions[-1]
            current.go_away("20s")
            deadline = time.monotonic() + 5
            while emulator.sessions[-1] is current:  # wait for the handover
                if time.monotonic() > deadline or stop.is_set():
                    return
                time.sleep(0.01)

    thread = threading.Thread(target=send_go_aways, daemon=True)
    thread.start()
    try:
        call = phone.call("order_call.jsonl", script)
    finally:
        stop.set()
        thread.join(timeout=10)
    sessions = emulator.sessions[before:]
    assert len(sessions) == 4, [s.kinds()[:6] for s in sessions]
    for previous, resumed in zip(sessions, sessions[1:]):
        assert resumed.setup["sessionResumption"].get("handle"), "each handover resumes with the newest handle"
        assert previous.closed
    received = b"".join(bytes(s.audio_in) for s in sessions)
    expected = expected_live_input(FIXTURES / "order_call.jsonl", server.app.state.settings.resampler)
    assert received == expected  # not one caller sample lost, duplicated or reordered
    summary = server.finished_call(call.call_sid)
    assert summary["live_reconnects"] == 3 and summary["end_reason"] == "caller hung up"
    assert call.close_code == 1000 and not call.protocol_errors


def key(obj: dict, *names: str):
    for name in names:
        if name in obj:
            return obj[name]
    raise KeyError(names)


def dominant_hz(ulaw: bytes) -> float:
    import numpy as np

    from telephony.audio import ulaw_decode

    pcm = ulaw_decode(ulaw).astype(np.float64)
    spectrum = np.abs(np.fft.rfft(pcm * np.hanning(len(pcm))))
    return float(np.fft.rfftfreq(len(pcm), 1 / 8000)[np.argmax(spectrum)])


def test_a_refused_handle_opens_a_fresh_session_that_knows_the_conversation_and_the_caller_stays(
    realtime_phone, emulator, server
):
    """docs/gemini-live.md §12: a handle can be refused (expired, invalid, another model)."""
    phone = realtime_phone  # another thread drops the session mid-call
    script = Script(
        greeting=[Say(text="Hi, thanks for calling Acme!", seconds=1.0)],
        replies=[Reply(heard="Where is my order?", steps=[Say(text="It has shipped.", seconds=1.0, freq=600.0)])],
        refuse_resumption=1008,
    )
    before = len(emulator.sessions)

    def drop_after_the_greeting() -> None:
        emulator.wait_for(lambda: "turn_complete" in emulator.sessions[before].kinds(), timeout=20)
        emulator.sessions[before].close(1011, "internal error")  # a handle was issued with the greeting

    thread = threading.Thread(target=drop_after_the_greeting, daemon=True)
    thread.start()
    call = phone.call("order_call.jsonl", script, speed=2)
    thread.join(timeout=10)
    first, refused, fresh = emulator.sessions[before : before + 3]
    assert first.close_code == 1011
    assert "resume_refused" in refused.kinds() and refused.close_code == 1008
    assert not key(fresh.setup, "sessionResumption", "session_resumption").get("handle")
    instruction = json.dumps(key(fresh.setup, "systemInstruction", "system_instruction"))
    assert "Hi, thanks for calling Acme!" in instruction and "Do not greet the caller again" in instruction
    assert "greeting" not in [d for _, kind, d in fresh.events if kind == "turn_start"]
    assert dominant_hz(call.played_audio[-8000:]) == pytest.approx(600.0, abs=10)  # the answer came through
    summary = server.finished_call(call.call_sid)
    assert summary["live_sessions_fresh"] == 1 and summary["end_reason"] == "caller hung up"
    assert call.close_code == 1000


def test_when_the_fresh_session_is_refused_too_the_call_ends_with_the_apology(realtime_phone, emulator, server):
    """Only a fresh session's refused setup is fatal: retrying it would loop."""
    phone = realtime_phone  # another thread drops the session mid-call
    script = Script(greeting=[Say(text="Hi, thanks for calling Acme!", seconds=1.0)], replies=[], refuse_resumption=1008)
    before = len(emulator.sessions)

    def drop_after_the_greeting() -> None:
        emulator.wait_for(lambda: "turn_complete" in emulator.sessions[before].kinds(), timeout=20)
        # From now on Live refuses every setup: the resumed one, and the fresh one after it.
        emulator.script = dataclasses.replace(script, setup="close", setup_close_code=1008,
                                              setup_close_reason="model not found")
        emulator.sessions[before].close(1011, "internal error")

    thread = threading.Thread(target=drop_after_the_greeting, daemon=True)
    thread.start()
    call = phone.call("order_call.jsonl", script, speed=2)
    thread.join(timeout=10)
    emulator.wait_for(lambda: len(emulator.sessions) >= before + 3 and emulator.sessions[before + 2].closed)
    first, refused, fresh = emulator.sessions[before : before + 3]
    assert first.close_code == 1011 and refused.close_code == 1008 and fresh.close_code == 1008
    assert not key(fresh.setup, "sessionResumption", "session_resumption").get("handle")
    assert len(emulator.sessions) == before + 3, "no fourth attempt"
    summary = server.finished_call(call.call_sid)
    assert summary["end_reason"].startswith("Live session could not be opened")
    assert summary["live_sessions_fresh"] == 0
    assert call.of_kind("closed")[-1].detail["by"] == "server"
    r = httpx.post(f"{server.http_url}/stream-ended", data={"CallSid": summary["call_sid"]})
    assert "<Say>" in r.text  # Twilio plays the apology, not silence


def test_a_1008_close_after_go_away_is_resumed_like_any_other(phone, emulator):
    """pollen-robotics/reachy_mini_conversation_app #357: "Connection aborted because the client
    failed to close the connection after receiving a GoAway signal" comes as 1008."""
    server = phone.server
    go_away_then_1008 = Fail(
        raw={"goAway": {"timeLeft": "50s"}}, close_code=1008,
        reason="Connection aborted because the client failed to close the connection after receiving a GoAway signal",
    )
    script = Script(
        greeting=[Say(seconds=0.5)],
        replies=[
            Reply(steps=[Say(seconds=0.5, freq=520.0), go_away_then_1008]),  # mid-turn: we wait for its end
            Reply(steps=[Say(text="Goodbye!", seconds=1.0, freq=660.0)]),
        ],
    )
    before = len(emulator.sessions)
    call = phone.call("order_call.jsonl", script, speed=2)
    first, resumed = emulator.sessions[before : before + 2]
    assert first.close_code == 1008
    assert key(resumed.setup, "sessionResumption", "session_resumption").get("handle")
    assert dominant_hz(call.played_audio[-4000:]) == pytest.approx(660.0, abs=10)
    summary = server.finished_call(call.call_sid)
    assert summary["live_sessions_resumed"] == 1 and summary["live_sessions_fresh"] == 0
    assert summary["end_reason"] == "caller hung up" and call.close_code == 1000
