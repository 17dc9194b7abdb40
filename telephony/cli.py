"""The `telephony` command: `serve` the agent, or `simulate` a call offline."""

from __future__ import annotations

import argparse
import os
import sys

from .errors import SettingsError


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="telephony", description="Gemini Live phone agent for Twilio.")
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="run the server Twilio connects to")
    serve.add_argument("--host", default=os.environ.get("HOST", "0.0.0.0"))
    serve.add_argument("--port", type=int, default=int(os.environ.get("PORT", "8000")))

    simulate = sub.add_parser("simulate", help="run a whole call offline from a recorded Twilio stream")
    simulate.add_argument("recording", help="a .jsonl recording of Twilio messages, e.g. tests/fixtures/order_call.jsonl")
    simulate.add_argument("--out", help="write the audio the caller heard to this WAV file")
    simulate.add_argument("--speed", type=float, default=1.0, help="play faster than real time (e.g. 2)")

    args = parser.parse_args(argv)
    if args.command == "serve":
        return _serve(args.host, args.port)
    from .simulate import main as simulate_main

    return simulate_main(args.recording, args.out, args.speed)


def _serve(host: str, port: int) -> int:
    import uvicorn

    from .app import configure_logging, create_app
    from .settings import Settings

    from .security import check_deployment

    try:
        settings = Settings.from_env()
        check_deployment(settings)
    except SettingsError as exc:
        print(f"telephony: configuration error: {exc}", file=sys.stderr)
        return 2
    configure_logging(settings.log_level)
    uvicorn.run(create_app(settings), host=host, port=port, log_level=settings.log_level.lower())
    return 0


if __name__ == "__main__":
    sys.exit(main())
