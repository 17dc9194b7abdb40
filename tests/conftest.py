"""Shared fixtures: one Live emulator and one real server for the whole session.

The real google-genai SDK inside the server reaches the emulator through its
own environment variables (GOOGLE_GEMINI_BASE_URL + SSL_CERT_FILE), exactly as
it would reach Google; calls are played at the server over a loopback socket.
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest

from telephony.testing.emulator import LiveEmulator
from telephony.testing.server import ServerThread
from telephony.testing.simulator import CallSimulator, SimulatedCall

FIXTURES = Path(__file__).parent / "fixtures"


@pytest.fixture(scope="session")
def emulator():
    with LiveEmulator() as emu:
        yield emu


@pytest.fixture(scope="session")
def server(emulator, tmp_path_factory):
    from telephony.app import create_app
    from telephony.settings import Settings

    saved = dict(os.environ)
    os.environ.update(emulator.env())
    for name in ("GOOGLE_GENAI_USE_VERTEXAI", "GOOGLE_GENAI_USE_ENTERPRISE", "TWILIO_ACCOUNT_SID", "TWILIO_AUTH_TOKEN", "PUBLIC_URL",
                 "REQUIRE_TWILIO_SIGNATURE", "STREAM_TOKEN_SECRET"):  # development mode: nothing verified
        os.environ.pop(name, None)
    os.environ["ORDERS_DB_PATH"] = str(tmp_path_factory.mktemp("db") / "orders.db")
    os.environ["CALLS_DB_PATH"] = str(tmp_path_factory.mktemp("calls") / "calls.db")
    os.environ["LIVE_CONNECT_TIMEOUT_SECONDS"] = "2"
    os.environ["TOOL_TIMEOUT_SECONDS"] = "2"
    try:
        app = create_app(Settings.from_env())
        with ServerThread(app) as srv:
            yield srv
    finally:
        os.environ.clear()
        os.environ.update(saved)


class Phone:
    """Places simulated calls at the test server with a chosen emulator script."""

    def __init__(self, server: ServerThread, emulator: LiveEmulator):
        self.server = server
        self.emulator = emulator

    def call(self, recording: str, script=None, speed: float = 1.0) -> SimulatedCall:
        if script is not None:
            self.emulator.script = script
        before = len(self.emulator.sessions)
        result = asyncio.run(CallSimulator(self.server.ws_url, FIXTURES / recording, speed=speed).run())
        self.last_session = self.emulator.sessions[before] if len(self.emulator.sessions) > before else None
        return result


@pytest.fixture(scope="session")
def phone(server, emulator) -> Phone:
    return Phone(server, emulator)
