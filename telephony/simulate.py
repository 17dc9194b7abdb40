"""`telephony simulate`: a whole phone call, offline.

Starts the Live API emulator (real wire protocol over TLS, reached by the
real google-genai SDK), starts the real server on a loopback port, plays a
recorded Twilio stream at it the way Twilio would, writes what the caller
heard to a WAV file and prints the call's timeline.

The emulator plays the model with the built-in order-status demo conversation,
whatever instructions and tools are configured, and speaks in tones: the
printout says so. A conversation of one's own is a scenario (`telephony test`).
Every run gets a fresh CallSid, so runs never merge in the call records.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import secrets
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from .testing.emulator import CallTool, LiveEmulator, Reply, Say, Script
from .testing.server import ServerThread
from .testing.recordings import DEFAULT_TO, read_recording
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
    summary: dict | None = None  # the server's own call summary (with transcript)
    live_events: list[tuple[float, str, object]] = field(default_factory=list)
    tool_responses: list[dict] = field(default_factory=list)

    def timeline(self) -> list[str]:
        """What a person would want to know, in call order: who spoke, tools, barge-in, the end."""
        call = self.call
        rows: list[tuple[float, str]] = []
        # Join runs of agent audio separated by short gaps (paced delivery) into one utterance.
        merged: list[list[float]] = []
        for start, end, data in call.spans:
            if merged and start - merged[-1][1] < 0.3:
                merged[-1][1] = end
                merged[-1][2] += len(data)
            else:
                merged.append([start, end, len(data)])
        for start, end, nbytes in merged:
            rows.append((start, f"agent speaks ({nbytes / 8000:.2f} s heard, until {end:.2f}s)"))
        for e in call.events:
            if e.kind == "clear":
                rows.append((e.t, f"clear sent to Twilio: {e.detail.get('dropped_bytes', 0) / 8000:.2f} s of queued agent audio dropped"))
            elif e.kind == "sent_dtmf":
                rows.append((e.t, f"caller presses {e.detail.get('digit')}"))
            elif e.kind == "sent_stop":
                rows.append((e.t, "caller hangs up (stop)"))
            elif e.kind == "closed":
                rows.append((e.t, f"stream closed by {e.detail.get('by')} (code {e.detail.get('code')})"))
            elif e.kind == "protocol_error":
                rows.append((e.t, f"PROTOCOL ERROR: {e.detail.get('error')}"))
        labels = {
            "setup": "Live session opened",
            "caller_speech_start": "caller starts speaking",
            "caller_speech_end": "caller stops speaking",
            "interrupted": "Live: interrupted (caller barged in)",
            "closed": "Live session closed",
        }
        for at, kind, detail in self.live_events:
            t = at - call.started_at
            if kind in labels:
                rows.append((t, labels[kind]))
            elif kind == "tool_call" and isinstance(detail, dict):
                rows.append((t, f"model calls {detail.get('name')}({json.dumps(detail.get('args'))})"))
            elif kind == "tool_response" and isinstance(detail, dict):
                text = json.dumps(detail.get("response"))
                rows.append((t, f"tool result reaches the model: {text[:160]}{'...' if len(text) > 160 else ''}"))
        rows.sort(key=lambda row: row[0])
        return [f"{t:7.2f}s  {text}" for t, text in rows]


def fresh_sids(messages: list[dict]) -> list[dict]:
    """The recording with a new CallSid and StreamSid, so each run is a call of its own."""
    call_sid, stream_sid = "CA" + secrets.token_hex(16), "MZ" + secrets.token_hex(16)
    out = []
    for msg in messages:
        msg = json.loads(json.dumps(msg))
        if "streamSid" in msg:
            msg["streamSid"] = stream_sid
        for key in ("start", "stop"):
            body = msg.get(key)
            if isinstance(body, dict):
                if "callSid" in body:
                    body["callSid"] = call_sid
                if "streamSid" in body:
                    body["streamSid"] = stream_sid
                params = body.get("customParameters")
                if isinstance(params, dict) and "CallSid" in params:
                    params["CallSid"] = call_sid
        out.append(msg)
    return out


def run_simulation(recording: Path, *, out: Path | None = None, speed: float = 1.0, script: Script | None = None) -> SimulationResult:
    """Run one simulated call end to end (with a fresh CallSid) and return what happened."""
    messages = fresh_sids(read_recording(recording))
    with tempfile.TemporaryDirectory(prefix="telephony-sim-") as tmp:
        with LiveEmulator(script or demo_script()) as emulator:
            saved = {k: os.environ.get(k) for k in _SIM_ENV}
            os.environ.update(emulator.env())
            os.environ.setdefault("ORDERS_DB_PATH", str(Path(tmp) / "orders.db"))
            os.environ.setdefault("LOG_LEVEL", "WARNING")
            # A simulated call is a local development call: Vertex mode off, and no
            # Twilio verification (the recording carries no signature or stream token).
            for name in _CLEARED_ENV:
                os.environ.pop(name, None)
            try:
                from .app import create_app
                from .settings import Settings

                app = create_app(Settings.from_env())
                with ServerThread(app) as server:
                    sim = CallSimulator(server.ws_url, messages, speed=speed)
                    call = asyncio.run(sim.run())
                    summary = _wait_for_summary(app)
            finally:
                for key, value in saved.items():
                    if value is None:
                        os.environ.pop(key, None)
                    else:
                        os.environ[key] = value
            session = emulator.sessions[-1] if emulator.sessions else None
            result = SimulationResult(
                call=call,
                summary=summary,
                live_events=list(session.events) if session else [],
                tool_responses=list(session.tool_responses) if session else [],
            )
    if out is not None:
        call.to_wav(out)
    return result


def _wait_for_summary(app, timeout: float = 5.0) -> dict | None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        recent = getattr(app.state, "recent_calls", None)
        if recent:
            return recent[-1]
        time.sleep(0.05)
    return None


_CLEARED_ENV = (
    "GOOGLE_GENAI_USE_VERTEXAI", "GOOGLE_GENAI_USE_ENTERPRISE", "TWILIO_AUTH_TOKEN", "TWILIO_ACCOUNT_SID",
    "PUBLIC_URL", "REQUIRE_TWILIO_SIGNATURE", "STREAM_TOKEN_SECRET",
)
_SIM_ENV = ("GOOGLE_GEMINI_BASE_URL", "SSL_CERT_FILE", "NO_PROXY", "GEMINI_API_KEY", "ORDERS_DB_PATH", "LOG_LEVEL", *_CLEARED_ENV)


def print_report(result: SimulationResult, out: Path | None) -> None:
    call = result.call
    print(f"Call {call.call_sid} (a new CallSid for every run).")
    print("Timeline (seconds since Twilio connected the stream):")
    for line in result.timeline():
        print(line)
    summary = result.summary or {}
    if summary.get("transcript"):
        print("\nTranscript:")
        for role, text in summary["transcript"]:
            print(f"  {role:>6}: {text.strip()}")
    if summary:
        tools = ", ".join(f"{t['name']} {t['outcome']} in {t['latency_ms']} ms" for t in summary.get("tool_calls", [])) or "none"
        print(
            f"\nCall summary: ended because {summary.get('end_reason')}; {summary.get('duration_s')} s; "
            f"frames in/out {summary.get('frames_in')}/{summary.get('frames_out')}; "
            f"interruptions {summary.get('interruptions')}; tool calls: {tools}"
        )
    print(
        f"Agent audio: {len(call.agent_audio) / 8000:.2f} s sent, {len(call.played_audio) / 8000:.2f} s heard; "
        f"clears: {len(call.clears)}; marks echoed: {len(call.marks_echoed)}; protocol errors: {len(call.protocol_errors)}"
    )
    if out is not None:
        print(f"Agent audio (as heard by the caller) written to {out}")


def simulation_settings():
    """The settings the simulated server will run with (the emulator's key stands in for
    GEMINI_API_KEY); a bad setting raises SettingsError, one line."""
    from .settings import Settings

    env = {k: v for k, v in os.environ.items() if k not in _CLEARED_ENV}
    return Settings.from_env({**env, "GEMINI_API_KEY": "emulator-key"})


def simulated_agent(settings) -> tuple[str, str, str, str, list[str]]:
    """(name, instructions, greeting, voice, tool names) of the agent a simulated call reaches."""
    try:
        from .agents import load_agents  # type: ignore[import-not-found]
    except ImportError:  # one agent, configured from the environment
        from .lifecycle import default_registry

        return ("default", settings.agent_instructions, settings.agent_greeting, settings.gemini_voice,
                default_registry().names())
    agent = load_agents(settings).for_number(DEFAULT_TO)
    return agent.name, agent.instructions, agent.greeting, agent.voice, agent.tools.names()


def print_setup(settings) -> None:
    """Which agent is simulated and how, before the call: nothing here is the real model."""
    name, instructions, greeting, voice, tools = simulated_agent(settings)
    instructions = " ".join(instructions.split())
    print(f"Agent {name}: instructions {instructions[:100]!r}{'...' if len(instructions) > 100 else ''}")
    print(f"       greeting prompt {' '.join(greeting.split())[:100]!r}")
    print(f"       model {settings.gemini_model}, voice {voice}, tools: {', '.join(tools) or 'none'}")
    print("Offline: the Live emulator plays the model with the built-in Acme order-status conversation, whatever "
          "the instructions and tools above say; the agent's voice is a tone (the emulator does not speak). "
          "To test your own conversation, write a scenario and run `telephony test` (README, \"Test your agent\").\n")


def main(recording: str, out: str | None, speed: float) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    from .errors import SettingsError

    try:
        settings = simulation_settings()
    except SettingsError as exc:
        print(f"telephony: configuration error: {exc}", file=sys.stderr)
        return 2
    path = Path(recording)
    if not path.is_file():
        print(f"telephony: recording {recording!r} not found", file=sys.stderr)
        return 2
    try:
        read_recording(path)  # a bad file is named here, before any server starts
    except ValueError as exc:
        print(f"telephony: {recording!r} is not a Twilio stream recording: {exc}", file=sys.stderr)
        return 2
    out_path = Path(out) if out else None
    print_setup(settings)
    result = run_simulation(path, out=out_path, speed=speed)
    print_report(result, out_path)
    return 0 if not result.call.protocol_errors else 1
