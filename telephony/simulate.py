"""`telephony simulate`: a whole phone call, offline.

Starts the Live API emulator (real wire protocol over TLS, reached by the
real google-genai SDK), starts the real server on a loopback port, plays a
recorded Twilio stream at it the way Twilio would, writes what the caller
heard to a WAV file and prints the call's timeline.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from .testing.emulator import CallTool, LiveEmulator, Reply, Say, Script
from .testing.server import ServerThread
from .testing.simulator import CallSimulator, SimulatedCall


def demo_script() -> Script:
    """A plausible conversation for the order-status demo, one reply per caller utterance."""
    return Script(
        greeting=[Say(text="Hi, thanks for calling Acme Outfitters! How can I help you today?", seconds=1.5, freq=440.0)],
        replies=[
            Reply(
                heard="Hi, I'd like to know where my order A1001 is.",
                steps=[
                    CallTool("lookup_order", {"order_id": "A1001"}),
                    Say(
                        text="Your order A1001 has shipped and should arrive in a few days. It contains ...",
                        seconds=5.0,
                        freq=520.0,
                    ),
                ],
            ),
            Reply(heard="Great, thanks, that's all.", steps=[Say(text="You're welcome, goodbye!", seconds=1.5, freq=440.0)]),
        ],
    )


@dataclass
class SimulationResult:
    call: SimulatedCall
    live_events: list[tuple[float, str, object]] = field(default_factory=list)
    tool_responses: list[dict] = field(default_factory=list)


def run_simulation(recording: Path, *, out: Path | None = None, speed: float = 1.0, script: Script | None = None) -> SimulationResult:
    """Run one simulated call end to end and return what happened."""
    with tempfile.TemporaryDirectory(prefix="telephony-sim-") as tmp:
        with LiveEmulator(script or demo_script()) as emulator:
            saved = {k: os.environ.get(k) for k in _SIM_ENV}
            os.environ.update(emulator.env())
            os.environ.setdefault("ORDERS_DB_PATH", str(Path(tmp) / "orders.db"))
            for name in ("GOOGLE_GENAI_USE_VERTEXAI", "GOOGLE_GENAI_USE_ENTERPRISE"):
                os.environ.pop(name, None)
            try:
                from .app import create_app
                from .settings import Settings

                app = create_app(Settings.from_env())
                with ServerThread(app) as server:
                    sim = CallSimulator(server.ws_url, recording, speed=speed)
                    call = asyncio.run(sim.run())
            finally:
                for key, value in saved.items():
                    if value is None:
                        os.environ.pop(key, None)
                    else:
                        os.environ[key] = value
            session = emulator.sessions[-1] if emulator.sessions else None
            result = SimulationResult(
                call=call,
                live_events=list(session.events) if session else [],
                tool_responses=list(session.tool_responses) if session else [],
            )
    if out is not None:
        call.to_wav(out)
    return result


_SIM_ENV = ("GOOGLE_GEMINI_BASE_URL", "SSL_CERT_FILE", "NO_PROXY", "GEMINI_API_KEY", "ORDERS_DB_PATH")


def print_report(result: SimulationResult, out: Path | None) -> None:
    call = result.call
    print("Simulated call timeline (seconds since the stream connected):")
    for line in call.timeline():
        print(line)
    if result.tool_responses:
        print("\nTool calls answered to the model:")
        for response in result.tool_responses:
            print(f"  {response.get('name')} (id {response.get('id')}): {json.dumps(response.get('response'))[:300]}")
    print(
        f"\nAgent audio: {len(call.agent_audio) / 8000:.2f} s sent, {len(call.played_audio) / 8000:.2f} s played; "
        f"clears: {len(call.clears)}; marks echoed: {len(call.marks_echoed)}; protocol errors: {len(call.protocol_errors)}"
    )
    if out is not None:
        print(f"Agent audio written to {out}")


def main(recording: str, out: str | None, speed: float) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    path = Path(recording)
    if not path.is_file():
        print(f"error: recording {recording!r} not found")
        return 2
    out_path = Path(out) if out else None
    result = run_simulation(path, out=out_path, speed=speed)
    print_report(result, out_path)
    return 0 if not result.call.protocol_errors else 1
