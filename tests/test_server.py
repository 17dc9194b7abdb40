"""The HTTP endpoints, and bad input on the media stream over a real socket (docs/twilio-media-streams.md §4-§5)."""

from __future__ import annotations

import asyncio
import contextlib
import base64
import json
import os
import logging
import subprocess
import sys
import wave
import xml.etree.ElementTree as ET
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from telephony.app import create_app
from telephony.settings import Settings
from telephony.testing.emulator import Say, Script
from telephony.testing.twilio_signing import media_message, start_message

ROOT = Path(__file__).parent.parent
SID = "MZ" + "1" * 32
CALL_SID = "CA" + "2" * 32
SILENCE = base64.b64encode(b"\xff" * 160).decode()


def start_msg(stream_sid: str = SID) -> str:
    return start_message(stream_sid, CALL_SID, "AC" + "3" * 32)


def media_msg(payload: str = SILENCE, stream_sid: str = SID, ts: int = 20) -> str:
    return media_message(payload, stream_sid, ts)


class TestVoiceWebhook:
    def test_incoming_call_answers_twiml_connecting_the_stream_with_call_parameters(self, server):
        form = {"CallSid": CALL_SID, "From": "+15551230101", "To": "+15559870000", "AccountSid": "AC" + "3" * 32, "CallStatus": "ringing"}
        r = httpx.post(f"{server.http_url}/incoming-call", data=form)
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/xml")
        host = f"127.0.0.1:{server.port}"
        stream = ET.fromstring(r.text).find("./Connect/Stream")
        assert stream.get("url") == f"wss://{host}/media-stream"
        assert stream.get("statusCallback") == f"https://{host}/twilio/status"  # stream events are recorded
        for name, value in (("CallSid", CALL_SID), ("From", "+15551230101"), ("To", "+15559870000")):
            assert f'<Parameter name="{name}" value="{value}" />' in r.text
        assert "?" not in r.text.split('url="')[1].split('"')[0]  # no query string in the stream URL
        # If we ever close the stream without ending the call, the caller hears why.
        assert r.text.index("</Connect>") < r.text.index("<Say>") < r.text.index("<Hangup />")

    def test_public_url_decides_the_stream_host(self, tmp_path):
        settings = Settings.from_env({"GEMINI_API_KEY": "k", "PUBLIC_URL": "https://agent.example.com", "ORDERS_DB_PATH": str(tmp_path / "o.db"), "CALLS_DB_PATH": str(tmp_path / "c.db"),
                                      "REQUIRE_TWILIO_SIGNATURE": "false"})  # unsigned requests below (see test_security.py)
        with TestClient(create_app(settings)) as client:
            r = client.post("/incoming-call", content="CallSid=CA1&From=%2B1555&To=%2B1666",
                            headers={"content-type": "application/x-www-form-urlencoded"})
        assert 'url="wss://agent.example.com/media-stream"' in r.text

    def test_healthz(self, server):
        r = httpx.get(f"{server.http_url}/healthz")
        assert r.status_code == 200 and r.json()["status"] == "ok"

    def test_start_up_objects_are_kept_out_of_full_garbage_collections(self, server):
        """A full collection over every module and SDK model would stall all calls (~90 ms)."""
        import gc

        assert gc.get_freeze_count() > 20_000


class TestBadInputOnTheStream:
    """Each bad frame gets one log line and is dropped; the call goes on (guide rule 3)."""

    def test_bad_frames_are_dropped_and_the_call_carries_on(self, server, emulator, caplog):
        emulator.script = Script(greeting=[Say(seconds=0.4, freq=440.0)], replies=[])

        async def scenario() -> list[dict]:
            received: list[dict] = []
            async with connect(server.ws_url) as ws:
                await ws.send(json.dumps({"event": "connected", "protocol": "Call", "version": "1.0.0"}))
                await ws.send(media_msg())                                   # media before start
                await ws.send(start_msg())
                await ws.send("this is not json")                            # non-JSON text
                await ws.send(b"\x00\x01binary")                             # binary frame
                await ws.send(json.dumps({"event": "sparkles", "streamSid": SID}))  # unknown event
                await ws.send(media_msg(payload="***not-base64***"))         # invalid base64
                await ws.send(media_msg(stream_sid="MZ" + "9" * 32))         # another stream's media
                await ws.send(media_msg(payload="A" * 70_000))               # oversized
                await ws.send(json.dumps({"event": "mark", "streamSid": SID, "mark": {"name": "never-sent"}}))
                for i in range(25):                                          # then a healthy caller
                    await ws.send(media_msg(ts=40 + 20 * i))
                    await asyncio.sleep(0.02)
                async with asyncio.timeout(10):
                    while not any(m["event"] == "media" for m in received):
                        received.append(json.loads(await ws.recv()))
                await ws.send(json.dumps({"event": "stop", "streamSid": SID, "stop": {}}))
                async with asyncio.timeout(10):
                    async for raw in ws:
                        received.append(json.loads(raw))
                assert ws.close_code == 1000
            return received

        with caplog.at_level(logging.WARNING, logger="telephony"):
            received = asyncio.run(scenario())
        assert any(m["event"] == "media" for m in received), "the greeting still reaches the caller"
        warnings = [r.getMessage() for r in caplog.records if r.name.startswith("telephony")]
        for expected in ("before the start event", "not JSON", "binary frame", "unknown Twilio event 'sparkles'",
                         "base64", "another stream", "exceeds", "unknown mark"):
            assert sum(expected in w for w in warnings) == 1, (expected, warnings)
        summary = server.finished_call(CALL_SID)
        assert summary["end_reason"] == "caller hung up" and summary["bad_frames"] >= 5

    def test_a_flood_of_garbage_closes_the_stream_with_policy_violation(self, server, emulator):
        emulator.script = Script(greeting=[], replies=[])

        async def scenario() -> int | None:
            async with connect(server.ws_url) as ws:
                await ws.send(start_msg())
                for _ in range(60):
                    await ws.send("garbage")
                with contextlib.suppress(ConnectionClosed):
                    async with asyncio.timeout(10):
                        async for _ in ws:
                            pass
                return ws.close_code

        assert asyncio.run(scenario()) == 1008
        assert httpx.get(f"{server.http_url}/healthz").status_code == 200  # the server is fine

    def test_a_socket_dropped_without_stop_ends_the_call_and_closes_live(self, server, emulator):
        emulator.script = Script(greeting=[Say(seconds=3.0)], replies=[])
        before = len(emulator.sessions)

        async def scenario() -> None:
            ws = await connect(server.ws_url)
            await ws.send(start_msg())
            await ws.recv()  # the greeting is flowing
            ws.transport.abort()  # no stop, no close frame

        asyncio.run(scenario())
        emulator.wait_for(lambda: len(emulator.sessions) > before and emulator.sessions[before].closed, timeout=10)
        assert server.finished_call(CALL_SID)["end_reason"].startswith("Twilio socket closed without stop")


def test_simulate_command_runs_a_whole_call_offline(tmp_path):
    """The README's first command, as a user runs it."""
    out = tmp_path / "agent.wav"
    proc = subprocess.run(
        [sys.executable, "-m", "telephony.cli", "simulate", "tests/fixtures/greeting_only.jsonl", "--out", str(out), "--speed", "2"],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert "agent speaks" in proc.stdout and "caller hangs up" in proc.stdout
    with wave.open(str(out)) as w:
        assert (w.getframerate(), w.getnchannels(), w.getsampwidth()) == (8000, 1, 2) and w.getnframes() > 8000


def test_simulate_names_a_file_that_is_not_a_recording_in_one_line(tmp_path):
    bad = tmp_path / "notes.jsonl"
    bad.write_text("hello\n")
    proc = subprocess.run([sys.executable, "-m", "telephony.cli", "simulate", str(bad)],
                          cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0 and "is not a Twilio stream recording" in proc.stderr
    assert "Traceback" not in proc.stderr


@pytest.mark.parametrize("name", ["ORDERS_DB_PATH", "CALLS_DB_PATH"])
def test_serve_names_a_database_path_it_cannot_use_in_one_line(name, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    env = {**os.environ, "GEMINI_API_KEY": "k", "ORDERS_DB_PATH": str(tmp_path / "o.db"),
           "CALLS_DB_PATH": str(tmp_path / "c.db"), name: str(blocker / "x.db")}
    for var in ("PUBLIC_URL", "TWILIO_AUTH_TOKEN", "REQUIRE_TWILIO_SIGNATURE"):
        env.pop(var, None)
    proc = subprocess.run([sys.executable, "-m", "telephony.cli", "serve", "--port", "0"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert proc.stderr.startswith(f"telephony: configuration error: {name}=") and "Traceback" not in proc.stderr
