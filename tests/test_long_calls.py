"""Calls that outlive a Live connection (gemini-live.md §5): goAway handovers lose nothing."""

from __future__ import annotations

import threading
import time
from pathlib import Path

from telephony.audio import InboundAudio, inbound_resampler
from telephony.testing.emulator import Reply, Say, Script
from telephony.testing.recordings import read_recording

FIXTURES = Path(__file__).parent / "fixtures"


def expected_live_input(recording: Path, resampler: str) -> bytes:
    """The 16 kHz PCM the bridge must deliver for a recording: each frame converted once, in order."""
    inbound = InboundAudio(inbound_resampler(resampler))
    return b"".join(
        inbound.convert(m["media"]["payload"]) for m in read_recording(recording) if m["event"] == "media"
    )


def test_a_call_survives_three_go_away_handovers_with_sample_exact_caller_audio(phone, emulator, server):
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
    summary = server.app.state.recent_calls[-1]
    assert summary["live_reconnects"] == 3 and summary["end_reason"] == "caller hung up"
    assert call.close_code == 1000 and not call.protocol_errors
