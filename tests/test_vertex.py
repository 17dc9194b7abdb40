"""Calls through Vertex AI: the real server in Vertex mode, its real google-genai SDK
talking Vertex's Live dialect to the emulator (path, Bearer token from Application
Default Credentials, projects/…/publishers/google/models/… setup model,
candidatesTokenCount usage), and the settings that choose it.

ADC comes from GOOGLE_APPLICATION_CREDENTIALS pointing at an authorized-user file that
already holds a valid token (the format google-auth itself writes): the server loads it
through `google.auth.default()` exactly as in production, with no token endpoint to stub.
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest

from telephony.errors import SettingsError
from telephony.pricing import PriceTable, estimate_cost
from telephony.records_query import get_call
from telephony.settings import Settings
from telephony.testing.emulator import CallTool, LiveEmulator, Reply, Say, Script
from telephony.testing.server import ServerThread
from telephony.testing.simulator import CallSimulator
from telephony.testing.virtual_clock import VirtualClockLoop, run_fast

FIXTURES = Path(__file__).parent / "fixtures"
VERTEX_PATH = "/ws/google.cloud.aiplatform.v1beta1.LlmBidiService/BidiGenerateContent"
_CLEARED = ("GEMINI_API_KEY", "GOOGLE_API_KEY", "GOOGLE_GENAI_USE_ENTERPRISE", "GOOGLE_GEMINI_BASE_URL",
            "GOOGLE_CLOUD_PROJECT", "GOOGLE_CLOUD_LOCATION", "GOOGLE_APPLICATION_CREDENTIALS", "TWILIO_ACCOUNT_SID",
            "TWILIO_AUTH_TOKEN", "PUBLIC_URL", "REQUIRE_TWILIO_SIGNATURE", "STREAM_TOKEN_SECRET", "GEMINI_MODEL")


def order_script() -> Script:
    return Script(
        greeting=[Say(text="Hi, thanks for calling Acme Outfitters!", seconds=1.5, freq=440.0)],
        replies=[
            Reply(heard="Where is my order A1001?",
                  steps=[CallTool("lookup_order", {"order_id": "A1001"}), Say(text="It has shipped.", seconds=3.0, freq=520.0)]),
            Reply(heard="Thanks, bye.", steps=[Say(text="Goodbye!", seconds=1.5, freq=660.0)]),
        ],
        thoughts_tokens=30,
    )


@pytest.fixture(scope="module")
def vertex():
    with LiveEmulator(vertex=True, loop_factory=VirtualClockLoop) as emulator:
        yield emulator


def vertex_server(emulator: LiveEmulator, tmp: Path, *, express: bool = False):
    """The real app, configured from the environment alone, as a Vertex AI customer would."""
    from telephony.app import create_app

    saved = dict(os.environ)
    for name in _CLEARED:
        os.environ.pop(name, None)
    os.environ.update(emulator.env(express=express))
    os.environ.update(ORDERS_DB_PATH=str(tmp / "orders.db"), CALLS_DB_PATH=str(tmp / "calls.db"),
                      LIVE_CONNECT_TIMEOUT_SECONDS="5", TOOL_TIMEOUT_SECONDS="2")
    try:
        app = create_app(Settings.from_env())
        return ServerThread(app, loop=emulator.loop), saved  # calls on the emulator's virtual clock
    except BaseException:
        os.environ.clear()
        os.environ.update(saved)
        raise


def place_call(emulator: LiveEmulator, tmp: Path, *, express: bool = False):
    server, saved = vertex_server(emulator, tmp, express=express)
    try:
        with server:
            emulator.script = order_script()
            before = len(emulator.sessions)
            call = run_fast(emulator.loop, CallSimulator(server.ws_url, FIXTURES / "order_call.jsonl", speed=2).run())
            assert server.app.state.recorder.flush()
            record = get_call(tmp / "calls.db", call.call_sid)
            return call, emulator.sessions[before], record, server.app.state.settings
    finally:
        os.environ.clear()
        os.environ.update(saved)


@pytest.fixture(scope="module")
def adc_call(vertex, tmp_path_factory):
    return place_call(vertex, tmp_path_factory.mktemp("vertex"))


class TestACallThroughVertexAI:
    def test_the_sdk_reaches_vertex_live_with_the_adc_token_and_the_full_model_name(self, adc_call, vertex):
        _, session, _, _ = adc_call
        assert session.path.endswith(VERTEX_PATH)
        assert session.bearer == vertex.access_token and not session.api_key
        assert session.setup["model"] == "projects/emulator-project/locations/us-central1/publishers/google/models/gemini-3.8-live"

    def test_the_agent_greets_the_caller(self, adc_call):
        call, session, record, _ = adc_call
        assert "turn_start" in session.kinds() and session.texts  # the greeting prompt went out
        assert record["turns"][0]["role"] == "agent" and "thanks for calling" in record["turns"][0]["text"]
        assert call.spans  # and the caller heard it

    def test_the_tool_is_answered_without_will_continue_which_vertex_refuses(self, adc_call):
        _, session, record, _ = adc_call
        (response,) = session.tool_responses
        assert response["name"] == "lookup_order" and response["response"]["result"]["status"] == "shipped"
        assert "will_continue" not in response and "protocol_error" not in session.kinds()
        assert [t["outcome"] for t in record["tool_calls"]] == ["ok"]

    def test_usage_reported_as_candidates_tokens_is_counted_and_priced(self, adc_call):
        _, session, record, settings = adc_call
        tokens = record["tokens"]
        assert tokens["response"] > 0 and tokens["by_modality"]["response:AUDIO"] == tokens["response"]
        assert tokens["by_modality"]["thoughts:TEXT"] >= 30
        assert record["estimated_cost_usd"] == estimate_cost(
            tokens["prompt"], tokens["response"], tokens["by_modality"], PriceTable.from_settings(settings))
        assert settings.vertexai and settings.gemini_api_key is None


def test_express_mode_reaches_vertex_with_the_api_key_alone(vertex, tmp_path):
    _, session, record, settings = place_call(vertex, tmp_path, express=True)
    assert (settings.vertexai, settings.google_cloud_project) == (True, None)
    assert session.api_key == "emulator-express-key" and not session.bearer
    assert session.setup["model"] == "publishers/google/models/gemini-3.8-live"
    assert record["tokens"]["response"] > 0 and len(session.tool_responses) == 1


def test_vertex_closes_a_session_for_a_model_it_does_not_serve_there(vertex, tmp_path):
    """The settings refuse it at start-up; this is what a call would otherwise meet."""
    from google import genai

    async def connect(model: str) -> None:
        os.environ.update(vertex.env())
        client = genai.Client(vertexai=True, project=vertex.project, location="global")
        async with client.aio.live.connect(model=model):
            pass

    saved = dict(os.environ)
    try:
        with pytest.raises(Exception, match="not found in location global"):
            asyncio.run(connect("gemini-live-2.5-flash-native-audio"))
    finally:
        os.environ.clear()
        os.environ.update(saved)


def test_vertex_refuses_will_continue_which_only_the_gemini_api_takes(vertex):
    from google import genai
    from google.genai import errors, types

    async def answer_with_will_continue() -> None:
        os.environ.update(vertex.env())
        client = genai.Client(vertexai=True, project=vertex.project, location=vertex.location)
        async with client.aio.live.connect(model="gemini-3.8-live") as session:
            await session.send_tool_response(function_responses=[types.FunctionResponse(
                id="fc-1", name="lookup_order", response={"result": "ok"}, will_continue=True)])
            async for _ in session.receive():
                pass

    saved = dict(os.environ)
    vertex.script = Script()
    try:
        with pytest.raises(errors.APIError, match="willContinue") as caught:
            asyncio.run(answer_with_will_continue())
        assert caught.value.code == 1007
    finally:
        os.environ.clear()
        os.environ.update(saved)


class TestVertexSettings:
    BASE = {"GOOGLE_GENAI_USE_VERTEXAI": "true", "GOOGLE_CLOUD_PROJECT": "acme-phone-agent"}

    def test_with_a_project_no_api_key_is_needed(self):
        s = Settings.from_env(self.BASE)
        assert (s.vertexai, s.google_cloud_project, s.google_cloud_location, s.gemini_api_key) == (
            True, "acme-phone-agent", "global", None)

    def test_the_project_wins_over_an_api_key_as_in_the_sdk(self):
        assert Settings.from_env({**self.BASE, "GOOGLE_API_KEY": "AQ.some-key-123"}).gemini_api_key is None

    def test_the_sdks_enterprise_switch_is_honoured_too(self):
        assert Settings.from_env({"GOOGLE_GENAI_USE_ENTERPRISE": "1", "GOOGLE_CLOUD_PROJECT": "acme-phone-agent"}).vertexai

    def test_neither_a_project_nor_a_key_stops_start_up(self):
        with pytest.raises(SettingsError, match="GOOGLE_CLOUD_PROJECT .* or, for Vertex AI express mode, GOOGLE_API_KEY"):
            Settings.from_env({"GOOGLE_GENAI_USE_VERTEXAI": "true"})

    def test_live_2_5_is_refused_on_the_global_location_and_served_in_its_regions(self):
        model = {"GEMINI_MODEL": "gemini-live-2.5-flash-native-audio"}
        with pytest.raises(SettingsError, match="not served on the Vertex AI location 'global'.*us-central1, us-east5, "
                                                "europe-west4"):
            Settings.from_env({**self.BASE, **model})
        assert Settings.from_env({**self.BASE, **model, "GOOGLE_CLOUD_LOCATION": "us-east5"}).google_cloud_location == "us-east5"

    def test_a_gemini_api_model_id_is_refused_naming_the_vertex_id(self):
        with pytest.raises(SettingsError, match="its Vertex AI id is gemini-live-2.5-flash-native-audio"):
            Settings.from_env({**self.BASE, "GEMINI_MODEL": "gemini-2.5-flash-native-audio-preview-12-2025"})

    @pytest.mark.parametrize("name, value", [("GOOGLE_CLOUD_PROJECT", "Not A Project"),
                                             ("GOOGLE_CLOUD_LOCATION", "moon base")])
    def test_a_malformed_project_or_location_is_named(self, name, value):
        with pytest.raises(SettingsError, match=name):
            Settings.from_env({**self.BASE, name: value})

    def test_without_application_default_credentials_the_server_does_not_start(self, tmp_path, monkeypatch):
        from telephony.live import make_client

        monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(tmp_path / "missing.json"))
        with pytest.raises(SettingsError, match="Application Default Credentials"):
            make_client(Settings.from_env(self.BASE))
