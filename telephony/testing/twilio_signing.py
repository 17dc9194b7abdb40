"""What Twilio sends, and signed as Twilio signs it: for tests and simulations.

A verifying server (TWILIO_AUTH_TOKEN set) answers only requests carrying
Twilio's `X-Twilio-Signature`, and streams carrying the token its webhook
minted. These build them the way Twilio would, from the same auth token.
"""

from __future__ import annotations

import copy
import json
import xml.etree.ElementTree as ET
from typing import Any, Iterable

from twilio.request_validator import RequestValidator


def sign(url: str, params: dict[str, str] | None, token: str) -> str:
    """Twilio's signature of a request to `url` with these form fields (a stream upgrade: none)."""
    return RequestValidator(token).compute_signature(url, params or {})


def webhook_form(call_sid: str, caller: str, called: str, account_sid: str) -> dict[str, str]:
    """The fields of an inbound call's voice webhook."""
    return {"AccountSid": account_sid, "ApiVersion": "2010-04-01", "CallSid": call_sid, "CallStatus": "ringing",
            "Direction": "inbound", "From": caller, "To": called, "FromCity": "SPRINGFIELD"}


def stream_parameters(twiml: str) -> dict[str, str]:
    """The `<Parameter>`s of the `<Connect><Stream>` a webhook answered (the stream token among them)."""
    stream = ET.fromstring(twiml).find("./Connect/Stream")
    if stream is None:
        raise ValueError(f"no <Connect><Stream> in {twiml!r}")
    return {p.get("name"): p.get("value") for p in stream.findall("Parameter")}


def readdress(messages: Iterable[dict[str, Any]], call_sid: str, account_sid: str,
              parameters: dict[str, str]) -> list[dict[str, Any]]:
    """A recorded call, as Twilio would stream it for `call_sid` with these parameters."""
    out = copy.deepcopy(list(messages))
    for m in out:
        if m.get("event") == "start":
            m["start"]["callSid"] = call_sid
            m["start"]["accountSid"] = account_sid
            m["start"]["customParameters"] = dict(parameters)
    return out


def start_message(stream_sid: str, call_sid: str, account_sid: str, parameters: dict[str, str] | None = None) -> str:
    """A media stream's `start`, as Twilio writes it (μ-law, 8 kHz, inbound track)."""
    return json.dumps({
        "event": "start", "sequenceNumber": "1", "streamSid": stream_sid,
        "start": {"accountSid": account_sid, "streamSid": stream_sid, "callSid": call_sid, "tracks": ["inbound"],
                  "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1},
                  "customParameters": dict(parameters or {})},
    })


def media_message(payload: str, stream_sid: str, ts: int) -> str:
    """One 20 ms `media` message of the caller's audio (`payload`: base64 μ-law)."""
    return json.dumps({"event": "media", "streamSid": stream_sid,
                       "media": {"track": "inbound", "chunk": "1", "timestamp": str(ts), "payload": payload}})
