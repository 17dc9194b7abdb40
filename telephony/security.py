"""Who may reach the agent, and what the logs may say about them.

A phone agent spends money (Live minutes on our API key) and reveals business
data (orders) to whoever reaches it, so every way in is checked here, without
I/O: `app.py` reads requests and sockets, this module decides.

- Webhooks: `X-Twilio-Signature` (Twilio's HMAC of the public URL and the form,
  keyed with the auth token), and each CallSid is answered once: a signed
  request carries no timestamp, so a captured one could otherwise be replayed
  to mint a stream token.
- Media streams, twice, before any Live session exists: the upgrade's
  signature (for the `wss://` URL, empty params; the trailing-slash variant is
  accepted, as Twilio documents), then a per-call, single-use, short-lived
  token the webhook put in a `<Parameter>`. The upgrade signature alone is a
  constant for a given URL (no params), so whoever sees it once could replay
  it forever; the token binds the stream to one signed webhook: its CallSid,
  its From and To numbers, and an expiry.
- The caller's identity (From) reaches tools only from that verified token.
- Abuse limits per caller number: simultaneous calls and calls per hour.
- Logs: secrets are replaced, phone numbers masked (MASK_PHONE_NUMBERS).

Without TWILIO_AUTH_TOKEN nothing can be verified (local development,
simulated calls): streams are accepted and the caller identity is taken,
unverified, from the stream's own `From` parameter.

What the checks remember (answered CallSids, used tokens, caller limits)
lives in a `shared_state.SharedState`: this process's memory by default, Redis
with REDIS_URL, so any number of processes and machines agree. When it cannot
be reached the gate fails closed: the call is refused, never admitted unchecked.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
import math
import re
import secrets
import time
from collections import Counter
from dataclasses import dataclass
from typing import Callable, Iterable, Mapping, Sequence
from urllib.parse import unquote, urlsplit, urlunsplit

from twilio.request_validator import RequestValidator, get_signature_algorithm

from .errors import SettingsError, TelephonyError, ToolError
from .settings import Settings
from .shared_state import InProcessState, SharedState, SharedStateUnavailable

__all__ = [
    "CallerIdentity", "Rejected", "DestinationNotAllowed", "Gatekeeper", "StreamTokens", "TOKEN_PARAMETER", "mask_phone", "webhook_urls", "stream_urls", "stream_token_secret",
    "check_deployment", "destination_allowed", "check_destination", "install_log_redaction", "LogRedactor", "REDACTOR",
]

log = logging.getLogger("telephony.security")

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
#: How long a CallSid whose webhook was answered is remembered. Twilio's
#: signatures carry no timestamp, so this window bounds replay protection.
WEBHOOK_MEMORY_S = 24 * 3600.0

_TOKEN_RE = re.compile(r"v1\.(\d{1,12})\.([A-Za-z0-9_-]{16})\.([A-Za-z0-9_-]{43})")
_SECRET_LABEL = b"telephony stream token v1"


class Rejected(TelephonyError):
    """A request or stream failed a check. `reason` is its counter name; the
    message says why, for the log (never shown to the peer)."""

    def __init__(self, reason: str, detail: str):
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


class DestinationNotAllowed(ToolError):
    """A call-control tool was asked to reach a destination outside ALLOWED_DESTINATIONS."""


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


# --------------------------------------------------------------------------- masking and log redaction


def mask_phone(number: str | None) -> str:
    """+15551230101 -> +1555***0101: enough to tell calls apart in a log, not to dial.

    Non-numbers (client:alice, sip:bob@example.com, anonymous) keep only their
    scheme or a hint of their length.
    """
    if not number:
        return "(none)"
    if re.fullmatch(r"\+?\d{7,}", number):
        return f"{number[:5]}***{number[-4:]}"
    if re.fullmatch(r"\+?\d{1,6}", number):
        return number[:2] + "***"
    scheme, sep, _rest = number.partition(":")
    if sep and scheme.isalpha():
        return f"{scheme}:***"
    return "***"


_E164_RE = re.compile(r"\+\d{7,15}(?!\d)")  # sids never contain '+'; numbers always do
_EMAIL_RE = re.compile(r"(?<![\w.%+-])([A-Za-z0-9])[A-Za-z0-9._%+-]*@([A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)+)")
# name='value' / name="value" / "name": "value" for arguments that are secrets
# (`verification` is a postcode or email the caller proves ownership with).
_SENSITIVE_RE = re.compile(r"""(\b(?:verification|token|auth_token|api_key)\b['"]?\s*[=:]\s*)(['"])(?:(?!\2).)*\2""")


class LogRedactor(logging.Filter):
    """Rewrites a record's message before any handler sees it.

    Known secret values are replaced by `[redacted]` wherever they appear
    (messages and tracebacks); phone numbers and email addresses are masked
    when `mask_phones` is on. It is a safety net: code should not log secrets
    in the first place.
    """

    def __init__(self) -> None:
        super().__init__("telephony-redactor")
        self.secrets: set[str] = set()
        self.mask_phones = True

    def add_secret(self, value: str | None) -> None:
        if value and len(value) >= 8:  # shorter values would shred ordinary words
            self.secrets.add(value)

    def redact(self, text: str) -> str:
        for secret in self.secrets:
            if secret in text:
                text = text.replace(secret, "[redacted]")
        text = _SENSITIVE_RE.sub(lambda m: f"{m.group(1)}{m.group(2)}***{m.group(2)}", text)
        if self.mask_phones:
            text = _E164_RE.sub(lambda m: mask_phone(m.group(0)), text)
            text = _EMAIL_RE.sub(lambda m: f"{m.group(1)}***@{m.group(2)}", text)
        return text

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # a bad format string: leave it to the handler to report
            return True
        clean = self.redact(message)
        if clean != message:
            record.msg, record.args = clean, ()
        if record.exc_info and not record.exc_text:
            text = logging.Formatter().formatException(record.exc_info)
            clean = self.redact(text)
            if clean != text:
                record.exc_text = clean
        return True


#: The process's one redactor, shared by every app instance (tests run several).
REDACTOR = LogRedactor()
_REDACTED_LOGGERS = ("telephony", "tools", "uvicorn.error")


def install_log_redaction(settings: Settings) -> LogRedactor:
    """Attach `REDACTOR` to our loggers and teach it this configuration's secrets.

    Logger filters only see records logged on that very logger, so it goes on
    every existing `telephony.*` and `tools.*` logger (all modules are imported
    by the time the app starts).
    """
    REDACTOR.add_secret(settings.gemini_api_key)
    REDACTOR.add_secret(settings.twilio_auth_token)
    REDACTOR.add_secret(settings.stream_token_secret)
    REDACTOR.add_secret(settings.calls_api_token)
    for url in (settings.redis_url, settings.database_url):  # the password, whole or alone, encoded or not
        if url:
            password = urlsplit(url).password
            for secret in (url, password, password and unquote(password)):
                REDACTOR.add_secret(secret)
    REDACTOR.mask_phones = settings.mask_phone_numbers
    names = [n for n in list(logging.root.manager.loggerDict)
             if any(n == p or n.startswith(p + ".") for p in _REDACTED_LOGGERS)]
    for name in {*names, *_REDACTED_LOGGERS}:
        logger = logging.getLogger(name)
        if REDACTOR not in logger.filters:
            logger.addFilter(REDACTOR)
    return REDACTOR


# --------------------------------------------------------------------------- stream tokens


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


# --------------------------------------------------------------------------- URLs


def webhook_urls(public_url: str | None, request_url: str) -> list[str]:
    """The URLs Twilio may have signed for this webhook request.

    With PUBLIC_URL only that origin counts (the Host a proxy or tunnel passes
    on is irrelevant). Without it, the URL the server saw, plus its https form:
    TLS usually ends at a proxy, so the server sees http:// while Twilio signed
    https://. Accepting a URL form cannot help a forger, who still needs the key.
    """
    parts = urlsplit(request_url)
    path = parts.path + (f"?{parts.query}" if parts.query else "")
    if public_url:
        return [public_url.rstrip("/") + path]
    urls = [request_url]
    if parts.scheme == "http":
        urls.append(urlunsplit(("https", parts.netloc, parts.path, parts.query, "")))
    return urls


def stream_urls(public_host: str | None, host_header: str | None, path: str) -> list[str]:
    """The `wss://` URLs Twilio may have signed the upgrade for, with and without a trailing slash."""
    base = f"wss://{public_host or host_header or ''}{path.rstrip('/')}"
    return [base, base + "/"]


# --------------------------------------------------------------------------- the gate


class _Params(dict):
    """Form fields as RequestValidator wants them: every value of a repeated name."""

    @classmethod
    def of(cls, pairs: Iterable[tuple[str, str]]) -> "_Params":
        out = cls()
        for name, value in pairs:
            out.setdefault(name, []).append(value)
        return out

    def getall(self, name: str) -> list[str]:
        return self[name]


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
        self._validator = RequestValidator(settings.twilio_auth_token) if self.verifying else None
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
        signature_settings: str | None = None, once: bool = True,
    ) -> None:
        """Verify a Twilio webhook; raise `Rejected` (-> 403) if it is unsigned, forged or replayed."""
        if not self.verifying:
            return
        assert self._validator is not None
        if not signature:
            raise self._reject("webhook_unsigned", "no X-Twilio-Signature header")
        params = _Params.of(form)
        algorithm = get_signature_algorithm(signature_settings)
        if not any(self._validator.validate(url, params, signature, algorithm) for url in urls):
            raise self._reject("webhook_bad_signature", f"X-Twilio-Signature does not match {urls[0]}")
        fields = dict(form)
        account = self.settings.twilio_account_sid
        if account and fields.get("AccountSid") != account:
            raise self._reject("webhook_wrong_account", "the webhook is for another Twilio account")
        call_sid = fields.get("CallSid", "")
        if not call_sid:
            raise self._reject("webhook_no_call", "a signed request without a CallSid")
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
        assert self._validator is not None
        if not signature:
            raise self._reject("stream_unsigned", "the WebSocket upgrade has no X-Twilio-Signature")
        if not any(self._validator.validate(url, {}, signature) for url in urls):
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
            if not await self.state.take_once("streamed", f"{call_sid}:{leg}" if leg else call_sid, WEBHOOK_MEMORY_S):
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


# --------------------------------------------------------------------------- deployment and allow-lists


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


def _normalise_destination(raw: str) -> str | None:
    text = raw.strip()
    if text.lower().startswith("sip:"):
        return text.lower() if re.fullmatch(r"sip:[^\s,;]+@[^\s,;]+", text, re.IGNORECASE) else None
    digits = re.sub(r"[\s().-]", "", text)
    return digits if re.fullmatch(r"\+[1-9]\d{6,14}", digits) else None


def destination_allowed(destination: str, allowed: Iterable[str]) -> bool:
    """True only if `destination` is on the allow-list (deny by default).

    Phone numbers compare in E.164 form ("+1 (555) 123-0101" matches
    "+15551230101"); sip: URIs compare case-insensitively.
    """
    wanted = _normalise_destination(destination)
    if wanted is None:
        return False
    return any(_normalise_destination(a) == wanted for a in allowed)


def check_destination(destination: str, settings: Settings) -> str:
    """For tools that transfer or place calls: the normalised destination, or
    `DestinationNotAllowed` with a message the model can speak."""
    if not destination_allowed(destination, settings.allowed_destinations):
        raise DestinationNotAllowed(
            "that destination is not one this line may call or transfer to; "
            "tell the caller you cannot connect them there"
        )
    normalised = _normalise_destination(destination)
    assert normalised is not None
    return normalised
