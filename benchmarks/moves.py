"""What a caller hears when a deploy moves their call to another instance.

Two real instances behind deploy/haproxy.cfg, real Redis and PostgreSQL, the Live
emulator, and Twilio's stand-in following `<Connect action>`. Calls are placed on one
instance in batches; while the agent is in the middle of a long sentence, that instance
gets SIGTERM. With MOVE_WAIT_SECONDS short (0.5 s) the sentence is cut, which is the
worst case for the caller: the new instance resumes the Live session and tells the model
what was heard, and the model carries on. Per moved call:

- gap: from the last agent audio the caller heard on the old stream to the first agent
  audio heard on the new one (the silence the caller hears);
- caller audio lost: the caller's frames that reached neither instance's reading of the
  call (sent into the old stream after it stopped reading, or while no stream was open):
  frames the caller sent minus the call record's `frames_in`, 20 ms each;
- handover: from SIGTERM to the new stream's first agent audio.

    python benchmarks/moves.py [--calls 20] [--batch 10] [--write]

`--write` appends the figures to benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import itertools
import math
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from telephony.testing.deployment import HOSTS, OUR_NUMBER, PUBLIC, Deployment  # noqa: E402
from telephony.testing.emulator import LiveEmulator, Say, Script  # noqa: E402
from telephony.testing.postgres_server import PostgresServer  # noqa: E402
from telephony.testing.recordings import Silence  # noqa: E402
from telephony.testing.redis_server import RedisServer  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "RESULTS.md"
_serial = itertools.count(0x50FE000)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q / 100 * len(ordered)) - 1))]


async def one_batch(deployment: Deployment, emulator: LiveEmulator, source: str, count: int) -> list:
    standin = deployment.standin
    before = len(emulator.sessions)
    calls = [asyncio.create_task(standin.inbound_call(
        via=deployment.proxy.http_url, first_via=deployment.servers[source].http_url, public_url=PUBLIC,
        call_sid=f"CA{next(_serial):032x}", caller=f"+1444555{i:04d}", called=OUR_NUMBER,
        segments=[Silence(14.0)])) for i in range(count)]
    await asyncio.to_thread(emulator.wait_for, lambda: sum(
        "turn_start" in s.kinds() for s in emulator.sessions[before:]) >= count, 30)
    await asyncio.sleep(1.5)  # the agent is mid-sentence on every call
    signalled = deployment.sigterm(source)
    done = await asyncio.gather(*calls)
    await asyncio.to_thread(deployment.servers[source].proc.wait, 30)
    target = "agent-b" if source == "agent-a" else "agent-a"
    rows = []
    for call in done:
        record = None
        deadline = time.monotonic() + 15
        while not (record and record.get("ended_at")) and time.monotonic() < deadline:
            record = await asyncio.to_thread(deployment.record, call.call_sid, target)
            await asyncio.sleep(0.1)
        sent = sum(e.detail["count"] for leg in call.legs for e in leg.stream.of_kind("sent_media"))
        frames_in = ((record or {}).get("summary") or {}).get("frames_in")
        rows.append((call, signalled, None if frames_in is None else (sent - frames_in) * 0.02))
    return rows


def run(calls: int, batch: int, keep_logs: str | None = None) -> dict:
    script = Script(greeting=[Say(text="Let me read you the whole order, item by item.", seconds=8.0)], replies=[],
                    text_answer=[Say(text="As I was saying, the order ships tomorrow.", seconds=1.0)])
    rows = []
    with LiveEmulator(script) as emulator, RedisServer() as redis, PostgresServer() as postgres, \
            tempfile.TemporaryDirectory() as scratch:
        folder = keep_logs or scratch
        with Deployment(emulator, redis.url, postgres.url, Path(folder), extra_env={"MOVE_WAIT_SECONDS": "0.5"}) as dep:
            source = "agent-a"
            while len(rows) < calls:
                rows += asyncio.run(one_batch(dep, emulator, source, min(batch, calls - len(rows))))
                dep.restart(source, HOSTS[source])
                dep.wait_in_rotation(*HOSTS)
                source = "agent-b" if source == "agent-a" else "agent-a"
    gaps, lost, handover, failed = [], [], [], 0
    for call, signalled, lost_s in rows:
        if len(call.legs) != 2 or not call.gaps() or lost_s is None:
            failed += 1
            print(f"call {call.call_sid} did not move as expected: {len(call.legs)} leg(s), gaps {call.gaps()}, "
                  f"caller audio lost {lost_s}; final TwiML {call.final_twiml!r}", file=sys.stderr)
            for leg in call.legs:
                print("  " + "\n  ".join(leg.stream.timeline()[-6:]), file=sys.stderr)
            continue
        gaps.append(call.gaps()[0])
        lost.append(lost_s)
        handover.append(call.legs[1].first_agent_audio - signalled)
    return {"calls": len(rows), "moved": len(gaps), "failed": failed, "gap": gaps, "lost": lost, "handover": handover}


def report(result: dict) -> str:
    def line(name: str, values: list[float]) -> str:
        if not values:
            return f"| {name} | - | - | - |"
        return (f"| {name} | {percentile(values, 50) * 1000:.0f} ms | {percentile(values, 99) * 1000:.0f} ms "
                f"| {max(values) * 1000:.0f} ms |")

    return "\n".join([
        f"{result['moved']} of {result['calls']} calls moved and carried on ({result['failed']} did not).",
        "",
        "| per moved call | p50 | p99 | max |",
        "|---|---|---|---|",
        line("gap the caller hears (last agent audio, old stream → first, new stream)", result["gap"]),
        line("caller audio lost (sent, never read by an instance)", result["lost"]),
        line("SIGTERM → first agent audio on the new stream", result["handover"]),
    ])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=20)
    parser.add_argument("--batch", type=int, default=10, help="calls moved by one SIGTERM")
    parser.add_argument("--write", action="store_true", help="append the figures to benchmarks/RESULTS.md")
    parser.add_argument("--logs", help="keep the instances' logs in this folder")
    args = parser.parse_args()
    started = time.monotonic()
    result = run(args.calls, args.batch, args.logs)
    text = report(result)
    print(text)
    print(f"({time.monotonic() - started:.0f} s)")
    if args.write:
        day = datetime.date.today().isoformat()
        section = (f"\n## Calls moved by a deploy (issue 20)\n\nMeasured {day} on this 2-core VM: "
                   f"`python benchmarks/moves.py --calls {args.calls} --batch {args.batch}`, {args.batch} calls per "
                   "SIGTERM, each mid-sentence (MOVE_WAIT_SECONDS=0.5, so the sentence is cut: the worst case).\n\n"
                   f"{text}\n")
        RESULTS.write_text(RESULTS.read_text() + section)


if __name__ == "__main__":
    main()
