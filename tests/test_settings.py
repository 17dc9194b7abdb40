"""Configuration is read once from the environment and a bad value names its variable."""

from __future__ import annotations

from pathlib import Path

import pytest

from telephony.errors import SettingsError
from telephony.settings import DEFAULT_MODEL, Settings

BASE = {"GEMINI_API_KEY": "test-key"}


def settings(**env: str) -> Settings:
    return Settings.from_env({**BASE, **env})


def test_defaults_are_a_working_phone_agent():
    s = settings()
    assert s.gemini_model == DEFAULT_MODEL
    assert (s.vad_start_sensitivity, s.vad_end_sensitivity) == ("LOW", "HIGH")
    assert s.public_url is None and not s.has_twilio_rest


def test_google_api_key_is_accepted_too():
    assert Settings.from_env({"GOOGLE_API_KEY": "k2"}).gemini_api_key == "k2"


def test_missing_api_key_names_the_variable():
    with pytest.raises(SettingsError, match="GEMINI_API_KEY"):
        Settings.from_env({})


@pytest.mark.parametrize(
    "name, value",
    [
        ("PUBLIC_URL", "http://agent.example.com"),
        ("PUBLIC_URL", "https://agent.example.com/path"),
        ("PUBLIC_URL", "agent.example.com"),
        ("TWILIO_ACCOUNT_SID", "XX123"),
        ("TWILIO_AUTH_TOKEN", "short"),
        ("VAD_START_SENSITIVITY", "medium"),
        ("VAD_END_SENSITIVITY", "LOWEST"),
        ("VAD_SILENCE_DURATION_MS", "fast"),
        ("VAD_SILENCE_DURATION_MS", "10"),
        ("VAD_PREFIX_PADDING_MS", "-5"),
        ("LIVE_CONNECT_TIMEOUT_SECONDS", "0"),
        ("TOOL_TIMEOUT_SECONDS", "soon"),
        ("GEMINI_MODEL", "gemini live"),
        ("GEMINI_VOICE", "Kore!"),
        ("LOG_LEVEL", "LOUD"),
        ("CALL_LEASE_SECONDS", "0.5"),
        ("CALL_LEASE_SECONDS", "ten"),
        ("CALL_ORPHAN_SECONDS", "0"),
        ("CALL_ORPHAN_SECONDS", "7200"),
        ("AGENT_INSTRUCTIONS_FILE", "/nonexistent/instructions.txt"),
    ],
)
def test_a_bad_value_fails_naming_the_variable(name, value):
    with pytest.raises(SettingsError, match=name):
        settings(**{name: value})


def test_a_crashed_call_s_lease_and_orphan_times_are_read():
    assert (settings().call_lease_s, settings().call_orphan_s) == (10.0, 60.0)
    s = settings(CALL_LEASE_SECONDS="2.5", CALL_ORPHAN_SECONDS="20")
    assert (s.call_lease_s, s.call_orphan_s) == (2.5, 20.0)
    with pytest.raises(SettingsError) as info:
        settings(CALL_ORPHAN_SECONDS="-1")
    assert str(info.value).count("\n") == 0 and "CALL_ORPHAN_SECONDS" in str(info.value)


def test_auth_token_is_never_echoed_in_errors_or_repr():
    with pytest.raises(SettingsError) as info:
        settings(TWILIO_AUTH_TOKEN="s3cr3t!")
    assert "s3cr3t" not in str(info.value)
    s = settings(TWILIO_ACCOUNT_SID="AC" + "a" * 32, TWILIO_AUTH_TOKEN="f" * 32)
    assert "f" * 32 not in repr(s) and "test-key" not in repr(s)
    assert s.describe()["twilio_auth_token"] == "set"


def test_public_url_gives_the_stream_host():
    s = settings(PUBLIC_URL="https://agent.example.com/")
    assert s.public_url == "https://agent.example.com" and s.public_host == "agent.example.com"


def test_instructions_come_from_a_file(tmp_path: Path):
    path = tmp_path / "agent.txt"
    path.write_text("You are Bob's bakery.\n")
    assert settings(AGENT_INSTRUCTIONS_FILE=str(path)).agent_instructions == "You are Bob's bakery."
    with pytest.raises(SettingsError, match="not both"):
        settings(AGENT_INSTRUCTIONS_FILE=str(path), AGENT_INSTRUCTIONS="inline")


def test_activity_detection_tuning_is_read():
    s = settings(VAD_START_SENSITIVITY="high", VAD_END_SENSITIVITY="low", VAD_PREFIX_PADDING_MS="100", VAD_SILENCE_DURATION_MS="800")
    assert (s.vad_start_sensitivity, s.vad_end_sensitivity, s.vad_prefix_padding_ms, s.vad_silence_duration_ms) == ("HIGH", "LOW", 100, 800)



@pytest.mark.parametrize("model", ["gemini-3.8-live", "models/gemini-3.8-live", "gemini-2.5-flash-native-audio-preview-12-2025"])
def test_supported_live_models_are_accepted(model):
    assert settings(GEMINI_MODEL=model).gemini_model == model.removeprefix("models/")


@pytest.mark.parametrize("model, why", [
    ("gemini-3.8-live-extended-thinking", "extended-thinking"),
    ("gemini-3.1-flash-live-preview", "synchronously"),
    ("gemini-2.0-flash", "not a supported Live model"),
])
def test_models_we_cannot_serve_are_refused_at_start_up_in_one_line(model, why):
    with pytest.raises(SettingsError, match=why) as info:
        settings(GEMINI_MODEL=model)
    assert "GEMINI_MODEL" in str(info.value) and "\n" not in str(info.value)


def test_the_speech_language_is_validated_and_sent_to_live():
    from telephony.live import build_config

    assert settings().gemini_language is None
    config = build_config(settings(GEMINI_LANGUAGE="es-ES"))
    assert config.speech_config.language_code == "es-ES"
    with pytest.raises(SettingsError, match="GEMINI_LANGUAGE='spanish'"):
        settings(GEMINI_LANGUAGE="spanish")


def test_languages_only_vertex_ai_lists_are_accepted_too():
    for code in ("uk-UA", "ro-RO", "ar-EG", "bn-BD"):
        assert settings(GEMINI_LANGUAGE=code).gemini_language == code


def test_warm_transfers_per_target_or_by_default_and_their_requirements_in_one_line():
    line = {"PUBLIC_URL": "https://agent.example.com", "TWILIO_ACCOUNT_SID": "AC" + "1" * 32,
            "TWILIO_AUTH_TOKEN": "a" * 32, "TWILIO_PHONE_NUMBER": "+15559870000"}
    s = settings(TRANSFER_TARGETS="sales=+15551230001;warm, billing=+15551230002", **line)
    assert s.transfer_targets == (("sales", "+15551230001"), ("billing", "+15551230002"))
    assert s.warm_transfer_targets == {"sales"}
    s = settings(TRANSFER_TARGETS="sales=+15551230001,desk=sip:desk@example.com;cold", TRANSFER_MODE="warm", **line)
    assert s.warm_transfer_targets == {"sales"}
    with pytest.raises(SettingsError, match="need TWILIO_PHONE_NUMBER") as info:
        settings(TRANSFER_TARGETS="sales=+15551230001;warm",
                 **{k: v for k, v in line.items() if k != "TWILIO_PHONE_NUMBER"})
    assert "\n" not in str(info.value)
    with pytest.raises(SettingsError, match="TRANSFER_MODE='lukewarm'"):
        settings(TRANSFER_TARGETS="sales=+15551230001", TRANSFER_MODE="lukewarm")
    with pytest.raises(SettingsError, match="cold or warm"):
        settings(TRANSFER_TARGETS="sales=+15551230001;hot")
    with pytest.raises(SettingsError, match="HOLD_MUSIC_URL"):
        settings(HOLD_MUSIC_URL="music.mp3")
    with pytest.raises(SettingsError, match="TRANSFER_RING_SECONDS"):
        settings(TRANSFER_RING_SECONDS="2")
    assert settings(VOICEMAIL_MESSAGE="Your order shipped.").voicemail_message == "Your order shipped."
    assert settings().voicemail_message is None and settings().warm_transfer_targets == frozenset()
