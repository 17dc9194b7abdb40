"""Run many simulated calls through one server and report what they leave behind.

    python benchmarks/leaks.py [--calls 500] [--concurrency 10]

The server is a real `telephony serve` process; the Live emulator and the callers
run in this one. Prints the server's asyncio tasks (from /healthz) and open file
descriptors before and after (they must return to their baseline) and the server's
RSS growth per call (target: under 50 KB).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import tempfile
import time

from _harness import ROOT, fd_targets, health, open_fds, rss_kb, server_env, start_server  # first: puts ROOT on sys.path
from telephony.testing.emulator import LiveEmulator, Say, Script
from telephony.testing.simulator import CallSimulator

RECORDING = ROOT / "tests" / "fixtures" / "greeting_only.jsonl"


async def run_calls(url: str, n: int, concurrency: int, speed: float) -> int:
    sem = asyncio.Semaphore(concurrency)
    failures = 0

    async def one() -> None:
        nonlocal failures
        async with sem:
            call = await CallSimulator(url, RECORDING, speed=speed, linger=2.0).run()
            if call.close_code != 1000 or call.protocol_errors or not call.agent_audio:
                failures += 1

    await asyncio.gather(*(one() for _ in range(n)))
    return failures


def settle(port: int, timeout: float = 10.0) -> dict:
    deadline = time.monotonic() + timeout
    while health(port)["active_calls"] and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.5)
    return health(port)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=500)
    parser.add_argument("--concurrency", type=int, default=10)
    parser.add_argument("--speed", type=float, default=5.0, help="playback speed of each 2.5 s call")
    args = parser.parse_args()

    script = Script(greeting=[Say(text="Hello!", seconds=0.3)], replies=[], pace=0)
    with tempfile.TemporaryDirectory() as tmp, LiveEmulator(script) as emulator:
        server = start_server(server_env(emulator.env(), f"{tmp}/orders.db"), os.path.join(tmp, "server.log"), timeout=20)
        proc, port, url = server.proc, server.port, server.ws_url
        try:
            if server.refused is not None:
                raise RuntimeError(f"server did not start: {server.refused}")
            warm = asyncio.run(run_calls(url, 20, args.concurrency, args.speed))  # warm caches and pools
            h0 = settle(port)
            tasks0, fds0, rss0 = h0.get("tasks", -1), open_fds(proc.pid), rss_kb(proc.pid)
            targets0 = fd_targets(proc.pid)
            started = time.monotonic()
            failures = asyncio.run(run_calls(url, args.calls, args.concurrency, args.speed)) + warm
            elapsed = time.monotonic() - started
            h1 = settle(port)
            tasks1, fds1, rss1 = h1.get("tasks", -1), open_fds(proc.pid), rss_kb(proc.pid)
            new_fds = sorted(fd_targets(proc.pid) - targets0)
        finally:
            server.stop(timeout=30)

    print(f"{args.calls} calls ({args.concurrency} at a time, speed {args.speed}) in {elapsed:.1f} s; failed calls: {failures}")
    print(f"{'':24}{'before':>10}{'after':>10}")
    print(f"{'server asyncio tasks':24}{tasks0:>10}{tasks1:>10}")
    print(f"{'open file descriptors':24}{fds0:>10}{fds1:>10}" + (f"   new: {', '.join(new_fds)}" if new_fds else ""))
    print(f"{'server RSS (KB)':24}{rss0:>10}{rss1:>10}")
    print(f"server RSS growth per call: {(rss1 - rss0) / args.calls:.1f} KB (target < 50 KB)")
    ok = tasks1 <= tasks0 and fds1 <= fds0 and failures == 0
    print("tasks and fds back to baseline" if ok else "LEAK OR FAILURE: see above")


if __name__ == "__main__":
    main()
