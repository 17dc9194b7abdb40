"""`telephony call` and `telephony twilio setup|check`: Twilio's REST API from a shell.

They need TWILIO_ACCOUNT_SID, TWILIO_AUTH_TOKEN and (mostly) PUBLIC_URL, never
GEMINI_API_KEY: a missing variable is named.
"""

from __future__ import annotations

import asyncio
import os
import sys
from typing import Any

from .errors import SettingsError, TelephonyError
from .number_setup import console_steps, run_checks, setup_number
from .outbound import MAX_PURPOSE_CHARS, OutboundRefs, OutboundRequest, place_call
from .settings import Settings
from .twilio_rest import close_rest_client, describe_error, make_rest_client

__all__ = ["twilio_command"]


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
        agent = getattr(args, "agent", None)
        if agent:
            from .agents import NoAgent, load_agents

            try:  # the server checks it again when the call is answered
                load_agents(settings).named(agent)
            except (SettingsError, NoAgent) as exc:
                print(f"telephony: --agent: {exc}", file=sys.stderr)
                return 2
        request = OutboundRequest(args.to.strip(), args.purpose.strip(), bool(args.machine_detection), agent or None)
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
