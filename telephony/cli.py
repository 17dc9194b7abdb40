"""The `telephony` command: `serve` the agent, `simulate` a call offline, `test` scenarios, `call` out,
set up `twilio`, check the `agents`, `init` a project of your own."""

from __future__ import annotations

import argparse
import contextlib
import os
import sys

from .errors import SettingsError

#: uvicorn's own WebSocket stack, chosen by its public names. Media frames are
#: ~300-byte JSON texts: per-message deflate would cost more CPU than it saves.
UVICORN_OPTIONS = {"ws": "websockets-sansio", "ws_per_message_deflate": False}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="telephony", description="Gemini Live phone agent for Twilio.")
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="run the server Twilio connects to")
    serve.add_argument("--host", default=os.environ.get("HOST", "0.0.0.0"))
    # String defaults go through `type` too: a bad PORT or WEB_CONCURRENCY is one argparse line, not a traceback.
    serve.add_argument("--port", type=int, default=os.environ.get("PORT", "8000"))
    serve.add_argument("--workers", type=int, default=os.environ.get("WEB_CONCURRENCY", "1"),
                       help="server processes on this port (more than 1 needs REDIS_URL; default WEB_CONCURRENCY or 1)")

    simulate = sub.add_parser("simulate", help="run a whole call offline from a recorded Twilio stream")
    simulate.add_argument("recording", help="a .jsonl recording of Twilio messages, e.g. tests/fixtures/order_call.jsonl")
    simulate.add_argument("--out", help="write the audio the caller heard to this WAV file")
    simulate.add_argument("--speed", type=float, default=1.0, help="play faster than real time (e.g. 2)")

    # Scenario tests (scenario_cli.py): offline by default, no key needed.
    test = sub.add_parser("test", help="run scenario files against the agent (offline by default; --live with a key)")
    from .scenario_cli import add_arguments

    add_arguments(test)

    # Call records (records_cli.py): reads DATABASE_URL or CALLS_DB_PATH only, so no GEMINI_API_KEY is needed.
    calls = sub.add_parser("calls", help="list recent call records; `calls show CALLSID` prints one call")
    calls.add_argument("--limit", type=int, default=20, help="how many calls to list (default 20)")
    calls.add_argument("--agent", default=None, help="only this agent's calls")
    calls_sub = calls.add_subparsers(dest="calls_command")
    show = calls_sub.add_parser("show", help="print a call's transcript and timeline")
    show.add_argument("call_sid")
    for p in (calls, show):  # accepted before or after `show`
        p.add_argument("--db", default=argparse.SUPPRESS, help="the records database, a SQLite path or a postgresql:// URL "
                       "(default: DATABASE_URL, else CALLS_DB_PATH, else data/calls.db)")
        p.add_argument("--json", action="store_true", default=argparse.SUPPRESS, help="print JSON, as GET /calls returns it")

    # Outbound calls and number setup (twilio_cli.py): Twilio's REST API, no GEMINI_API_KEY needed.
    call = sub.add_parser("call", help="place an outbound call that the agent takes (needs PUBLIC_URL, TWILIO_PHONE_NUMBER)")
    call.add_argument("to", help="the number to call, E.164 (must be on ALLOWED_DESTINATIONS)")
    call.add_argument("--purpose", default="", help="why the agent calls; it reaches the agent as context")
    call.add_argument("--machine-detection", action="store_true", help="ask Twilio to detect answering machines")
    call.add_argument("--agent", default=None,
                      help="the agent that talks (default: the one answering TWILIO_PHONE_NUMBER)")

    agents = sub.add_parser("agents", help="check the agents and print which number each answers")
    agents.add_argument("--file", default=None, help="the agents file (default: AGENTS_FILE)")
    init = sub.add_parser("init", help="start your own agent project in a folder")
    init.add_argument("folder", help="the folder to create (must not exist, or be empty)")
    init.add_argument("--name", default=None, help="the business's name (default: from the folder's name)")
    twilio = sub.add_parser("twilio", help="set up or check the Twilio number and webhooks")
    twilio_sub = twilio.add_subparsers(dest="twilio_command", required=True)
    setup = twilio_sub.add_parser("setup", help="point the number's voice webhook at PUBLIC_URL/incoming-call")
    check = twilio_sub.add_parser("check", help="verify credentials, the number's webhook and PUBLIC_URL/healthz")
    for p in (setup, check):
        p.add_argument("--number", default=None, help="the Twilio number, E.164 (default: TWILIO_PHONE_NUMBER)")
    check.add_argument("--health-url", default=None, help="check this URL instead of PUBLIC_URL/healthz")

    args = parser.parse_args(argv)
    if args.command in ("call", "twilio"):
        from .twilio_cli import twilio_command

        return twilio_command(args)
    if args.command == "serve":
        return _serve(args.host, args.port, args.workers)
    if args.command == "test":
        from .scenario_cli import test_command

        return test_command(args)
    if args.command == "agents":
        from .agents_cli import agents_command

        return agents_command(args)
    if args.command == "init":
        from .agents_cli import init_command

        return init_command(args)
    if args.command == "calls":
        from .records_cli import calls_command

        return calls_command(args)
    from .simulate import main as simulate_main

    return simulate_main(args.recording, args.out, args.speed)


def _serve(host: str, port: int, workers: int = 1) -> int:
    import uvicorn

    from .app import create_app
    from .lifecycle import check_storage, check_workers, configure_logging
    from .records_schema import RecordsError
    from .security import check_deployment
    from .settings import Settings

    try:
        settings = Settings.from_env()
        check_deployment(settings)
        check_storage(settings)
        check_workers(workers, settings)
    except (SettingsError, RecordsError) as exc:
        print(f"telephony: configuration error: {exc}", file=sys.stderr)
        return 2
    configure_logging(settings.log_level)
    options = {"host": host, "port": port, "log_level": settings.log_level.lower(), **UVICORN_OPTIONS}
    if workers > 1:  # each worker process builds the app from the environment
        with metrics_folder():
            uvicorn.run("telephony.app:app", workers=workers, **options)
    else:
        uvicorn.run(create_app(settings), **options)
    return 0


@contextlib.contextmanager
def metrics_folder():
    """PROMETHEUS_MULTIPROC_DIR for the workers, so /metrics sums them all (metrics.py).

    Unset: a temporary folder, deleted when the server stops. Set: emptied of a
    previous run's metric files first, as prometheus-client requires.
    """
    import shutil
    import tempfile

    from .metrics import MULTIPROC_ENV, clean_multiprocess_dir

    given = os.environ.get(MULTIPROC_ENV)
    if given:
        os.makedirs(given, exist_ok=True)
        clean_multiprocess_dir(given)
        yield given
        return
    folder = tempfile.mkdtemp(prefix="telephony-metrics-")
    os.environ[MULTIPROC_ENV] = folder
    try:
        yield folder
    finally:
        os.environ.pop(MULTIPROC_ENV, None)
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
