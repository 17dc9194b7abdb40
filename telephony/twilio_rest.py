"""Twilio's REST API: the client the bridge uses, outbound calls, number setup and checks.

- `make_rest_client(settings)`: twilio's own `Client` on its asyncio HTTP client, so the
  bridge can `await client.calls(sid).update_async(...)` without blocking the loop. With
  `TWILIO_API_BASE_URL` (tests and simulations only) every request goes to that origin
  instead of https://api.twilio.com, e.g. to `telephony.testing.TwilioStandIn`; the
  request itself (path, form, Basic auth) is byte for byte what Twilio would get.
- Outbound calls (`place_call`): the CallSid does not exist before `calls.create`, so the
  stream token cannot be put in inline TwiML. The call is created with `url=` pointing at
  our signed webhook `/outbound-answer?ref=…`, which Twilio requests when the callee
  answers; that webhook then answers with the same `<Connect><Stream>` TwiML as
  `/incoming-call`, with a token minted for the real CallSid. The `ref` is sealed
  (AES-GCM, key derived from the stream-token secret), so it needs no server-side
  store: `telephony call` can place a call from another process and the server still
  knows what the call is for. It expires (10 min) and opens once.
- Number setup and checks (`setup_number`, `run_checks`) back `telephony twilio setup|check`.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import logging
import math
import os
import secrets
import sys
import time
from dataclasses import dataclass
from typing import Any, Callable
from urllib.parse import quote, urlsplit, urlunsplit

from twilio.base import values
from twilio.http.async_http_client import AsyncTwilioHttpClient
from twilio.http.response import Response as TwilioResponse
from twilio.rest import Client

from .errors import SettingsError, TelephonyError
from .security import (
    Rejected, check_destination, destination_allowed, mask_phone, stream_token_secret,
)
from .settings import Settings
from .shared_state import InProcessState, SharedState

__all__ = [
    "TWILIO_API", "ALREADY_ENDED", "REST_TIMEOUT_S", "make_rest_client", "close_rest_client", "is_already_ended",
    "rebase_url", "describe_error", "OutboundUnavailable", "OutboundRequest", "OutboundCall", "OutboundRefs", "parse_outbound_request",
    "place_call", "answer_url", "NumberConfig", "find_number", "setup_number", "console_steps", "Check",
    "check_credentials", "check_number", "check_health", "run_checks", "twilio_command",
]

log = logging.getLogger("telephony.twilio_rest")

TWILIO_API = "https://api.twilio.com"
#: Twilio's "The requested resource ... was not found": for a call, it is already over.
ALREADY_ENDED = 20404
#: twilio's asyncio client sends requests without any timeout (aiohttp's default is
#: none when None is passed); a hung REST call must not hold a hang-up forever.
REST_TIMEOUT_S = 10.0
#: How long the callee may take to answer an outbound call before its `ref` lapses
#: (Twilio rings for 60 s by default; queueing adds a little).
OUTBOUND_REF_TTL_S = 600.0
#: A `<Parameter>`'s name plus value must stay under 500 characters (twiml.py cuts at 400).
MAX_PURPOSE_CHARS = 400
#: Status-callback events requested for outbound calls (the /twilio/status route records them).
STATUS_EVENTS = ["initiated", "ringing", "answered", "completed"]
MACHINE_DETECTION = "Enable"
_REF_LABEL = b"telephony outbound ref v1"
_REF_PREFIX = "o1."


# --------------------------------------------------------------------------- the client


def rebase_url(url: str, base_url: str | None) -> str:
    """`url` with its scheme and host (and a path prefix, if `base_url` has one) taken from `base_url`."""
    if not base_url:
        return url
    base, parts = urlsplit(base_url), urlsplit(url)
    return urlunsplit((base.scheme, base.netloc, base.path.rstrip("/") + parts.path, parts.query, ""))


class _RestHttpClient(AsyncTwilioHttpClient):
    """twilio's asyncio HTTP client with a default timeout and an optional other origin.

    `request()` is the one hook every API call goes through (after the client has
    chosen its hostname, region and edge), so rewriting the URL here catches them all.
    """

    def __init__(self, base_url: str | None, timeout: float):
        super().__init__(timeout=timeout)
        self.base_url = base_url

    async def request(self, method: str, url: str, params=None, data=None, headers=None, auth=None,
                      timeout: float | None = None, allow_redirects: bool = False) -> TwilioResponse:
        if auth is not None:  # the same Basic header, without aiohttp's deprecated BasicAuth
            credentials = base64.b64encode(f"{auth[0]}:{auth[1]}".encode("utf-8")).decode("ascii")
            headers, auth = {**(headers or {}), "Authorization": f"Basic {credentials}"}, None
        return await super().request(
            method, rebase_url(url, self.base_url), params=params, data=data, headers=headers, auth=auth,
            timeout=timeout if timeout is not None else self.timeout, allow_redirects=allow_redirects,
        )


def make_rest_client(settings: Settings, timeout: float = REST_TIMEOUT_S) -> Client | None:
    """twilio's REST client on asyncio, or None without TWILIO_ACCOUNT_SID/TWILIO_AUTH_TOKEN.

    Call it inside a running event loop (the app's lifespan, `asyncio.run`): the HTTP
    session belongs to that loop. Close it with `close_rest_client`.
    """
    if not settings.has_twilio_rest:
        return None
    if settings.twilio_api_base_url:
        log.warning("Twilio REST requests go to %s, not %s (TWILIO_API_BASE_URL: tests and simulations only)",
                    settings.twilio_api_base_url, TWILIO_API)
    http = _RestHttpClient(settings.twilio_api_base_url, timeout)
    return Client(settings.twilio_account_sid, settings.twilio_auth_token, http_client=http)


async def close_rest_client(client: Client | None) -> None:
    """Close the client's HTTP session (aiohttp warns about sessions left open)."""
    if client is not None and hasattr(client.http_client, "close"):
        try:
            await client.http_client.close()
        except Exception as exc:  # closing must never break a shutdown
            log.debug("closing the Twilio REST session failed: %r", exc)


def is_already_ended(exc: BaseException) -> bool:
    """True for Twilio's 20404 (for a call: it is already over, which a hang-up may count as done)."""
    return getattr(exc, "code", None) == ALREADY_ENDED


def describe_error(exc: BaseException) -> str:
    """A REST error as one log- and terminal-friendly line (twilio's own str() adds colours)."""
    code = getattr(exc, "code", None)
    status = getattr(exc, "status", None)
    msg = getattr(exc, "msg", None) or getattr(exc, "detail", None) or getattr(exc, "title", None) or str(exc)
    if code is not None or status is not None:
        return f"Twilio answered {status} (error {code}): {msg}"
    return f"{type(exc).__name__}: {exc}"


# --------------------------------------------------------------------------- outbound calls


class OutboundUnavailable(TelephonyError):
    """Outbound calls cannot be placed with this configuration; the message names the variable."""


@dataclass(frozen=True)
class OutboundRequest:
    """What `POST /outbound-call` and `telephony call` ask for."""

    to: str
    purpose: str = ""
    machine_detection: bool = False


@dataclass(frozen=True)
class OutboundCall:
    """An opened answer-URL `ref`: whom we called, and why."""

    to: str
    purpose: str
    expires: int


def parse_outbound_request(body: bytes) -> OutboundRequest:
    """The JSON body of `POST /outbound-call`; ValueError says what is wrong with it."""
    try:
        data = json.loads(body or b"null")
    except (ValueError, UnicodeDecodeError):
        raise ValueError("the body must be JSON: {\"to\": \"+15551234567\", \"purpose\": \"...\"}") from None
    if not isinstance(data, dict):
        raise ValueError("the body must be a JSON object with at least \"to\"")
    unknown = set(data) - {"to", "purpose", "machine_detection"}
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
    return OutboundRequest(to.strip(), purpose.strip(), machine)


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class OutboundRefs:
    """Seals what an outbound call is for into the `ref` of its answer URL, and opens it once.

    The ref is AES-GCM over `[to, purpose, expiry]` with a key derived from the
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

    def seal(self, to: str, purpose: str) -> str:
        nonce = secrets.token_bytes(12)
        expires = math.ceil(self._clock() + self.ttl_s)
        plain = json.dumps([to, purpose, expires], separators=(",", ":")).encode("utf-8")
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
            to, purpose, expires = json.loads(plain)
        except (ValueError, InvalidTag, TypeError):
            raise Rejected("outbound_bad_ref", "the answer URL's ref was not made by this deployment") from None
        if self._clock() >= expires:
            raise Rejected("outbound_expired_ref", f"the outbound call's ref expired {self._clock() - expires:.0f} s ago")
        if callee and not destination_allowed(callee, [to]):
            raise Rejected("outbound_wrong_callee", "the answered call is not the one the ref was made for")
        if not await self._state.take_once("outbound_ref", _b64(raw[:12]), expires + 1 - self._clock()):
            raise Rejected("outbound_replayed_ref", "the outbound call's ref was already used")
        return OutboundCall(to, purpose, int(expires))


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
        url=answer_url(public, refs.seal(to, request.purpose)),
        method="POST",
        status_callback=f"{public}/twilio/status",
        status_callback_method="POST",
        status_callback_event=STATUS_EVENTS,
        machine_detection=MACHINE_DETECTION if request.machine_detection else values.unset,
    )
    log.info("outbound call %s to %s created (%s)%s", call.sid, mask_phone(to), call.status,
             " with answering-machine detection" if request.machine_detection else "")
    return call


# --------------------------------------------------------------------------- number setup and checks


@dataclass(frozen=True)
class NumberConfig:
    sid: str
    phone_number: str
    voice_url: str | None
    voice_method: str | None
    status_callback: str | None
    status_callback_method: str | None

    @classmethod
    def of(cls, instance: Any) -> "NumberConfig":
        return cls(instance.sid, instance.phone_number, instance.voice_url, instance.voice_method,
                   instance.status_callback, instance.status_callback_method)


def _webhooks(settings: Settings) -> tuple[str, str]:
    public = settings.public_url
    if not public:
        raise OutboundUnavailable("PUBLIC_URL is not set: it is the https origin Twilio's webhooks go to")
    return f"{public}/incoming-call", f"{public}/twilio/status"


async def find_number(client: Client, number: str) -> Any | None:
    """The account's IncomingPhoneNumber for `number` (E.164), or None if the account does not own it."""
    found = await client.incoming_phone_numbers.list_async(phone_number=number, limit=20)
    return next((n for n in found if n.phone_number == number), None)


async def setup_number(client: Client, settings: Settings, number: str) -> NumberConfig:
    """Point the number's voice webhook (and call-status callback) at this deployment."""
    owned = await find_number(client, number)
    if owned is None:
        raise LookupError(f"{number} is not a phone number of account {settings.twilio_account_sid}")
    voice_url, status_url = _webhooks(settings)
    updated = await client.incoming_phone_numbers(owned.sid).update_async(
        voice_url=voice_url, voice_method="POST", status_callback=status_url, status_callback_method="POST",
    )
    return NumberConfig.of(updated)


def console_steps(settings: Settings, number: str) -> str:
    """The same setup, done by hand in the Twilio console."""
    voice_url, status_url = _webhooks(settings)
    return "\n".join([
        "In the Twilio console (https://console.twilio.com):",
        f"  1. Phone Numbers > Manage > Active numbers > {number}",
        "  2. Voice Configuration > A call comes in: Webhook,",
        f"     URL {voice_url}, HTTP POST",
        f"  3. Call status changes: {status_url}, HTTP POST",
        "  4. Save configuration.",
    ])


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool
    detail: str

    def line(self) -> str:
        return f"{'ok  ' if self.ok else 'FAIL'}  {self.name}: {self.detail}"


async def check_credentials(client: Client, settings: Settings) -> Check:
    try:
        account = await client.api.v2010.accounts(settings.twilio_account_sid).fetch_async()
    except Exception as exc:
        return Check("credentials", False, describe_error(exc))
    if account.status != "active":
        return Check("credentials", False, f"account {account.sid} is {account.status}")
    return Check("credentials", True, f"account {account.sid} ({account.friendly_name}) is active")


async def check_number(client: Client, settings: Settings, number: str) -> Check:
    name = f"number {number}"
    try:
        owned = await find_number(client, number)
    except Exception as exc:
        return Check(name, False, describe_error(exc))
    if owned is None:
        return Check(name, False, f"not a phone number of account {settings.twilio_account_sid}")
    want, _ = _webhooks(settings)
    if owned.voice_url != want or (owned.voice_method or "POST").upper() != "POST":
        return Check(name, False, f"calls go to {owned.voice_method} {owned.voice_url or '(nothing)'}, "
                                  f"not POST {want} (run: telephony twilio setup --number {number})")
    return Check(name, True, f"calls go to POST {want}")


async def check_health(url: str, timeout: float = 5.0) -> Check:
    """GET `url` (…/healthz): ok when it answers 200 with {"status": "ok"}."""
    import aiohttp  # twilio's own dependency, already imported by its asyncio client

    name = f"health {url}"
    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout)) as session:
            async with session.get(url, allow_redirects=False) as response:
                text = await response.text()
                status = response.status
    except (aiohttp.ClientError, asyncio.TimeoutError, ValueError) as exc:
        return Check(name, False, f"no answer ({type(exc).__name__}: {exc or 'timed out'})")
    try:
        body = json.loads(text)
    except ValueError:
        body = None
    state = body.get("status") if isinstance(body, dict) else None
    if status == 200 and state == "ok":
        return Check(name, True, f"{status}, {body.get('active_calls', 0)} active call(s)")
    return Check(name, False, f"answered {status} {state or text[:80]!r}")


async def run_checks(client: Client, settings: Settings, number: str | None, health_url: str | None) -> list[Check]:
    """Credentials, then the number's webhook (when a number is known), then /healthz."""
    checks = [await check_credentials(client, settings)]
    if number:
        checks.append(await check_number(client, settings, number))
    url = health_url or (f"{settings.public_url}/healthz" if settings.public_url else None)
    if url:
        checks.append(await check_health(url))
    return checks


# --------------------------------------------------------------------------- the CLI commands


def cli_settings(require: tuple[str, ...]) -> Settings:
    """Settings for a REST command: GEMINI_API_KEY is not needed here; the named variables are.

    Raises `SettingsError` naming the first missing variable.
    """
    env = dict(os.environ)
    if not (env.get("GEMINI_API_KEY", "").strip() or env.get("GOOGLE_API_KEY", "").strip()):
        env["GEMINI_API_KEY"] = "not-needed-for-twilio-commands"
    settings = Settings.from_env(env)
    present = {
        "TWILIO_ACCOUNT_SID": settings.twilio_account_sid, "TWILIO_AUTH_TOKEN": settings.twilio_auth_token,
        "PUBLIC_URL": settings.public_url, "TWILIO_PHONE_NUMBER": settings.twilio_phone_number,
    }
    for name in require:
        if not present[name]:
            raise SettingsError(f"{name} is not set: this command needs it")
    return settings


async def cli_call(settings: Settings, request: OutboundRequest, out=None, err=None) -> int:
    out, err = out or sys.stdout, err or sys.stderr
    client = make_rest_client(settings)
    try:
        call = await place_call(client, settings, request, OutboundRefs(settings))
    except TelephonyError as exc:
        print(f"telephony: {exc}", file=err)
        return 2
    except Exception as exc:
        print(f"telephony: Twilio refused the call: {describe_error(exc)}", file=err)
        return 1
    finally:
        await close_rest_client(client)
    print(f"call {call.sid} {call.status}: {settings.twilio_phone_number} -> {request.to}; "
          f"the agent takes it at {settings.public_url}/outbound-answer when answered", file=out)
    return 0


async def cli_setup(settings: Settings, number: str, out=None, err=None) -> int:
    out, err = out or sys.stdout, err or sys.stderr
    client = make_rest_client(settings)
    try:
        config = await setup_number(client, settings, number)
    except LookupError as exc:
        print(f"telephony: {exc}", file=err)
        return 1
    except TelephonyError as exc:
        print(f"telephony: {exc}", file=err)
        return 2
    except Exception as exc:
        print(f"telephony: setup failed: {describe_error(exc)}", file=err)
        return 1
    finally:
        await close_rest_client(client)
    print(f"{config.phone_number} ({config.sid}): calls go to {config.voice_method} {config.voice_url}; "
          f"call status to {config.status_callback_method} {config.status_callback}", file=out)
    print(file=out)
    print("Done. The equivalent console steps:", file=out)
    print(console_steps(settings, number), file=out)
    return 0


async def cli_check(settings: Settings, number: str | None, health_url: str | None, out=None) -> int:
    out = out or sys.stdout
    client = make_rest_client(settings)
    try:
        checks = await run_checks(client, settings, number, health_url)
    finally:
        await close_rest_client(client)
    for check in checks:
        print(check.line(), file=out)
    return 0 if all(c.ok for c in checks) else 1


def twilio_command(args: Any) -> int:
    """`telephony call TO [--purpose] [--machine-detection]` and `telephony twilio setup|check [--number]`."""
    if args.command == "call":
        require: tuple[str, ...] = ("TWILIO_ACCOUNT_SID", "TWILIO_AUTH_TOKEN", "PUBLIC_URL", "TWILIO_PHONE_NUMBER")
    elif args.twilio_command == "setup":
        require = ("TWILIO_ACCOUNT_SID", "TWILIO_AUTH_TOKEN", "PUBLIC_URL")
    else:  # check: PUBLIC_URL only matters for the webhook and /healthz checks
        require = ("TWILIO_ACCOUNT_SID", "TWILIO_AUTH_TOKEN") + (() if args.health_url else ("PUBLIC_URL",))
    try:
        settings = cli_settings(require)
    except SettingsError as exc:
        print(f"telephony: configuration error: {exc}", file=sys.stderr)
        return 2
    if args.command == "call":
        if len(args.purpose) > MAX_PURPOSE_CHARS:
            print(f"telephony: --purpose is longer than {MAX_PURPOSE_CHARS} characters", file=sys.stderr)
            return 2
        request = OutboundRequest(args.to.strip(), args.purpose.strip(), bool(args.machine_detection))
        return asyncio.run(cli_call(settings, request))
    number = args.number or settings.twilio_phone_number
    if args.twilio_command == "setup":
        if not number:
            print("telephony: configuration error: give --number or set TWILIO_PHONE_NUMBER", file=sys.stderr)
            return 2
        return asyncio.run(cli_setup(settings, number))
    if number and not settings.public_url:
        print("telephony: configuration error: PUBLIC_URL is not set: the number's webhook cannot be checked",
              file=sys.stderr)
        return 2
    return asyncio.run(cli_check(settings, number, args.health_url))
