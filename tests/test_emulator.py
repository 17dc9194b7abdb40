"""The Live emulator, driven by the real google-genai SDK through the environment only.

Reference: docs/gemini-live.md (§ numbers in the class docstrings).
"""

from __future__ import annotations

import asyncio
import base64
import json
import ssl
import wave
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
import websockets
from google import genai
from google.genai import errors, types
from websockets.asyncio.client import connect as ws_connect

from telephony.testing import CallTool, Fail, LiveEmulator, Reply, Say, Script
from telephony.testing.emulator import EnergyVad, tone_pcm

MODEL = "gemini-3.8-live"
LIVE_PATH = "/ws/google.ai.generativelanguage.v1beta.GenerativeService.BidiGenerateContent"
SPEECH_WAV = Path(__file__).parent / "fixtures" / "speech" / "arctic_a0007.wav"


def load_speech() -> bytes:
    with wave.open(str(SPEECH_WAV)) as wav:
        assert (wav.getframerate(), wav.getsampwidth(), wav.getnchannels()) == (16_000, 2, 1)
        return wav.readframes(wav.getnframes())


SPEECH = load_speech()
CALLER_UTTERANCE = SPEECH + bytes(16_000 * 2)  # 4 s of speech, then 1 s of silence


def dominant_frequency(pcm: bytes, rate: int = 24_000) -> float:
    x = np.frombuffer(pcm, dtype="<i2").astype(np.float64)
    spectrum = np.abs(np.fft.rfft(x * np.hanning(len(x))))
    return float(np.argmax(spectrum) * rate / len(x))


def run(coro, timeout: float = 10):
    """Run one scenario on a fresh loop, never longer than `timeout`."""
    return asyncio.run(asyncio.wait_for(coro, timeout))


@dataclass
class Turn:
    """What the SDK delivered for one model turn."""

    audio: bytearray = field(default_factory=bytearray)
    said: str = ""
    heard: str = ""
    tool_calls: list[types.FunctionCall] = field(default_factory=list)
    cancelled_calls: list[str] = field(default_factory=list)
    interrupted: bool = False


async def receive_turn(session, answer_tools: dict | None = None, on_audio=None) -> Turn:
    """Read one turn (receive() stops at turnComplete), answering tool calls with `answer_tools`."""
    turn = Turn()
    async for message in session.receive():
        content = message.server_content
        if message.data:
            turn.audio += message.data
            if on_audio is not None:
                await on_audio(turn)
        if content and content.output_transcription and content.output_transcription.text:
            turn.said += content.output_transcription.text
        if content and content.input_transcription and content.input_transcription.text:
            turn.heard += content.input_transcription.text
        if content and content.interrupted:
            turn.interrupted = True
        if message.tool_call_cancellation:
            turn.cancelled_calls += message.tool_call_cancellation.ids or []
        if message.tool_call:
            for call in message.tool_call.function_calls:
                turn.tool_calls.append(call)
                if answer_tools is not None:
                    await session.send_tool_response(function_responses=[types.FunctionResponse(
                        id=call.id, name=call.name, response=answer_tools[call.name])])
    return turn


async def next_message(session) -> types.LiveServerMessage:
    async for message in session.receive():
        return message
    raise AssertionError("receive() ended without a message")


async def caller_says(session, pcm: bytes, chunk_bytes: int = 640) -> None:
    """Send 16 kHz PCM in 20 ms chunks, as the bridge does with a caller's voice."""
    for i in range(0, len(pcm), chunk_bytes):
        await session.send_realtime_input(
            audio=types.Blob(data=pcm[i : i + chunk_bytes], mime_type="audio/pcm;rate=16000"))


@pytest.fixture
def emulator():
    with LiveEmulator(Script(pace=0)) as emulator:
        yield emulator


@pytest.fixture
def client(emulator, monkeypatch):
    for name, value in emulator.env().items():
        monkeypatch.setenv(name, value)
    for name in ("GOOGLE_GENAI_USE_VERTEXAI", "GOOGLE_GENAI_USE_ENTERPRISE", "GOOGLE_API_KEY",
                 "GOOGLE_GENAI_API_VERSION", "HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(name, raising=False)
    return genai.Client(api_key="x", http_options=types.HttpOptions(api_version="v1beta"))


@pytest.fixture
def our_client(client):
    """The server's own client (telephony.live.make_client): keepalive, no deflate."""
    from types import SimpleNamespace

    from telephony.live import make_client

    return make_client(SimpleNamespace(gemini_api_key="x"))


def live(client, **config):
    return client.aio.live.connect(
        model=MODEL, config=types.LiveConnectConfig(response_modalities=["AUDIO"], **config))


def raw_ssl_context(emulator) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=emulator.cert_path)


LOOKUP_ORDER = types.Tool(function_declarations=[types.FunctionDeclaration(
    name="lookup_order", description="Look up an order by its number",
    parameters=types.Schema(type="OBJECT", properties={"order_id": types.Schema(type="STRING")},
                            required=["order_id"]))])


class TestHandshake:
    """§1 URL and auth, §2 setup, §4.2-4.4 setupComplete and rejections, §11.4."""

    def test_setup_message_is_recorded_as_the_sdk_sent_it(self, emulator, client):
        async def scenario():
            config = dict(
                system_instruction="You are a phone agent.",
                tools=[LOOKUP_ORDER],
                realtime_input_config=types.RealtimeInputConfig(
                    automatic_activity_detection=types.AutomaticActivityDetection(silence_duration_ms=300)),
            )
            async with live(client, **config) as session:
                assert session.setup_complete is not None

        run(scenario())
        emulator.wait_for(lambda: emulator.sessions and emulator.sessions[0].closed)
        session = emulator.sessions[0]
        assert session.setup["model"] == f"models/{MODEL}"
        assert session.setup["tools"][0]["functionDeclarations"][0]["name"] == "lookup_order"
        assert session.setup["realtimeInputConfig"]["automatic_activity_detection"]["silence_duration_ms"] == 300
        assert session.api_key == "x"
        assert session.path.endswith(LIVE_PATH)
        assert session.kinds() == ["setup", "closed"] and session.close_code == 1000

    def test_unanswered_setup_leaves_connect_waiting_until_the_caller_times_out(self, emulator, client):
        emulator.script = Script(setup="never")

        async def scenario():
            with pytest.raises(TimeoutError):
                async with asyncio.timeout(1):
                    async with live(client):
                        pass

        run(scenario())
        assert emulator.sessions[0].setup["model"] == f"models/{MODEL}"

    def test_setup_closed_with_a_policy_error_raises_api_error(self, emulator, client):
        emulator.script = Script(setup="close", setup_close_code=1008, setup_close_reason="model not found")

        async def scenario():
            with pytest.raises(errors.APIError) as raised:
                async with live(client):
                    pass
            assert raised.value.code == 1008 and "model not found" in str(raised.value)

        run(scenario())

    def test_http_403_refuses_the_upgrade(self, emulator, client):
        emulator.script = Script(setup="http403")

        async def scenario():
            with pytest.raises(websockets.InvalidStatus) as raised:
                async with live(client):
                    pass
            assert raised.value.response.status_code == 403

        run(scenario())
        assert emulator.sessions == []

    def test_unknown_path_gets_http_404(self, emulator):
        async def scenario():
            url = emulator.url.replace("https://", "wss://") + "/ws/some.other.Service/Method"
            with pytest.raises(websockets.InvalidStatus) as raised:
                async with ws_connect(url, ssl=raw_ssl_context(emulator), proxy=None):
                    pass
            assert raised.value.response.status_code == 404

        run(scenario())


class TestConversation:
    """§3 client frames, §4 server frames, §7 activity detection and barge-in, §8 tools."""

    def test_text_prompt_gets_the_greeting_as_a_tone_with_its_transcription(self, emulator, client):
        emulator.script = Script(pace=0, greeting=[Say(text="Hello, thanks for calling Acme!", seconds=0.5, freq=440)])

        async def scenario():
            async with live(client) as session:
                await session.send_realtime_input(text="Greet the caller.")
                return await receive_turn(session)

        turn = run(scenario())
        assert turn.said == "Hello, thanks for calling Acme!"
        assert len(turn.audio) == 24_000  # 0.5 s of 24 kHz s16le
        assert dominant_frequency(turn.audio) == pytest.approx(440, abs=3)
        assert emulator.sessions[0].texts == ["Greet the caller."]

    def test_caller_utterance_triggers_a_tool_call_then_the_answer(self, emulator, client):
        emulator.script = Script(pace=0, replies=[Reply(
            heard="Where is my order A12?",
            steps=[CallTool("lookup_order", {"order_id": "A12"}), Say("It ships tomorrow.", seconds=0.5, freq=660)],
        )])

        async def scenario():
            async with live(client, tools=[LOOKUP_ORDER]) as session:
                await caller_says(session, CALLER_UTTERANCE)
                return await receive_turn(session, answer_tools={"lookup_order": {"status": "shipped"}})

        turn = run(scenario())
        assert turn.heard == "Where is my order A12?"
        assert [(c.id, c.name, c.args) for c in turn.tool_calls] == [("fc-1", "lookup_order", {"order_id": "A12"})]
        assert turn.said == "It ships tomorrow."
        assert dominant_frequency(turn.audio) == pytest.approx(660, abs=3)

        emulator.wait_for(lambda: emulator.sessions[0].closed)
        session = emulator.sessions[0]
        assert session.tool_responses == [{"id": "fc-1", "name": "lookup_order", "response": {"status": "shipped"}}]
        assert session.audio_in == CALLER_UTTERANCE  # URL-safe base64 decoded byte for byte
        assert session.audio_chunks == len(CALLER_UTTERANCE) // 640
        events = dict((kind, detail) for _, kind, detail in session.events)
        assert 0.40 <= events["caller_speech_start"] <= 0.60  # the speech starts at 0.42 s
        assert 3.40 <= events["caller_speech_end"] <= 4.20  # ends at 3.42 s, plus 500 ms of silence
        assert session.kinds().index("tool_call") < session.kinds().index("tool_response") < session.kinds().index(
            "audio_out")

    @pytest.mark.parametrize("scheduling, when_idle_fires, speaks", [
        ("INTERRUPT", False, True), ("SILENT", False, False), ("WHEN_IDLE", False, False),
        ("WHEN_IDLE", True, True), (None, False, False),  # None: WHEN_IDLE, the NON_BLOCKING default
    ])
    def test_a_non_blocking_call_is_spoken_about_as_its_response_schedules(
        self, emulator, client, scheduling, when_idle_fires, speaks
    ):
        emulator.script = Script(pace=0, when_idle_fires=when_idle_fires, replies=[Reply(
            steps=[Say("One moment.", seconds=0.2, freq=440), CallTool("lookup_order", {"order_id": "A12"}),
                   Say("It ships tomorrow.", seconds=0.5, freq=660)],
        )])
        declaration = LOOKUP_ORDER.function_declarations[0].model_copy(update={"behavior": types.Behavior.NON_BLOCKING})

        async def scenario():
            async with live(client, tools=[types.Tool(function_declarations=[declaration])]) as session:
                await caller_says(session, CALLER_UTTERANCE)
                turn = Turn()
                async for message in session.receive():
                    if message.data:
                        turn.audio += message.data
                    if message.tool_call:
                        call = message.tool_call.function_calls[0]
                        await session.send_tool_response(function_responses=[types.FunctionResponse(
                            id=call.id, name=call.name, response={"status": "shipped"}, scheduling=scheduling)])
                return turn

        turn = run(scenario())
        assert len(turn.audio) == (24_000 * 0.7 if speaks else 24_000 * 0.2) * 2
        unspoken = [d for _, kind, d in emulator.sessions[0].events if kind == "tool_result_unspoken"]
        assert bool(unspoken) is not speaks

    def test_caller_speech_during_a_long_answer_interrupts_it(self, emulator, client):
        emulator.script = Script(pace=2.0, greeting=[Say("This is a very long answer.", seconds=20)])

        async def scenario():
            async with live(client) as session:
                await session.send_realtime_input(text="Greet the caller.")

                async def barge_in(turn: Turn) -> None:
                    if len(turn.audio) == 40 * 48:  # after the first 40 ms chunk
                        await caller_says(session, SPEECH)

                return await receive_turn(session, on_audio=barge_in)

        turn = run(scenario())
        assert turn.interrupted
        assert len(turn.audio) < 20 * 48_000
        kinds = emulator.sessions[0].kinds()
        assert kinds.index("caller_speech_start") < kinds.index("interrupted") < kinds.index("turn_complete")

    def test_an_unanswered_tool_call_times_out_and_the_turn_goes_on(self, emulator, client):
        emulator.script = Script(pace=0, greeting=[CallTool("lookup_order", {"order_id": "B7"}, wait=0.2),
                                                   Say("Sorry, our systems are slow.", seconds=0.2)])

        async def scenario():
            async with live(client, tools=[LOOKUP_ORDER]) as session:
                await session.send_realtime_input(text="Greet the caller.")
                return await receive_turn(session)

        turn = run(scenario())
        assert [c.name for c in turn.tool_calls] == ["lookup_order"]
        assert turn.said == "Sorry, our systems are slow."
        assert "tool_timeout" in emulator.sessions[0].kinds()

    def test_a_new_utterance_cancels_an_unanswered_tool_call(self, emulator, client):
        emulator.script = Script(pace=0, replies=[Reply(steps=[CallTool("lookup_order", {"order_id": "C3"})])])

        async def scenario():
            async with live(client, tools=[LOOKUP_ORDER]) as session:
                await caller_says(session, CALLER_UTTERANCE * 2)
                calls, cancelled = [], []
                while not cancelled:
                    message = await next_message(session)
                    if message.tool_call:
                        calls += [call.id for call in message.tool_call.function_calls]
                    if message.tool_call_cancellation:
                        cancelled += message.tool_call_cancellation.ids
                return calls, cancelled

        calls, cancelled = run(scenario())
        assert calls == ["fc-1"] and cancelled == ["fc-1"]
        emulator.wait_for(lambda: "tool_cancelled" in emulator.sessions[0].kinds())

    def test_activity_signals_replace_the_vad_when_automatic_detection_is_off(self, emulator, client):
        emulator.script = Script(pace=0, replies=[Reply(heard="Hello?", steps=[Say("Yes, I am here.", seconds=0.2)])])
        manual = types.RealtimeInputConfig(
            automatic_activity_detection=types.AutomaticActivityDetection(disabled=True))

        async def scenario():
            async with live(client, realtime_input_config=manual) as session:
                await session.send_realtime_input(activity_start=types.ActivityStart())
                await caller_says(session, bytes(3200))  # silence: the VAD would hear nothing
                await session.send_realtime_input(activity_end=types.ActivityEnd())
                return await receive_turn(session)

        turn = run(scenario())
        assert (turn.heard, turn.said) == ("Hello?", "Yes, I am here.")
        kinds = emulator.sessions[0].kinds()
        assert kinds.index("activity_start") < kinds.index("caller_speech_start") < kinds.index("caller_speech_end")

    def test_concurrent_sessions_are_independent(self, emulator, client):
        emulator.script = Script(pace=0, greeting=[Say("Hi there.", seconds=0.2, freq=880)])

        async def one_call(prompt: str) -> Turn:
            async with live(client) as session:
                await session.send_realtime_input(text=prompt)
                return await receive_turn(session)

        async def scenario():
            return await asyncio.gather(one_call("first"), one_call("second"))

        turns = run(scenario())
        assert [t.said for t in turns] == ["Hi there.", "Hi there."]
        assert all(len(t.audio) == 0.2 * 48_000 for t in turns)
        assert sorted(s.texts[0] for s in emulator.sessions) == ["first", "second"]

    def test_camel_case_client_frames_are_accepted(self, emulator):
        """The service parses protobuf JSON, so either casing works (§11.5)."""
        emulator.script = Script(pace=0, greeting=[Say("Hi.", seconds=0.1)])
        chunk = bytes(range(256)) * 2  # standard base64 with '+' and '/'

        async def scenario():
            url = emulator.url.replace("https://", "wss://") + "/" + LIVE_PATH
            async with ws_connect(url, ssl=raw_ssl_context(emulator), proxy=None) as ws:
                await ws.send(json.dumps({"setup": {"model": f"models/{MODEL}"}}))
                assert json.loads(await ws.recv()) == {"setupComplete": {}}
                await ws.send(json.dumps({"realtimeInput": {"mediaChunks": [
                    {"mimeType": "audio/pcm;rate=16000", "data": base64.b64encode(chunk).decode()}]}}))
                await ws.send(json.dumps({"clientContent": {
                    "turns": [{"role": "user", "parts": [{"text": "Hello?"}]}], "turnComplete": True}}))
                frames: list[str] = []
                while frames[-1:] != ["turnComplete"]:
                    frame = json.loads(await ws.recv())
                    frames.append(next(iter(frame.get("serverContent", {"(other)": None}))))
                return frames

        frames = run(scenario())
        assert frames[-3:] == ["modelTurn", "generationComplete", "turnComplete"]
        session = emulator.sessions[0]
        assert session.audio_in == chunk and session.texts == ["Hello?"]


class TestSessionControls:
    """§4.8 close codes, §5 goAway and resumption, driven from the test while the call is live."""

    def test_go_away_then_deadline_close_reach_the_sdk(self, emulator, client):
        async def scenario():
            async with live(client) as session:
                emulated = emulator.sessions[0]
                emulated.go_away("50s")
                message = await next_message(session)
                assert message.go_away.time_left == "50s"
                emulated.close(1011, "Deadline expired")
                with pytest.raises(errors.APIError) as raised:
                    await next_message(session)
                assert raised.value.code == 1011 and "Deadline expired" in str(raised.value)

        run(scenario())
        emulator.wait_for(lambda: emulator.sessions[0].closed)
        assert emulator.sessions[0].close_code == 1011

    def test_resumption_handle_resumes_and_an_unknown_one_is_rejected(self, emulator, client):
        emulator.script = Script(pace=0, greeting=[Say("Hi.", seconds=0.1)])

        async def scenario():
            async with live(client, session_resumption=types.SessionResumptionConfig()) as session:
                await session.send_realtime_input(text="Greet the caller.")
                await receive_turn(session)
                assert (await next_message(session)).usage_metadata.total_token_count > 0
                update = (await next_message(session)).session_resumption_update
                assert update.resumable
            resumed = types.SessionResumptionConfig(handle=update.new_handle)
            async with live(client, session_resumption=resumed) as session:
                assert session.setup_complete is not None
            with pytest.raises(errors.APIError) as raised:
                async with live(client, session_resumption=types.SessionResumptionConfig(handle="made-up")):
                    pass
            assert raised.value.code == 1007

        run(scenario())
        emulator.wait_for(lambda: len(emulator.sessions) == 3 and emulator.sessions[2].closed)
        assert "resumed" in emulator.sessions[1].kinds()
        assert "protocol_error" in emulator.sessions[2].kinds()

    def test_a_resume_while_the_old_socket_is_open_is_refused_with_1011(self, emulator, client):
        emulator.script = Script(pace=0, greeting=[Say("Hi.", seconds=0.1)])

        async def scenario():
            async with live(client, session_resumption=types.SessionResumptionConfig()) as session:
                await session.send_realtime_input(text="Greet the caller.")
                await receive_turn(session)
                await next_message(session)  # usage
                handle = (await next_message(session)).session_resumption_update.new_handle
                again = types.SessionResumptionConfig(handle=handle)
                with pytest.raises(errors.APIError) as raised:
                    async with live(client, session_resumption=again):
                        pass
                assert raised.value.code == 1011 and "still has an open connection" in str(raised.value)
            async with live(client, session_resumption=again) as session:  # closed first: resumed
                assert session.setup_complete is not None

        run(scenario())
        emulator.wait_for(lambda: len(emulator.sessions) == 3 and emulator.sessions[2].closed)
        assert "resume_refused_open" in emulator.sessions[1].kinds()
        assert "resumed" in emulator.sessions[2].kinds()

    def test_fail_step_sends_a_raw_frame_then_closes(self, emulator, client):
        emulator.script = Script(pace=0, greeting=[
            Say("One moment.", seconds=0.1),
            Fail(raw={"toolCallCancellation": {"ids": ["fc-9"]}}),
            Fail(close_code=1011, reason="Internal error encountered."),
        ])

        async def scenario():
            async with live(client) as session:
                await session.send_realtime_input(text="Greet the caller.")
                with pytest.raises(errors.APIError) as raised:
                    await receive_turn(session)
                assert raised.value.code == 1011

        run(scenario())
        emulator.wait_for(lambda: emulator.sessions[0].closed)
        assert emulator.sessions[0].close_code == 1011


class TestRobustness:
    """Bad input closes the one session the way the service does; the server keeps serving."""

    def test_invalid_json_closes_the_session_with_1007(self, emulator):
        async def scenario():
            url = emulator.url.replace("https://", "wss://") + LIVE_PATH
            async with ws_connect(url, ssl=raw_ssl_context(emulator), proxy=None) as ws:
                await ws.send(json.dumps({"setup": {"model": f"models/{MODEL}"}}))
                await ws.recv()
                await ws.send("this is not json")
                with pytest.raises(websockets.ConnectionClosedError) as raised:
                    await ws.recv()
                assert raised.value.rcvd.code == 1007

        run(scenario())
        emulator.wait_for(lambda: emulator.sessions[0].closed)
        assert "protocol_error" in emulator.sessions[0].kinds()

    def test_an_internal_error_is_recorded_and_the_server_keeps_serving(self, emulator, client):
        emulator.raise_server_errors = False
        emulator.script = Script(pace=0, greeting=[CallTool("lookup_order", {"when": object()})])

        async def scenario():
            async with live(client) as session:
                await session.send_realtime_input(text="Greet the caller.")
                with pytest.raises(errors.APIError) as raised:
                    await receive_turn(session)
                assert raised.value.code == 1011
            emulator.script = Script(pace=0)
            async with live(client) as session:
                assert session.setup_complete is not None

        run(scenario())
        assert len(emulator.sessions) == 2
        assert "TypeError" in emulator.server_errors()[0]


class TestWaitFor:
    def test_a_timeout_names_the_condition_and_the_last_events(self, emulator):
        with pytest.raises(AssertionError, match=r"<lambda>.*test_emulator\.py.*IndexError.*0 session"):
            emulator.wait_for(lambda: emulator.sessions[0].closed, timeout=0.05)


class TestEnergyVad:
    """The emulator's speech detector, without sockets (§7)."""

    def test_real_speech_is_one_utterance_whatever_the_chunking(self):
        for chunk_bytes in (640, 333, len(CALLER_UTTERANCE)):
            vad = EnergyVad(silence_ms=500)
            transitions = []
            for i in range(0, len(CALLER_UTTERANCE), chunk_bytes):
                transitions += vad.feed(CALLER_UTTERANCE[i : i + chunk_bytes])
            assert [kind for kind, _ in transitions] == ["start", "end"], chunk_bytes
            assert transitions[0][1] == pytest.approx(0.46, abs=0.04)
            assert transitions[1][1] == pytest.approx(3.92, abs=0.06)

    def test_a_short_click_is_not_speech(self):
        click = np.zeros(16_000, dtype="<i2")
        click[8000:8640] = 20_000  # 40 ms, two windows
        assert EnergyVad().feed(click.tobytes()) == []

    def test_silence_duration_sets_when_speech_ends(self):
        vad = EnergyVad(silence_ms=200)
        transitions = vad.feed(SPEECH)
        ends = [at for kind, at in transitions if kind == "end"]
        assert ends and ends[-1] == pytest.approx(3.62, abs=0.06)

    def test_a_tone_reads_as_speech_at_any_rate(self):
        loud = np.frombuffer(tone_pcm(300, 0.2, rate=8000), dtype="<i2")
        assert [kind for kind, _ in EnergyVad().feed(loud.tobytes(), rate=8000)] == ["start"]


class TestScript:
    def test_bad_values_are_rejected_with_clear_errors(self):
        with pytest.raises(ValueError, match="Script.setup"):
            Script(setup="sometimes")
        with pytest.raises(ValueError, match="Say.audio"):
            Say(audio=b"\x00")
        with pytest.raises(TypeError, match="Reply.steps"):
            Reply(steps=["hello"])

    def test_replies_repeat_the_last_one_once_exhausted(self):
        script = Script(replies=[Reply(heard="one"), Reply(heard="two")])
        assert [script.reply(i).heard for i in range(4)] == ["one", "two", "two", "two"]



def test_caller_audio_sent_through_the_session_reaches_live_exactly_and_before_the_close(our_client, emulator):
    """telephony.live.LiveSession speaks through the SDK's public API only: every caller
    frame arrives, byte for byte (the URL-safe base64 alphabet included), in order, and
    frames sent just before the session closes are not lost."""
    from types import SimpleNamespace

    from telephony.live import open_session

    settings = SimpleNamespace(live_connect_timeout_s=5, gemini_model=MODEL)
    frames = [bytes(range(256)) * 2 + b"\xfb\xff", bytes(640), bytes(range(200, 256)) * 10]

    async def run() -> None:
        config = types.LiveConnectConfig(response_modalities=["AUDIO"])
        async with open_session(our_client, settings, config) as session:
            for pcm in frames:
                await session.send_audio(pcm)

    asyncio.run(run())
    emulator.wait_for(lambda: emulator.sessions and emulator.sessions[0].closed)
    assert bytes(emulator.sessions[0].audio_in) == b"".join(frames)
