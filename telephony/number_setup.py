"""Pointing a Twilio number at this deployment, and checking it (`telephony twilio setup|check`)."""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass
from typing import Any

from twilio.rest import Client

from .outbound import OutboundUnavailable
from .settings import Settings
from .twilio_rest import describe_error

__all__ = ["NumberConfig", "find_number", "setup_number", "console_steps", "Check", "check_credentials",
           "check_number", "check_health", "run_checks"]


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
