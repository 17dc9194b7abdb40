"""Whole phone calls: recorded Twilio streams played at the real server, whose real
google-genai SDK talks to the Live emulator over TLS.

The main story (tests/fixtures/order_call.jsonl, 13.3 s):
  0.0 s  the agent greets the caller (440 Hz agent voice)
  3.0 s  the caller asks about order A1001; the model looks it up and answers (520 Hz)
  9.1 s  the caller talks over the answer: Live says `interrupted`, we send `clear`
 10.3 s  the agent says goodbye (660 Hz); 13.3 s the caller hangs up.
"""

from __future__ import annotations

import json
import os
import sqlite3
from pathlib import Path

import numpy as np
import pytest
import soxr

from telephony.audio import ulaw_decode
from telephony.testing.emulator import CallTool, Fail, Reply, Say, Script
from telephony.testing.order_story import ANSWER_HZ, GOODBYE_HZ, GREETING_HZ, order_script
from telephony.testing.recordings import media_payloads, read_recording

FIXTURES = Path(__file__).parent / "fixtures"

def dominant_hz(pcm: np.ndarray, rate: int) -> float:
    spectrum = np.abs(np.fft.rfft(pcm.astype(np.float64) * np.hanning(len(pcm))))
    return float(np.fft.rfftfreq(len(pcm), 1 / rate)[np.argmax(spectrum)])


def heard_utterances(call, gap: float = 0.3) -> list[tuple[float, float, bytes]]:
    """Agent audio the caller heard, joined into utterances."""
    out: list[list] = []
    for start, end, data in call.spans:
        if out and start - out[-1][1] < gap:
            out[-1][1] = end
            out[-1][2] += data
        else:
            out.append([start, end, bytearray(data)])
    return [(s, e, bytes(d)) for s, e, d in out]


def key(obj: dict, *names: str):
    """Setup keys arrive camelCase or snake_case (docs/gemini-live.md §2)."""
    for name in names:
        if name in obj:
            return obj[name]
    raise KeyError(names)


@pytest.fixture(scope="module")
def order_call(phone):
    call = phone.call("order_call.jsonl", order_script())
    return call, phone.last_session


class TestAnOrderStatusCall:
    def test_agent_greets_first_and_the_caller_hears_it_as_8khz_mulaw(self, order_call):
        call, session = order_call
        start, _end, audio = heard_utterances(call)[0]
        first_speech = [t for t, kind, _ in session.events if kind == "caller_speech_start"][0] - call.started_at
        assert start < first_speech  # the agent speaks first: nobody waits in silence for it
        assert all(len(frame) == 160 for frame in call.media_frames)
        assert len(audio) == pytest.approx(1.5 * 8000, abs=160)
        assert dominant_hz(ulaw_decode(audio), 8000) == pytest.approx(GREETING_HZ, abs=8)

    def test_the_live_session_is_set_up_for_a_phone_call(self, order_call):
        _, session = order_call
        setup = session.setup
        assert setup["model"] == "models/gemini-3.8-live"
        generation = key(setup, "generationConfig", "generation_config")
        assert key(generation, "responseModalities", "response_modalities") == ["AUDIO"]
        assert "Kore" in json.dumps(key(generation, "speechConfig", "speech_config"))
        realtime = key(setup, "realtimeInputConfig", "realtime_input_config")
        vad = key(realtime, "automatic_activity_detection", "automaticActivityDetection")
        assert vad["disabled"] is False and vad["silence_duration_ms"] == 500
        assert key(realtime, "activity_handling", "activityHandling") == "START_OF_ACTIVITY_INTERRUPTS"
        for name in ("inputAudioTranscription", "outputAudioTranscription", "sessionResumption", "contextWindowCompression"):
            assert name in setup
        declared = [d["name"] for t in setup["tools"] for d in key(t, "functionDeclarations", "function_declarations")]
        assert declared == ["lookup_order", "end_call"]  # no transfer targets here: no transfer_call

    def test_caller_speech_reaches_live_as_16khz_pcm_with_the_same_spectrum(self, order_call):
        _, session = order_call
        sent_8k = ulaw_decode(media_payloads(read_recording(FIXTURES / "order_call.jsonl"))).astype(np.float64)
        got_16k = np.frombuffer(bytes(session.audio_in), "<i2").astype(np.float64)
        assert len(got_16k) == pytest.approx(2 * len(sent_8k), abs=2 * 160 * 10)  # minus the resampler hold-back
        expected = soxr.resample(sent_8k, 8000, 16000)
        n = min(len(expected), len(got_16k))

        def band_energy(x):  # 250 Hz bands up to 8 kHz
            spectrum = np.abs(np.fft.rfft(x[:n])) ** 2
            return np.add.reduceat(spectrum, np.linspace(0, len(spectrum) - 1, 33).astype(int)[:-1])

        e_got, e_exp = band_energy(got_16k), band_energy(expected)
        assert np.corrcoef(np.log10(e_got[:15] + 1), np.log10(e_exp[:15] + 1))[0, 1] > 0.99
        assert e_got[17:].sum() < e_got[:15].sum() * 1e-4  # nothing imaged above 4 kHz

    def test_lookup_order_returns_the_database_row_to_the_model(self, order_call):
        _, session = order_call
        (call,) = [d for _, kind, d in session.events if kind == "tool_call"]
        (answer,) = session.tool_responses
        assert (answer["id"], answer["name"]) == (call["id"], "lookup_order")
        result = answer["response"]["result"]
        with sqlite3.connect(os.environ["ORDERS_DB_PATH"]) as db:
            status, tracking = db.execute("SELECT status, tracking_number FROM orders WHERE order_id = ?", ("A1001",)).fetchone()
            items = db.execute("SELECT name FROM order_items WHERE order_id = ?", ("A1001",)).fetchall()
        assert result["found"] is True and result["order_id"] == "A1001"
        assert result["status"] == status and result["tracking_number"] == tracking
        assert [i["name"] for i in result["items"]] == [name for (name,) in items]

    def test_interruption_sends_clear_and_no_more_audio_of_the_interrupted_turn(self, order_call):
        call, session = order_call
        assert len(call.clears) == 1
        interrupted = [t for t, kind, _ in session.events if kind == "interrupted"]
        assert len(interrupted) == 1
        clear_at = call.clears[0]
        assert clear_at > interrupted[0] - call.started_at  # the clear answers the interruption
        heard_after = [u for u in heard_utterances(call) if u[0] >= clear_at]
        assert heard_after, "the agent should answer again after the barge-in"
        for _start, _end, audio in heard_after:
            assert dominant_hz(ulaw_decode(audio), 8000) == pytest.approx(GOODBYE_HZ, abs=8)
        # Every mark outstanding at the clear came back (Twilio echoes them as cleared).
        assert sorted(call.marks_received) == sorted(call.marks_echoed)

    def test_the_call_ends_on_stop_closing_live_and_leaving_no_task_behind(self, order_call, phone):
        server, emulator = phone.server, phone.emulator
        call, session = order_call
        emulator.wait_for(lambda: session.closed, timeout=5)
        assert call.close_code == 1000 and not call.protocol_errors
        summary = server.finished_call(call.call_sid)
        assert summary["end_reason"] == "caller hung up" and summary["interruptions"] == 1
        assert [t["outcome"] for t in summary["tool_calls"]] == ["ok"]
        leftovers = [n for n in server.task_names() if n in ("twilio-reader", "live") or n.startswith("tool-")]
        assert leftovers == [] and not server.app.state.active_calls

    def test_the_transcript_is_kept_for_the_call(self, order_call, phone):
        server = phone.server
        summary = server.finished_call(order_call[0].call_sid)
        roles = [role for role, _ in summary["transcript"]]
        assert roles[:3] == ["agent", "caller", "agent"]
        assert "A1001" in summary["transcript"][1][1]


def test_caller_tone_arrives_at_live_as_16khz_with_no_image(phone):
    phone.call("tone_call.jsonl", Script(greeting=[Say(seconds=0.2)], replies=[Reply(steps=[Say(seconds=0.2)])]), speed=2)
    pcm = np.frombuffer(bytes(phone.last_session.audio_in), "<i2").astype(np.float64)
    tone = pcm[int(1.2 * 16000) : int(1.8 * 16000)]  # the middle of the 1 kHz tone (1.0-2.0 s)
    spectrum = np.abs(np.fft.rfft(tone * np.hanning(len(tone))))
    freqs = np.fft.rfftfreq(len(tone), 1 / 16000)
    assert dominant_hz(tone, 16000) == pytest.approx(1000, abs=5)
    image = spectrum[(freqs > 6900) & (freqs < 7100)].max()  # 8 kHz - 1 kHz
    assert 20 * np.log10(image / spectrum.max()) < -50


def test_an_unknown_tool_gets_an_error_and_the_call_goes_on(phone):
    script = Script(
        greeting=[Say(seconds=0.5)],
        replies=[Reply(steps=[CallTool("transfer_to_mars", {"planet": "Mars"}), Say(text="Sorry, I can't do that.", seconds=1.0, freq=600.0)])],
    )
    call = phone.call("order_call.jsonl", script, speed=2)
    answers = phone.last_session.tool_responses
    assert answers and all(a["name"] == "transfer_to_mars" for a in answers)
    assert all("no tool named 'transfer_to_mars'" in a["response"]["error"] for a in answers)
    assert any(abs(dominant_hz(ulaw_decode(a), 8000) - 600) < 10 for _, _, a in heard_utterances(call))
    assert call.close_code == 1000


@pytest.mark.parametrize(
    "setup, why",
    [("close", "refused with 1008"), ("never", "no setupComplete"), ("http403", "upgrade refused")],
)
def test_when_live_cannot_be_reached_the_stream_is_closed_onto_the_spoken_apology(phone, setup, why):
    server = phone.server
    call = phone.call("greeting_only.jsonl", Script(setup=setup))
    stop = [e.t for e in call.events if e.kind == "sent_stop"]
    closed = [e for e in call.events if e.kind == "closed"]
    assert closed and closed[0].detail.get("by") == "server" and call.close_code == 1000
    assert not stop or closed[0].t <= stop[0], "the server must end the stream itself, not wait for the caller"
    assert call.agent_audio == b""
    summary = server.finished_call(call.call_sid)
    assert summary["end_reason"].startswith("Live session could not be opened")


def test_a_live_session_dropped_mid_call_is_resumed_and_the_call_goes_on(phone, emulator):
    server = phone.server
    script = Script(
        greeting=[Say(seconds=0.5)],
        replies=[
            Reply(steps=[Fail(close_code=1011, reason="internal error")]),
            Reply(steps=[Say(text="Sorry about that, I'm back.", seconds=1.0, freq=600.0)]),
        ],
    )
    before = len(emulator.sessions)
    call = phone.call("order_call.jsonl", script, speed=2)
    first, resumed = emulator.sessions[before], emulator.sessions[before + 1]
    handle = key(resumed.setup, "sessionResumption", "session_resumption").get("handle")
    assert handle and first.close_code == 1011
    assert any(abs(dominant_hz(ulaw_decode(a), 8000) - 600) < 10 for _, _, a in heard_utterances(call))
    summary = server.finished_call(call.call_sid)
    assert summary["end_reason"] == "caller hung up" and summary["live_reconnects"] == 1
    assert call.close_code == 1000


def test_a_policy_close_mid_call_is_not_retried_and_ends_the_call(phone, emulator):
    server = phone.server
    script = Script(greeting=[Say(seconds=0.5)], replies=[Reply(steps=[Fail(close_code=1008, reason="policy")])])
    before = len(emulator.sessions)
    call = phone.call("order_call.jsonl", script, speed=2)
    assert len(emulator.sessions) == before + 1  # no reconnection loop
    assert call.close_code == 1000
    assert server.finished_call(call.call_sid)["end_reason"].startswith("Live session closed (code=1008")


def test_under_plain_uvicorn_the_same_call_goes_the_same_way(emulator, tmp_path, monkeypatch):
    """The Procfile runs plain uvicorn: no direct paths, every frame through the reader
    tasks. The order call must still greet, answer from the tool, clear on the barge-in
    and end as the caller hangs up."""
    import asyncio

    from telephony.app import create_app
    from telephony.settings import Settings
    from telephony.testing.server import ServerThread
    from telephony.testing.simulator import CallSimulator

    for name, value in emulator.env().items():
        monkeypatch.setenv(name, value)
    for name in ("TWILIO_ACCOUNT_SID", "TWILIO_AUTH_TOKEN", "PUBLIC_URL", "REQUIRE_TWILIO_SIGNATURE",
                 "STREAM_TOKEN_SECRET", "GOOGLE_GENAI_USE_VERTEXAI"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("ORDERS_DB_PATH", str(tmp_path / "orders.db"))
    monkeypatch.setenv("CALLS_DB_PATH", str(tmp_path / "calls.db"))
    emulator.script = order_script()
    with ServerThread(create_app(Settings.from_env()), ws="auto") as srv:
        call = asyncio.run(CallSimulator(srv.ws_url, FIXTURES / "order_call.jsonl").run())
        summary = srv.finished_call(call.call_sid)
    heard = heard_utterances(call)
    assert dominant_hz(ulaw_decode(heard[0][2]), 8000) == pytest.approx(GREETING_HZ, abs=8)
    assert len(call.clears) == 1 and sorted(call.marks_received) == sorted(call.marks_echoed)
    assert summary["end_reason"] == "caller hung up" and summary["interruptions"] == 1
    assert [t["outcome"] for t in summary["tool_calls"]] == ["ok"]


class TestLateAudioAfterABargeIn:
    """docs/gemini-live.md §12: after `interrupted` the service may still send audio of the
    interrupted turn, with a caller transcript in between, before its `turnComplete`."""

    @staticmethod
    def received_after_the_clear(call) -> bytes:
        (clear,) = call.of_kind("clear")
        return call.agent_audio[clear.detail["received_bytes"] :]

    def test_caller_barges_in_late_audio_arrives_and_the_caller_hears_nothing_of_it(self, phone):
        server = phone.server
        script = order_script()
        script.late_chunks_after_interrupt = 10  # 0.4 s more of the 520 Hz answer
        script.transcript_during_late_audio = "Thanks,"
        call = phone.call("order_call.jsonl", script)
        session = phone.last_session
        kinds = session.kinds()
        interrupted = kinds.index("interrupted")
        assert interrupted < kinds.index("late_audio_out") < kinds.index("turn_complete", interrupted)
        assert len(call.clears) == 1
        after = self.received_after_the_clear(call)
        assert after, "the agent answers again after the barge-in"
        assert dominant_hz(ulaw_decode(after), 8000) == pytest.approx(GOODBYE_HZ, abs=8)
        assert len(after) <= 1.5 * 8000 + 2 * 160  # the goodbye and nothing else reached Twilio
        summary = server.finished_call(call.call_sid)
        assert summary["stale_audio_chunks_dropped"] >= 10 and summary["interrupted_turns_without_turn_complete"] == 0
        assert summary["interruptions"] == 1 and summary["end_reason"] == "caller hung up"

    def test_an_interrupted_turn_that_never_completes_is_given_up_after_the_bound(self, phone, caplog):
        server = phone.server
        script = order_script()
        script.late_chunks_after_interrupt = 10
        script.turn_complete_after_interrupt = False
        script.replies[1] = Reply(heard="Thanks, bye.", steps=[Say(text="Goodbye!", seconds=3.0, freq=GOODBYE_HZ)])
        with caplog.at_level("WARNING", logger="telephony.call"):
            call = phone.call("order_call.jsonl", script)
        events = [(kind, detail) for _, kind, detail in phone.last_session.events]
        (label,) = [detail for kind, detail in events if kind == "interrupted"]
        assert ("turn_complete", label) not in events  # the interrupted turn never completed
        after = self.received_after_the_clear(call)
        assert after, "the caller hears the agent again"
        assert dominant_hz(ulaw_decode(after), 8000) == pytest.approx(GOODBYE_HZ, abs=8)
        summary = server.finished_call(call.call_sid)
        assert summary["interrupted_turns_without_turn_complete"] == 1
        assert len([r for r in caplog.records if "no turnComplete" in r.getMessage()]) == 1


def test_after_every_tool_response_the_caller_hears_the_model_before_the_watchdog(phone):
    """docs/gemini-live.md §8, §12: on 3.8 Live each response's `scheduling` decides whether the
    model speaks; WHEN_IDLE never fires in voice calls, so our tools choose on purpose."""
    server = phone.server
    script = Script(
        greeting=[Say(seconds=0.5, freq=GREETING_HZ)],
        replies=[
            Reply(steps=[
                CallTool("lookup_order", {"order_id": "A1001"}), Say(text="It has shipped.", seconds=1.0, freq=ANSWER_HZ),
                CallTool("transfer_call", {"destination": "sales"}), Say(text="I can't transfer you.", seconds=1.0, freq=600.0),
            ]),
            Reply(steps=[Say(text="Goodbye!", seconds=1.0, freq=GOODBYE_HZ), CallTool("end_call", {"reason": "done"}),
                         Say(text="A second goodbye nobody needs.", seconds=1.0, freq=300.0)]),
        ],
    )
    call = phone.call("order_call.jsonl", script, speed=2)
    session = phone.last_session
    declared = {d["name"]: d.get("behavior") for t in session.setup["tools"] for d in key(t, "functionDeclarations", "function_declarations")}
    assert declared == {"lookup_order": "NON_BLOCKING", "end_call": "NON_BLOCKING"}  # transfer_call: not offered
    assert [(r["name"], r.get("scheduling")) for r in session.tool_responses] == [
        ("lookup_order", "INTERRUPT"), ("transfer_call", "INTERRUPT"), ("end_call", "SILENT"),
    ]
    played = call.played_audio
    heard = [dominant_hz(ulaw_decode(played[i : i + 2000]), 8000) for i in range(0, len(played) - 1999, 2000)]  # 250 ms
    for hz in (ANSWER_HZ, 600.0, GOODBYE_HZ):  # the model spoke after each result it was to speak about
        assert any(abs(h - hz) <= 10 for h in heard), (hz, heard)
    assert not any(abs(h - 300.0) <= 10 for h in heard)  # and not after the one it was told to keep quiet about
    summary = server.finished_call(call.call_sid)
    assert summary["watchdog_nudges"] == 0  # never MODEL_WATCHDOG_SECONDS of silence after a response
    assert summary["end_reason"] == "agent ended the call: done"
