"""The recorded calls and the caller simulator behave like Twilio's side of a stream.

Covers docs/twilio-media-streams.md §2 (what Twilio sends: field types, ordering, dtmf) and §3
(what we send and how Twilio plays it: marks, clear, validation). The agent side here is a
tiny stand-in WebSocket server written in this file, so these tests need no product code.
"""

from __future__ import annotations

import asyncio
import base64
import importlib.util
import json
import re
import wave
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, Awaitable, Callable

import numpy as np
import pytest
from websockets.asyncio.server import ServerConnection, serve

from telephony.audio import ulaw_decode, ulaw_encode
from telephony.testing.recordings import (
    Dtmf,
    Silence,
    Speech,
    Tone,
    build_messages,
    media_payloads,
    read_recording,
    write_recording,
)
from telephony.testing.simulator import CallSimulator, SimulatedCall

FIXTURES = Path(__file__).parent / "fixtures"
SID = {"MZ": re.compile(r"^MZ[0-9a-f]{32}$"), "CA": re.compile(r"^CA[0-9a-f]{32}$"), "AC": re.compile(r"^AC[0-9a-f]{32}$")}


def _load_make_recordings():
    spec = importlib.util.spec_from_file_location("make_recordings", FIXTURES / "make_recordings.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _dbfs(ulaw: bytes) -> float:
    x = ulaw_decode(ulaw).astype(np.float64)
    return 20 * np.log10(np.sqrt(np.mean(x**2)) / 32768 + 1e-12)


def _call_audio(messages: list[dict], t0: float, t1: float) -> bytes:
    """The caller audio between call-audio times t0 and t1 (8 bytes per ms)."""
    return media_payloads(messages)[int(t0 * 8000) : int(t1 * 8000)]


# ============================================================================ recordings (§2)


class TestRecordingsMatchTwilioWireFormat:
    """§2 "Field types" and pitfall §8.4."""

    @pytest.mark.parametrize("name", ["order_call", "greeting_only", "keypad_call", "tone_call"])
    def test_every_fixture_has_twilio_field_types_and_ordering(self, name):
        msgs = read_recording(FIXTURES / f"{name}.jsonl")
        assert msgs[0] == {"event": "connected", "protocol": "Call", "version": "1.0.0"}
        assert msgs[1]["event"] == "start" and msgs[-1]["event"] == "stop"
        assert [m["event"] for m in msgs[2:-1]] and all(m["event"] in {"media", "dtmf"} for m in msgs[2:-1])

        seqs = [m["sequenceNumber"] for m in msgs[1:]]
        assert all(isinstance(s, str) and s.isdigit() for s in seqs)
        assert [int(s) for s in seqs] == list(range(1, len(msgs)))

        start = msgs[1]
        sid = start["streamSid"]
        assert SID["MZ"].match(sid) and start["start"]["streamSid"] == sid
        assert SID["CA"].match(start["start"]["callSid"]) and SID["AC"].match(start["start"]["accountSid"])
        assert start["start"]["tracks"] == ["inbound"]
        fmt = start["start"]["mediaFormat"]
        assert fmt == {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1}
        assert type(fmt["sampleRate"]) is int and type(fmt["channels"]) is int
        assert start["start"]["customParameters"]["CallSid"] == start["start"]["callSid"]
        assert all(m["streamSid"] == sid for m in msgs[1:])

        media = [m for m in msgs if m["event"] == "media"]
        assert [m["media"]["chunk"] for m in media] == [str(i) for i in range(1, len(media) + 1)]
        assert [m["media"]["timestamp"] for m in media] == [str(20 * i) for i in range(1, len(media) + 1)]
        for m in media:
            assert set(m) == {"event", "sequenceNumber", "media", "streamSid"}
            assert set(m["media"]) == {"track", "chunk", "timestamp", "payload"}
            assert m["media"]["track"] == "inbound"
            assert len(base64.b64decode(m["media"]["payload"], validate=True)) == 160

        assert msgs[-1]["stop"] == {"accountSid": start["start"]["accountSid"], "callSid": start["start"]["callSid"]}

    def test_keypad_digits_arrive_as_dtmf_events_after_each_press(self):
        msgs = read_recording(FIXTURES / "keypad_call.jsonl")
        dtmf = [(i, m) for i, m in enumerate(msgs) if m["event"] == "dtmf"]
        assert [m["dtmf"] for _, m in dtmf] == [{"track": "inbound_track", "digit": d} for d in "1001#"]
        assert all(set(m) == {"event", "sequenceNumber", "streamSid", "dtmf"} for _, m in dtmf)
        assert [msgs[i - 1]["media"]["timestamp"] for i, _ in dtmf] == ["2100", "2400", "2700", "3000", "3300"]

    def test_order_call_speech_lies_where_make_recordings_says(self):
        msgs = read_recording(FIXTURES / "order_call.jsonl")
        assert len(media_payloads(msgs)) == 13.3 * 8000
        for t0, t1 in [(0.0, 3.0), (4.6, 9.1), (10.3, 13.3)]:
            assert _dbfs(_call_audio(msgs, t0, t1)) < -55, (t0, t1)
        for t0, t1 in [(3.1, 4.5), (9.15, 10.15)]:
            assert _dbfs(_call_audio(msgs, t0, t1)) > -30, (t0, t1)

    def test_tone_call_is_a_1000_hz_tone_at_minus_12_dbfs_peak(self):
        msgs = read_recording(FIXTURES / "tone_call.jsonl")
        tone = ulaw_decode(_call_audio(msgs, 1.0, 2.0)).astype(np.float64)
        spectrum = np.abs(np.fft.rfft(tone * np.hanning(len(tone))))
        assert np.fft.rfftfreq(len(tone), 1 / 8000)[np.argmax(spectrum)] == pytest.approx(1000, abs=2)
        assert 20 * np.log10(np.max(np.abs(tone)) / 32768) == pytest.approx(-12, abs=0.5)

    def test_regenerating_fixtures_gives_identical_files(self, tmp_path):
        for path in _load_make_recordings().main(tmp_path):
            assert path.read_bytes() == (FIXTURES / path.name).read_bytes(), path.name

    def test_fixtures_stay_small(self):
        assert sum(p.stat().st_size for p in FIXTURES.glob("*.jsonl")) < 2_000_000


class TestBuildMessages:
    def test_same_seed_gives_same_call_and_other_seed_another(self):
        segs = [Silence(0.1), Tone(440, 0.1)]
        assert build_messages(segs, seed=7) == build_messages(segs, seed=7)
        assert build_messages(segs, seed=8)[1]["streamSid"] != build_messages(segs, seed=7)[1]["streamSid"]

    def test_digital_silence_is_all_0xff(self):
        msgs = build_messages([Silence(0.04, level_dbfs=None)])
        assert [m["media"]["payload"] for m in msgs if m["event"] == "media"] == [base64.b64encode(b"\xff" * 160).decode()] * 2

    def test_given_sids_and_parameters_are_used_verbatim(self):
        msgs = build_messages(
            [Silence(0.02)], call_sid="CA" + "1" * 32, stream_sid="MZ" + "2" * 32,
            account_sid="AC" + "3" * 32, custom_parameters={"tenant": "acme"},
        )
        assert msgs[1]["start"]["customParameters"] == {"tenant": "acme"}
        assert (msgs[1]["start"]["callSid"], msgs[1]["streamSid"], msgs[-1]["stop"]["accountSid"]) == (
            "CA" + "1" * 32, "MZ" + "2" * 32, "AC" + "3" * 32,
        )

    def test_a_partial_last_frame_is_padded_to_160_bytes(self):
        msgs = build_messages([Speech(FIXTURES / "speech" / "arctic_a0007.wav", 0.5, 0.55)])
        assert len(media_payloads(msgs)) == 480  # 400 samples of speech + 80 of line noise

    def test_a_speech_slice_outside_the_file_is_refused(self):
        with pytest.raises(ValueError, match="outside"):
            build_messages([Speech(FIXTURES / "speech" / "arctic_a0007.wav", 3.9, 5.0)])

    def test_an_invalid_digit_is_refused(self):
        with pytest.raises(ValueError, match="DTMF"):
            Dtmf("A")

    def test_write_then_read_round_trips(self, tmp_path):
        msgs = build_messages([Dtmf("5")], seed=3)
        write_recording(tmp_path / "r.jsonl", msgs)
        assert read_recording(tmp_path / "r.jsonl") == msgs


# ============================================================================ stand-in agent

Script = Callable[["StandInAgent", ServerConnection], Awaitable[None]]


class StandInAgent:
    """The agent side, just enough of it: records what arrives, runs ``script`` after start."""

    def __init__(self, script: Script | None = None, *, close_on_stop: bool = True) -> None:
        self.script = script
        self.close_on_stop = close_on_stop
        self.received: list[tuple[float, dict[str, Any]]] = []
        self.stream_sid: str | None = None
        self.t0 = 0.0

    def media(self, ulaw: bytes, **extra) -> str:
        return json.dumps({"event": "media", "streamSid": self.stream_sid, "media": {"payload": base64.b64encode(ulaw).decode()}, **extra})

    def mark(self, name: str) -> str:
        return json.dumps({"event": "mark", "streamSid": self.stream_sid, "mark": {"name": name}})

    def clear(self) -> str:
        return json.dumps({"event": "clear", "streamSid": self.stream_sid})

    def of_event(self, event: str) -> list[dict[str, Any]]:
        return [m for _, m in self.received if m["event"] == event]

    async def handler(self, ws: ServerConnection) -> None:
        loop = asyncio.get_running_loop()
        self.t0 = loop.time()
        async with asyncio.TaskGroup() as tg:
            script_task = None
            async for raw in ws:
                msg = json.loads(raw)
                self.received.append((loop.time() - self.t0, msg))
                if msg["event"] == "start":
                    self.stream_sid = msg["streamSid"]
                    if self.script:
                        script_task = tg.create_task(self.script(self, ws))
                elif msg["event"] == "stop" and self.close_on_stop:
                    break
            if script_task:
                script_task.cancel()
        await ws.close()


@asynccontextmanager
async def agent_server(agent: StandInAgent):
    async with serve(agent.handler, "127.0.0.1", 0) as server:
        port = server.sockets[0].getsockname()[1]
        yield f"ws://127.0.0.1:{port}/media"


def simulate(agent: StandInAgent, recording, **kwargs) -> SimulatedCall:
    async def main():
        async with agent_server(agent) as url:
            return await CallSimulator(url, recording, **kwargs).run()

    return asyncio.run(main())


def quiet(seconds: float) -> list[dict]:
    return build_messages([Silence(seconds)], seed=11)


def tone_ulaw(seconds: float) -> bytes:
    n = int(seconds * 8000)
    return ulaw_encode((3000 * np.sin(2 * np.pi * 440 * np.arange(n) / 8000)).astype(np.int16))


# ============================================================================ simulator (§3)


class TestCallerSide:
    def test_caller_sends_the_recording_in_order_and_the_server_hangs_up_on_stop(self):
        agent = StandInAgent()
        call = simulate(agent, FIXTURES / "keypad_call.jsonl", speed=8)
        sent = [m for _, m in agent.received]
        assert sent == read_recording(FIXTURES / "keypad_call.jsonl")
        assert [e.detail["digit"] for e in call.of_kind("sent_dtmf")] == list("1001#")
        assert call.close_code == 1000 and call.of_kind("closed")[0].detail["by"] == "server"
        assert sum(e.detail["count"] for e in call.of_kind("sent_media")) == 265
        assert call.protocol_errors == []

    def test_speed_4_plays_a_call_four_times_faster_than_real_time_and_still_paced(self):
        """Read on the simulator's own schedule, never the wall clock: at speed 4 each frame is
        due a quarter as far into the call, and none leaves before it is due."""
        runs = {}
        for speed in (1, 4):
            agent = StandInAgent()
            call = simulate(agent, quiet(1.5), speed=speed)
            (media,) = call.of_kind("sent_media")
            (stop,) = call.of_kind("sent_stop")
            assert media.t >= media.detail["first_due"] and stop.t >= stop.detail["due"]  # paced, not dumped
            runs[speed] = (media.detail["last_due"] - media.detail["first_due"], stop.detail["due"] - media.detail["first_due"])
        assert runs[1][0] == pytest.approx(74 * 0.02, abs=1e-3) and runs[4][0] == pytest.approx(74 * 0.02 / 4, abs=1e-3)
        assert runs[4][1] == pytest.approx(runs[1][1] / 4, abs=1e-3)

    def test_server_hanging_up_mid_call_ends_the_run_cleanly(self):
        async def hang_up(agent, ws):
            await ws.close(1000, "bye")

        call = simulate(StandInAgent(hang_up), FIXTURES / "order_call.jsonl")
        assert (call.close_code, call.close_reason) == (1000, "bye")
        assert call.of_kind("sent_stop") == [] and call.protocol_errors == []

    def test_simulator_closes_itself_after_linger_when_the_server_stays_open(self):
        call = simulate(StandInAgent(close_on_stop=False), quiet(0.2), linger=0.2)
        closed = call.of_kind("closed")[0]
        assert closed.detail == {"code": 1000, "reason": "", "by": "simulator"}
        assert closed.t - call.of_kind("sent_stop")[0].t >= 0.2


class TestPlaybackMarksAndClear:
    def test_mark_is_echoed_only_after_the_audio_before_it_has_played(self):
        audio = tone_ulaw(0.5)

        async def speak(agent, ws):
            await ws.send(agent.mark("before-audio"))  # nothing buffered: echoed at once
            await ws.send(agent.media(audio))
            await ws.send(agent.mark("greeting"))

        agent = StandInAgent(speak)
        call = simulate(agent, quiet(1.2))
        assert call.marks_received == ["before-audio", "greeting"]
        assert call.marks_echoed == ["before-audio", "greeting"]
        arrived = next(e.t for e in call.of_kind("mark_in") if e.detail["name"] == "greeting")
        echoed = next(e.t for e in call.of_kind("mark_echo") if e.detail["name"] == "greeting")
        assert echoed >= arrived + 0.5 * 0.8
        assert call.played_audio == call.agent_audio == audio
        assert call.media_frames == [audio]
        assert call.protocol_errors == []

        echoes = agent.of_event("mark")
        assert [e["mark"] for e in echoes] == [{"name": "before-audio"}, {"name": "greeting"}]
        assert all(set(e) == {"event", "sequenceNumber", "streamSid", "mark"} for e in echoes)
        assert all(e["streamSid"] == agent.stream_sid for e in echoes)

    def test_sequence_numbers_stay_monotonic_across_injected_mark_echoes(self):
        async def speak(agent, ws):
            for i in range(3):
                await ws.send(agent.media(tone_ulaw(0.1)))
                await ws.send(agent.mark(f"chunk-{i}"))

        agent = StandInAgent(speak)
        simulate(agent, quiet(0.8))
        numbered = [m for _, m in agent.received if m["event"] != "connected"]
        assert [m["sequenceNumber"] for m in numbered] == [str(i) for i in range(1, len(numbered) + 1)]
        assert len(agent.of_event("mark")) == 3

    def test_clear_drops_unplayed_audio_and_echoes_pending_marks_at_once(self):
        async def speak_then_get_interrupted(agent, ws):
            await ws.send(agent.media(tone_ulaw(2.0)))
            await ws.send(agent.mark("answer"))
            await asyncio.sleep(0.3)
            await ws.send(agent.clear())

        agent = StandInAgent(speak_then_get_interrupted)
        call = simulate(agent, quiet(1.0))
        assert len(call.clears) == 1
        assert call.marks_echoed == ["answer"]
        echo = call.of_kind("mark_echo")[0]
        assert echo.detail["cleared"] is True
        assert echo.t < call.of_kind("mark_in")[0].t + 2.0 * 0.8  # long before 2 s could play
        assert len(call.agent_audio) == 16000
        assert 0 < len(call.played_audio) < len(call.agent_audio) / 2
        assert call.played_audio == call.agent_audio[: len(call.played_audio)]
        assert any(line.endswith("clear (dropped %.2f s of agent audio)" % ((16000 - len(call.played_audio)) / 8000))
                   for line in call.timeline())

    def test_audio_arriving_after_a_pause_starts_a_new_burst(self):
        async def two_answers(agent, ws):
            await ws.send(agent.media(tone_ulaw(0.1)))
            await asyncio.sleep(0.5)
            await ws.send(agent.media(tone_ulaw(0.1)))

        call = simulate(StandInAgent(two_answers), quiet(1.0))
        starts = [e.t for e in call.of_kind("media_in")]
        assert len(starts) == 2 and call.first_audio_at == starts[0]
        assert len(call.spans) == 2 and call.played_audio == call.agent_audio
        assert call.audio_between(starts[1] - 0.01, starts[1] + 1.0) == call.agent_audio[800:]
        assert [line.split("s  ", 1)[1] for line in call.timeline() if "agent audio" in line] == [
            "agent audio starts", "agent audio ends (0.10 s heard)",
            "agent audio starts", "agent audio ends (0.10 s heard)",
        ]

    def test_to_wav_writes_the_heard_audio_as_8khz_pcm(self, tmp_path):
        async def speak(agent, ws):
            await ws.send(agent.media(tone_ulaw(0.2)))

        call = simulate(StandInAgent(speak), quiet(0.5))
        call.to_wav(tmp_path / "heard.wav")
        with wave.open(str(tmp_path / "heard.wav")) as w:
            assert (w.getframerate(), w.getnchannels(), w.getsampwidth(), w.getnframes()) == (8000, 1, 2, 1600)


class TestOutboundValidation:
    """§3: only media / mark / clear, this call's streamSid, no extra fields; §4 31950/31951."""

    def test_each_invalid_outbound_message_is_reported_and_ignored(self):
        good = tone_ulaw(0.02)

        async def misbehave(agent, ws):
            await ws.send(agent.media(good, track="outbound"))  # extra top-level field
            await ws.send(json.dumps({"event": "media", "streamSid": agent.stream_sid,
                                      "media": {"payload": base64.b64encode(good).decode(), "chunk": "1"}}))
            await ws.send(json.dumps({"event": "media", "streamSid": agent.stream_sid,
                                      "media": {"payload": base64.urlsafe_b64encode(b"\xfb\xff" * 3).decode()}}))
            await ws.send(json.dumps({"event": "media", "streamSid": "MZ" + "0" * 32,
                                      "media": {"payload": base64.b64encode(good).decode()}}))
            await ws.send(good)  # binary frame
            await ws.send("not json")
            await ws.send(json.dumps({"event": "dtmf", "streamSid": agent.stream_sid, "dtmf": {"digit": "1"}}))
            await ws.send(json.dumps({"event": "mark", "streamSid": agent.stream_sid, "mark": {}}))
            await ws.send(agent.media(good))  # the only valid one

        call = simulate(StandInAgent(misbehave), quiet(0.5))
        errors = call.protocol_errors
        assert len(errors) == 8, errors
        for needle in ["extra fields ['track']", "only 'payload'", "base64", "streamSid", "binary",
                       "not JSON", "unsupported event 'dtmf'", "'name'"]:
            assert any(needle in e for e in errors), needle
        assert call.agent_audio == good and call.marks_received == []
        assert sum("PROTOCOL ERROR" in line for line in call.timeline()) == 8


def test_a_recording_with_numeric_timestamps_is_refused_before_connecting():
    msgs = quiet(0.04)
    msgs[2]["media"]["timestamp"] = 20
    with pytest.raises(ValueError, match="message 3: media.timestamp"):
        CallSimulator("ws://127.0.0.1:9/", msgs)
