"""What Twilio sends, signed: for tests and simulations of a verifying server.

A verifying server (TWILIO_AUTH_TOKEN set) answers only requests carrying
Twilio's `X-Twilio-Signature`, and streams carrying the token its webhook
minted. These build them the way Twilio would, from the same auth token.
"""

from __future__ import annotations

import copy
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
