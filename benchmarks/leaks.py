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
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from telephony.testing.emulator import LiveEmulator, Reply, Say, Script  # noqa: E402
from telephony.testing.simulator import CallSimulator  # noqa: E402

RECORDING = ROOT / "tests" / "fixtures" / "greeting_only.jsonl"


def rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def health(port: int) -> dict:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5) as r:
        return json.loads(r.read())


def start_server(env: dict[str, str]) -> tuple[subprocess.Popen, int]:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    proc = subprocess.Popen(
        [sys.executable, "-m", "telephony.cli", "serve", "--host", "127.0.0.1", "--port", str(port)],
        env=env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            health(port)
            return proc, port
        except OSError:
            time.sleep(0.1)
    proc.kill()
    raise RuntimeError("server did not start")


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
        env = {**os.environ, **emulator.env(), "ORDERS_DB_PATH": f"{tmp}/orders.db", "LOG_LEVEL": "WARNING"}
        proc, port = start_server(env)
        url = f"ws://127.0.0.1:{port}/media-stream"
        try:
            warm = asyncio.run(run_calls(url, 20, args.concurrency, args.speed))  # warm caches and pools
            h0 = settle(port)
            tasks0, fds0, rss0 = h0.get("tasks", -1), open_fds(proc.pid), rss_kb(proc.pid)
            started = time.monotonic()
            failures = asyncio.run(run_calls(url, args.calls, args.concurrency, args.speed)) + warm
            elapsed = time.monotonic() - started
            h1 = settle(port)
            tasks1, fds1, rss1 = h1.get("tasks", -1), open_fds(proc.pid), rss_kb(proc.pid)
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()

    print(f"{args.calls} calls ({args.concurrency} at a time, speed {args.speed}) in {elapsed:.1f} s; failed calls: {failures}")
    print(f"{'':24}{'before':>10}{'after':>10}")
    print(f"{'server asyncio tasks':24}{tasks0:>10}{tasks1:>10}")
    print(f"{'open file descriptors':24}{fds0:>10}{fds1:>10}")
    print(f"{'server RSS (KB)':24}{rss0:>10}{rss1:>10}")
    print(f"server RSS growth per call: {(rss1 - rss0) / args.calls:.1f} KB (target < 50 KB)")
    ok = tasks1 <= tasks0 and fds1 <= fds0 and failures == 0
    print("tasks and fds back to baseline" if ok else "LEAK OR FAILURE: see above")


if __name__ == "__main__":
    main()
