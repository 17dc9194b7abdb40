"""Single-use stream tokens: what binds a media stream to one signed webhook.

The upgrade's own signature is a constant for a given URL (it signs no
params), so whoever sees it once could replay it forever. The webhook answer
therefore carries a per-call, short-lived token in a `<Parameter>`, MAC'd over
that call's CallSid, From and To; the stream must present it, once.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import math
import re
import secrets
import time
from typing import Callable

from ..errors import Rejected
from ..settings import Settings
from ..shared_state import InProcessState, SharedState

__all__ = ["TOKEN_PARAMETER", "LEG_PARAMETER", "MAX_IDENTITY_CHARS", "StreamTokens", "stream_token_secret"]

Clock = Callable[[], float]

#: The `<Parameter>` that carries the stream token.
TOKEN_PARAMETER = "token"
#: The <Parameter> numbering a call's streams after the first (a call that moved
#: between instances): covered by the token's MAC, so each leg streams once.
LEG_PARAMETER = "leg"
#: Caller and called identifiers longer than this are cut before they are
#: signed and sent (E.164 numbers have at most 16 characters; client: and sip:
#: identities are longer, but not this long).
MAX_IDENTITY_CHARS = 128

_TOKEN_RE = re.compile(r"v1\.(\d{1,12})\.([A-Za-z0-9_-]{16})\.([A-Za-z0-9_-]{43})")
_SECRET_LABEL = b"telephony stream token v1"


def stream_token_secret(settings: Settings) -> bytes:
    """STREAM_TOKEN_SECRET; else a key derived from the auth token (never the
    token itself: Twilio's signatures and ours must not share a key); else a
    random key for this process (development: tokens are then not checked)."""
    if settings.stream_token_secret:
        return settings.stream_token_secret.encode("utf-8")
    if settings.twilio_auth_token:
        return hmac.new(settings.twilio_auth_token.encode("utf-8"), _SECRET_LABEL, hashlib.sha256).digest()
    return secrets.token_bytes(32)


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


class StreamTokens:
    """Single-use stream tokens: `v1.<expiry>.<nonce>.<HMAC-SHA256>`.

    The MAC covers the CallSid, From and To the webhook was signed with, the
    expiry and the nonce. From and To travel beside the token as their own
    `<Parameter>`s (the token stays ~80 characters, far under Twilio's
    500-character parameter limit); any change to them breaks the MAC.
    """

    def __init__(self, secret: bytes, ttl_s: float = 60.0, clock: Clock = time.time, state: SharedState | None = None):
        if len(secret) < 16:
            raise ValueError("a stream token secret needs at least 16 bytes")
        self._secret = secret
        self.ttl_s = ttl_s
        self._clock = clock
        self._state = state if state is not None else InProcessState(clock)

    def mint(self, call_sid: str, caller: str | None, called: str | None, leg: str = "") -> str:
        expires = math.ceil(self._clock() + self.ttl_s)
        nonce = _b64(secrets.token_bytes(12))
        return f"v1.{expires}.{nonce}.{self._mac(call_sid, caller, called, expires, nonce, leg)}"

    async def verify(
        self, token: str | None, call_sid: str, caller: str | None, called: str | None,
        *, claimed_call_sid: str | None = None, leg: str = "",
    ) -> None:
        """Raise `Rejected` unless `token` was minted for exactly this call and is
        fresh and unused; then mark it used (in the shared state, so a token is
        used once across every process). `claimed_call_sid` (the stream's own
        CallSid parameter) only sharpens the reason given for a mismatch."""
        if not token:
            raise Rejected("stream_missing_token", "the start message carries no stream token")
        match = _TOKEN_RE.fullmatch(token)
        if match is None:
            raise Rejected("stream_bad_token", "the stream token is malformed")
        expires, nonce, mac = int(match.group(1)), match.group(2), match.group(3)
        if not hmac.compare_digest(mac, self._mac(call_sid, caller, called, expires, nonce, leg)):
            if claimed_call_sid and claimed_call_sid != call_sid and hmac.compare_digest(
                mac, self._mac(claimed_call_sid, caller, called, expires, nonce)
            ):
                raise Rejected("stream_wrong_call", f"the stream token belongs to another call, not {call_sid}")
            raise Rejected("stream_bad_token", "the stream token's signature does not match this call")
        if self._clock() >= expires:
            raise Rejected("stream_expired_token", f"the stream token expired {self._clock() - expires:.0f} s ago")
        if not await self._state.take_once("stream_token", nonce, expires + 1 - self._clock()):
            raise Rejected("stream_replayed_token", "the stream token was already used")

    def _mac(self, call_sid: str, caller: str | None, called: str | None, expires: int, nonce: str,
             leg: str = "") -> str:
        fields: list = ["v1", call_sid, caller or "", called or "", expires, nonce]
        if leg:
            fields.append(leg)
        message = json.dumps(fields, separators=(",", ":"))
        return _b64(hmac.new(self._secret, message.encode("utf-8"), hashlib.sha256).digest())
