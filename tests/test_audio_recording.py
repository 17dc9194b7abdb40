"""Call audio (telephony/audio_recording.py): one stereo WAV per call, caller left, agent right as heard."""

from __future__ import annotations

import base64
import os
import time
import wave

import httpx
import numpy as np
import pytest

from telephony.audio import ulaw_encode
from telephony.audio_recording import AudioRecordings, CallAudio
from telephony.testing.watched import authorized, place_call, watched_server
from telephony.testing.order_story import order_script
from telephony.testing.waiting import wait_until


def frame(value: int) -> str:
    """One 20 ms frame of 8 kHz μ-law at a constant level, base64 as Twilio sends it."""
    return base64.b64encode(ulaw_encode(np.full(160, value, dtype=np.int16))).decode()


def read_stereo(path) -> tuple[np.ndarray, np.ndarray]:
    with wave.open(str(path)) as wav:
        assert (wav.getnchannels(), wav.getframerate(), wav.getsampwidth()) == (2, 8000, 2)
        samples = np.frombuffer(wav.readframes(wav.getnframes()), dtype="<i2").reshape(-1, 2)
    return samples[:, 0], samples[:, 1]


class TestTheAgentIsPlacedAsHeard:
    def test_agent_audio_starts_where_the_caller_stream_was_when_it_was_sent(self, tmp_path):
        audio = CallAudio()
        for _ in range(10):
            audio.caller(frame(1000))
        audio.agent([frame(-2000)] * 5)  # sent at 200 ms, 100 ms long
        AudioRecordings(tmp_path, 30).save("CAaligned", audio)
        caller, agent = read_stereo(tmp_path / "CAaligned.wav")
        assert len(caller) == 2400 and (caller[:1600] > 900).all() and (caller[1600:] == 0).all()
        assert (agent[:1600] == 0).all() and (agent[1600:2400] < -1900).all()

    def test_a_clear_drops_what_twilio_had_not_played(self):
        audio = CallAudio()
        audio.caller(frame(1000))
        audio.agent([frame(-2000)] * 50)  # one second queued at Twilio
        for _ in range(4):
            audio.caller(frame(1000))
        audio.cleared()  # the caller barged in after 80 ms of it
        assert len(audio.agent_track) == len(audio.caller_track) == 800


def test_recordings_past_their_retention_are_deleted(tmp_path):
    old, new = tmp_path / "CAold.wav", tmp_path / "CAnew.wav"
    old.write_bytes(b"RIFF"), new.write_bytes(b"RIFF")
    os.utime(old, (time.time() - 8 * 86400,) * 2)
    assert AudioRecordings(tmp_path, retention_days=7).delete_expired() == 1
    assert not old.exists() and new.exists()


def test_a_call_sid_never_becomes_a_path_elsewhere(tmp_path):
    assert AudioRecordings(tmp_path, 30).path_for("../../etc/passwd") is None


def test_a_recorded_call_is_served_to_the_token_holder_as_stereo_wav(emulator, tmp_path):
    emulator.script = order_script()
    folder = tmp_path / "recordings"
    with watched_server(emulator, tmp_path, RECORD_AUDIO="true", RECORDINGS_DIR=str(folder), virtual=True) as server:
        sid, call = place_call(server.ws_url, loop=server.loop)
        server.finished_call(sid)
        wait_until(lambda: (folder / f"{sid}.wav").exists(), what="the call's recording")
        assert httpx.get(f"{server.http_url}/calls/{sid}/audio").status_code == 401
        r = httpx.get(f"{server.http_url}/calls/{sid}/audio", headers=authorized())
        assert r.status_code == 200 and r.headers["content-type"] == "audio/wav"
    caller, agent = read_stereo(folder / f"{sid}.wav")
    assert len(caller) / 8000 == pytest.approx(13.3, abs=0.2)  # the whole call, as the caller's stream ran
    heard = np.abs(agent.astype(np.int32)) > 100
    assert heard[:8000].any()  # the greeting at the start...
    assert heard.sum() / 8000 <= len(call.media_frames) * 0.02  # ...and no more than was sent


def test_without_record_audio_nothing_is_written(emulator, tmp_path):
    with watched_server(emulator, tmp_path, RECORDINGS_DIR=str(tmp_path / "recordings")) as server:
        sid, _ = place_call(server.ws_url, "greeting_only.jsonl", speed=4)
        server.finished_call(sid)  # the recording, when on, is begun before the call's summary
        assert httpx.get(f"{server.http_url}/calls/{sid}/audio", headers=authorized()).status_code == 404
    assert not (tmp_path / "recordings").exists()
