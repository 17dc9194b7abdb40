"""Every admission decision of one server: webhooks, media streams, caller limits.

A phone agent spends money (Live minutes on our API key) and reveals business
data to whoever reaches it, so every way in passes this gate before anything
is spent. Sans-I/O apart from the shared state: the routes read requests and
sockets, the gate decides.

What it remembers (answered CallSids for replay protection, used tokens,
callers' active calls and hourly counts) lives in a `shared_state.SharedState`:
this process's memory by default, Redis with REDIS_URL, so any number of
processes agree. When that cannot be reached the gate fails closed.
"""

from __future__ import annotations

import logging
import secrets
import time
from collections import Counter
from dataclasses import dataclass
from typing import Callable, Mapping, Sequence

from ..errors import Rejected, SettingsError
from ..settings import Settings
from ..shared_state import InProcessState, SharedState, SharedStateUnavailable
from .log_redaction import mask_phone
from .signatures import TwilioSignatures
from .stream_tokens import LEG_PARAMETER, TOKEN_PARAMETER, StreamTokens, stream_token_secret

__all__ = ["CallerIdentity", "Gatekeeper", "WEBHOOK_MEMORY_S", "check_deployment"]

log = logging.getLogger(__name__)

Clock = Callable[[], float]

#: How long a CallSid whose webhook was answered is remembered. Twilio's
#: signatures carry no timestamp, so this window bounds replay protection.
WEBHOOK_MEMORY_S = 24 * 3600.0


@dataclass(frozen=True)
class CallerIdentity:
    """Who is on the line, as far as the server can vouch for it.

    `verified` is True only when `caller` and `called` come from a stream
    token the server itself signed in answer to a Twilio-signed webhook.
    """

    call_sid: str
    caller: str | None
    called: str | None
    verified: bool


class Gatekeeper:
    """Every admission decision of one server, and the count of every refusal.

    Sans-I/O apart from the shared state: the app passes in URLs, headers, form
    fields and start parameters; a refusal raises `Rejected` (already counted in
    `rejected`). A shared state that cannot be reached is a refusal too
    (`shared_state_unavailable`): fail closed.
    """

    def __init__(self, settings: Settings, state: SharedState | None = None, clock: Clock = time.time):
        self.settings = settings
        self.verifying = settings.verifies_twilio
        self._clock = clock
        self.state = state if state is not None else InProcessState(clock)
        self._signatures = TwilioSignatures(settings.twilio_auth_token) if self.verifying else None
        self.tokens = StreamTokens(stream_token_secret(settings), settings.stream_token_ttl_s, clock, self.state)
        max_call_s = float(getattr(settings, "max_call_s", 0) or 0) or 4 * 3600.0
        self.lease_s = settings.stream_token_ttl_s + 5  # a webhook's slot lapses if no stream comes
        self.max_stream_s = max_call_s + 60  # a streaming call's slot lapses even if its end is lost
        self.rejected: Counter[str] = Counter()

    def show(self, number: str | None) -> str:
        """A phone number as our own log lines print it."""
        if not self.settings.mask_phone_numbers:
            return number or "(none)"
        return mask_phone(number)

    def _reject(self, reason: str, detail: str) -> Rejected:
        self.rejected[reason] += 1
        return Rejected(reason, detail)

    def _unavailable(self, exc: SharedStateUnavailable) -> Rejected:
        return self._reject("shared_state_unavailable", str(exc))

    # ------------------------------------------------------------ webhooks

    async def check_webhook(
        self, *, urls: Sequence[str], form: Sequence[tuple[str, str]], signature: str | None,
        signature_settings: str | None = None, once: bool = True, about: str = "CallSid",
    ) -> None:
        """Verify a Twilio webhook; raise `Rejected` (-> 403) if it is unsigned, forged or replayed.

        `about`: the field the request must carry (a conference's start and end name no call)."""
        if not self.verifying:
            return
        assert self._signatures is not None
        if not signature:
            raise self._reject("webhook_unsigned", "no X-Twilio-Signature header")
        if not self._signatures.webhook_valid(urls, form, signature, signature_settings):
            raise self._reject("webhook_bad_signature", f"X-Twilio-Signature does not match {urls[0]}")
        fields = dict(form)
        account = self.settings.twilio_account_sid
        if account and fields.get("AccountSid") != account:
            raise self._reject("webhook_wrong_account", "the webhook is for another Twilio account")
        call_sid = fields.get("CallSid", "")
        if not fields.get(about, ""):
            raise self._reject("webhook_no_call", f"a signed request without a {about}")
        if not once:
            return  # e.g. /stream-ended: answering it twice gives nothing away
        try:
            first = await self.state.take_once("answered", call_sid, WEBHOOK_MEMORY_S)
        except SharedStateUnavailable as exc:
            raise self._unavailable(exc) from None
        if not first:
            raise self._reject("webhook_replayed", f"call {call_sid} was already answered")

    async def admit_call(self, call_sid: str, caller: str | None) -> str | None:
        """Apply the per-caller limits; return None, or why the caller is turned away (counted).
        Raises `Rejected` when the limits cannot be checked."""
        try:
            why = await self.state.admit_caller(
                caller, call_sid or f"anon-{secrets.token_hex(8)}", max_active=self.settings.max_calls_per_caller,
                max_per_hour=self.settings.max_calls_per_caller_per_hour, lease_s=self.lease_s,
            )
        except SharedStateUnavailable as exc:
            raise self._unavailable(exc) from None
        if why is not None:
            self.rejected["caller_over_limit"] += 1
        return why

    def mint_token(self, call_sid: str, caller: str | None, called: str | None, leg: str = "") -> str:
        return self.tokens.mint(call_sid, caller, called, leg)

    # ------------------------------------------------------------ media streams

    def check_stream_signature(self, urls: Sequence[str], signature: str | None) -> None:
        """Verify the WebSocket upgrade's X-Twilio-Signature (empty params)."""
        if not self.verifying:
            return
        assert self._signatures is not None
        if not signature:
            raise self._reject("stream_unsigned", "the WebSocket upgrade has no X-Twilio-Signature")
        if not self._signatures.stream_valid(urls, signature):
            raise self._reject("stream_bad_signature", f"X-Twilio-Signature does not match {urls[0]}")

    def no_start(self) -> Rejected:
        return self._reject("stream_no_start", "the stream sent no start message")

    async def admit_stream(self, call_sid: str, account_sid: str, parameters: Mapping[str, str]) -> CallerIdentity:
        """Decide on a stream's `start`; return who is calling, or raise `Rejected`.

        Verified mode: the token must be this call's, fresh and unused, and the
        CallSid must not have streamed before. Development mode: accepted, with
        the identity the stream itself claims, marked unverified.
        """
        caller = parameters.get("From") or None
        called = parameters.get("To") or None
        leg = parameters.get(LEG_PARAMETER) or ""
        try:
            if not self.verifying:
                await self.state.caller_streaming(call_sid, self.max_stream_s)
                return CallerIdentity(call_sid, caller, called, verified=False)
            if not call_sid:
                raise self._reject("stream_bad_token", "the start message has no callSid")
            account = self.settings.twilio_account_sid
            if account and account_sid != account:
                raise self._reject("stream_wrong_account", "the stream is for another Twilio account")
            try:
                await self.tokens.verify(parameters.get(TOKEN_PARAMETER), call_sid, caller, called,
                                         claimed_call_sid=parameters.get("CallSid"), leg=leg)
            except Rejected as exc:
                raise self._reject(exc.reason, exc.detail) from None
            # A call has one stream, plus one per later leg: a move to another instance,
            # or a return from a warm transfer (the `leg` parameter, under the token's MAC).
            if not await self.state.take_once("streamed", f"{call_sid}/{leg}" if leg else call_sid, WEBHOOK_MEMORY_S):
                raise self._reject("stream_duplicate", f"call {call_sid} already has a stream")
            await self.state.caller_streaming(call_sid, self.max_stream_s)
        except SharedStateUnavailable as exc:
            raise self._unavailable(exc) from None
        return CallerIdentity(call_sid, caller, called, verified=True)

    async def stream_ended(self, call_sid: str | None) -> None:
        """Free the caller's slot. If the shared state is away, the slot lapses by
        itself (`max_stream_s`): logged, never raised, the call is over anyway."""
        if not call_sid:
            return
        try:
            await self.state.caller_ended(call_sid)
        except SharedStateUnavailable as exc:
            log.warning("call %s: its caller slot will lapse by itself: %s", call_sid, exc)


def check_deployment(settings: Settings) -> None:
    """Refuse to serve unverified when verification is required (explicitly, or
    by default because PUBLIC_URL makes this a public deployment)."""
    if settings.verification_required and not settings.verifies_twilio:
        why = ("REQUIRE_TWILIO_SIGNATURE=true" if settings.require_twilio_signature
               else "PUBLIC_URL is set (a public deployment), so REQUIRE_TWILIO_SIGNATURE defaults to true")
        raise SettingsError(
            f"TWILIO_AUTH_TOKEN is not set but {why}: without it anyone can open Live sessions "
            "on your API key. Set TWILIO_AUTH_TOKEN, or REQUIRE_TWILIO_SIGNATURE=false for local development."
        )
