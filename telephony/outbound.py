"""Outbound calls: the agent calls someone (`POST /outbound-call`, `telephony call`).

The CallSid does not exist before `calls.create`, so the stream token cannot be put in
inline TwiML. The call is created with `url=` pointing at our signed webhook
`/outbound-answer?ref=…`, which Twilio requests when the callee answers; that webhook
then answers with the same `<Connect><Stream>` TwiML as `/incoming-call`, with a token
minted for the real CallSid. The `ref` is sealed (AES-GCM, key derived from the
stream-token secret), so it needs no server-side store: `telephony call` can place a
call from another process and the server still knows what the call is for. It expires
(10 min) and opens once, across every instance (the shared state).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
import math
import secrets
import time
from dataclasses import dataclass
from typing import Any, Callable
from urllib.parse import quote

from twilio.rest import Client

from .errors import TelephonyError
from .security import (
    Rejected,
    check_destination,
    destination_allowed,
    mask_phone,
    stream_token_secret,
)
from .settings import Settings
from .shared_state import InProcessState, SharedState

__all__ = ["OutboundUnavailable", "OutboundRequest", "OutboundCall", "OutboundRefs", "parse_outbound_request",
           "place_call", "answer_url", "MAX_PURPOSE_CHARS"]

log = logging.getLogger(__name__)

#: How long the callee may take to answer an outbound call before its `ref` lapses
#: (Twilio rings for 60 s by default; queueing adds a little).
OUTBOUND_REF_TTL_S = 600.0
#: A `<Parameter>`'s name plus value must stay under 500 characters (twiml.py cuts at 400).
MAX_PURPOSE_CHARS = 400
#: Status-callback events requested for outbound calls (the /twilio/status route records them).
STATUS_EVENTS = ["initiated", "ringing", "answered", "completed"]
#: Asynchronous detection that waits for the end of a machine's greeting (its beep), so a
#: message can be left; the call connects at once and the verdict comes to /twilio/amd.
MACHINE_DETECTION = "DetectMessageEnd"
_REF_LABEL = b"telephony outbound ref v1"
_REF_PREFIX = "o1."


class OutboundUnavailable(TelephonyError):
    """Outbound calls cannot be placed with this configuration; the message names the variable."""


@dataclass(frozen=True)
class OutboundRequest:
    """What `POST /outbound-call` and `telephony call` ask for."""

    to: str
    purpose: str = ""
    machine_detection: bool = False
    agent: str | None = None  # the agent's name (agents.py); None: the one answering our number


@dataclass(frozen=True)
class OutboundCall:
    """An opened answer-URL `ref`: whom we called, and why."""

    to: str
    purpose: str
    expires: int
    agent: str | None = None
    detect_machine: bool = False


def parse_outbound_request(body: bytes) -> OutboundRequest:
    """The JSON body of `POST /outbound-call`; ValueError says what is wrong with it."""
    try:
        data = json.loads(body or b"null")
    except (ValueError, UnicodeDecodeError):
        raise ValueError("the body must be JSON: {\"to\": \"+15551234567\", \"purpose\": \"...\"}") from None
    if not isinstance(data, dict):
        raise ValueError("the body must be a JSON object with at least \"to\"")
    unknown = set(data) - {"to", "purpose", "machine_detection", "agent"}
    if unknown:
        raise ValueError(f"unknown field(s): {', '.join(sorted(unknown))}")
    to, purpose, machine = data.get("to"), data.get("purpose", ""), data.get("machine_detection", False)
    if not isinstance(to, str) or not to.strip():
        raise ValueError("\"to\" must be the number to call, e.g. \"+15551234567\"")
    if purpose is None:
        purpose = ""
    if not isinstance(purpose, str):
        raise ValueError("\"purpose\" must be a string")
    if len(purpose) > MAX_PURPOSE_CHARS:
        raise ValueError(f"\"purpose\" is longer than {MAX_PURPOSE_CHARS} characters")
    if not isinstance(machine, bool):
        raise ValueError("\"machine_detection\" must be true or false")
    agent = data.get("agent")
    if agent is not None and (not isinstance(agent, str) or not agent.strip() or len(agent) > 40):
        raise ValueError("\"agent\" must be the name of a configured agent")
    return OutboundRequest(to.strip(), purpose.strip(), machine, agent.strip() if agent else None)


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class OutboundRefs:
    """Seals what an outbound call is for into the `ref` of its answer URL, and opens it once.

    The ref is AES-GCM over `[to, purpose, expiry, agent]` with a key derived from the
    stream-token secret (STREAM_TOKEN_SECRET, else the auth token): opaque in Twilio's
    logs, unforgeable, and readable by any process of the same deployment, so the CLI
    can place a call that the server answers. Twilio's signature on the webhook already
    covers the URL; the ref adds an expiry, single use and the callee it was made for.
    """

    def __init__(self, settings: Settings, ttl_s: float = OUTBOUND_REF_TTL_S, clock: Callable[[], float] = time.time,
                 state: SharedState | None = None):
        from cryptography.hazmat.primitives.ciphers.aead import AESGCM

        key = hmac.new(stream_token_secret(settings), _REF_LABEL, hashlib.sha256).digest()
        self._aead = AESGCM(key)
        self.ttl_s = ttl_s
        self._clock = clock
        self._state = state if state is not None else InProcessState(clock)

    def seal(self, to: str, purpose: str, agent: str | None = None, detect_machine: bool = False) -> str:
        nonce = secrets.token_bytes(12)
        expires = math.ceil(self._clock() + self.ttl_s)
        plain = json.dumps([to, purpose, expires, agent, int(detect_machine)], separators=(",", ":")).encode("utf-8")
        return _REF_PREFIX + _b64(nonce + self._aead.encrypt(nonce, plain, _REF_LABEL))

    async def open(self, ref: str | None, callee: str | None = None) -> OutboundCall:
        """The call `ref` was sealed for; `Rejected` if it is not ours, stale, used, or for another callee.
        Used once across every process (the shared state); `SharedStateUnavailable` if that cannot be checked."""
        from cryptography.exceptions import InvalidTag

        if not ref or not ref.startswith(_REF_PREFIX) or len(ref) > 4096:
            raise Rejected("outbound_bad_ref", "the answer URL has no valid ref")
        try:
            raw = _unb64(ref[len(_REF_PREFIX):])
            plain = self._aead.decrypt(raw[:12], raw[12:], _REF_LABEL)
            to, purpose, expires, *rest = json.loads(plain)
            agent = rest[0] if rest and isinstance(rest[0], str) else None
        except (ValueError, InvalidTag, TypeError):
            raise Rejected("outbound_bad_ref", "the answer URL's ref was not made by this deployment") from None
        if self._clock() >= expires:
            raise Rejected("outbound_expired_ref", f"the outbound call's ref expired {self._clock() - expires:.0f} s ago")
        if callee and not destination_allowed(callee, [to]):
            raise Rejected("outbound_wrong_callee", "the answered call is not the one the ref was made for")
        if not await self._state.take_once("outbound_ref", _b64(raw[:12]), expires + 1 - self._clock()):
            raise Rejected("outbound_replayed_ref", "the outbound call's ref was already used")
        return OutboundCall(to, purpose, int(expires), agent, bool(len(rest) > 1 and rest[1]))


def answer_url(public_url: str, ref: str) -> str:
    """The signed webhook Twilio requests when the callee answers (a query string is fine on a webhook)."""
    return f"{public_url.rstrip('/')}/outbound-answer?ref={quote(ref, safe='')}"


async def place_call(client: Client | None, settings: Settings, request: OutboundRequest, refs: OutboundRefs) -> Any:
    """Create the call through the REST API; Twilio fetches the TwiML from `/outbound-answer`.

    Raises `DestinationNotAllowed` (not on ALLOWED_DESTINATIONS), `OutboundUnavailable`
    (a missing setting, named), or twilio's exception when Twilio refuses.
    """
    to = check_destination(request.to, settings)
    if client is None:
        raise OutboundUnavailable("TWILIO_ACCOUNT_SID and TWILIO_AUTH_TOKEN must be set to place calls")
    if not settings.twilio_phone_number:
        raise OutboundUnavailable("TWILIO_PHONE_NUMBER is not set: outbound calls need a number to call from")
    if not settings.public_url:
        raise OutboundUnavailable("PUBLIC_URL is not set: Twilio needs it to fetch the call's TwiML when answered")
    public = settings.public_url
    call = await client.calls.create_async(
        to=to,
        from_=settings.twilio_phone_number,
        url=answer_url(public, refs.seal(to, request.purpose, request.agent, request.machine_detection)),
        method="POST",
        status_callback=f"{public}/twilio/status",
        status_callback_method="POST",
        status_callback_event=STATUS_EVENTS,
        **({"machine_detection": MACHINE_DETECTION, "async_amd": "true", "async_amd_status_callback": f"{public}/twilio/amd",
            "async_amd_status_callback_method": "POST"} if request.machine_detection else {}),
    )
    log.info("outbound call %s to %s created (%s)%s", call.sid, mask_phone(to), call.status,
             " with answering-machine detection" if request.machine_detection else "")
    return call
