"""Testing tools that ship with the product, so users can test their agent without a phone.

- `LiveEmulator`: a local TLS server speaking the Gemini Live wire protocol, scripted
  with `Script`/`Reply`/`Say`/`CallTool`/`Fail`; the real google-genai SDK reaches it
  through `GOOGLE_GEMINI_BASE_URL` + `SSL_CERT_FILE`.
- `CallSimulator`: plays a recorded Twilio stream (`.jsonl`) at a server the way Twilio
  would, honouring marks and `clear`, and returns a `SimulatedCall`.
- `LineCaller`: a caller that listens before it speaks, presses keys, talks over the agent
  and hangs up, decided while the call runs (what `telephony test` places).
- `TextModelEmulator`: `generateContent` on loopback, for the scenario judge.
- `build_messages`/`write_recording`/`read_recording`: make and read recordings.
- `ServerThread`: the real app under uvicorn on a loopback port.
- `TwilioStandIn`: a loopback stand-in for Twilio's REST API (`TWILIO_API_BASE_URL`) that
  checks and records every request the app makes, and plays Twilio's answer webhooks.
- `RedisServer`: a throwaway `redis-server` on a loopback port (stop and start it again).
"""

from .caller import Line, LineCaller
from .emulator import CallTool, EmulatedSession, Fail, LiveEmulator, Reply, Say, Script
from .recordings import Dtmf, Silence, Speech, Tone, build_messages, read_recording, write_recording
from .redis_server import RedisServer
from .server import ServerThread
from .simulator import CallSimulator, SimEvent, SimulatedCall
from .text_emulator import TextModelEmulator
from .twilio_standin import RestRequest, TwilioStandIn, WebhookAnswer

__all__ = [
    "CallSimulator",
    "CallTool",
    "Dtmf",
    "EmulatedSession",
    "Fail",
    "Line",
    "LineCaller",
    "LiveEmulator",
    "Reply",
    "RedisServer",
    "RestRequest",
    "Say",
    "Script",
    "ServerThread",
    "SimEvent",
    "SimulatedCall",
    "Silence",
    "Speech",
    "TextModelEmulator",
    "Tone",
    "TwilioStandIn",
    "WebhookAnswer",
    "build_messages",
    "read_recording",
    "write_recording",
]
