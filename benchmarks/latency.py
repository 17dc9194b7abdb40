"""Relay latency of the bridge, end to end over loopback (run: python benchmarks/latency.py).

A REAL server process (``python -m telephony.cli serve``) sits between a simulated
Twilio side and the Live emulator, both in this process; every clock is
``time.monotonic()`` on the same machine. One call per resampler config measures:

- inbound relay: a caller tone onset leaves the Twilio side (send time of the media
  frame that contains it) -> it reaches "Live" (arrival time of the realtime-input
  chunk in which the onset is found; onsets are found by energy per 1 ms block in the
  received 16 kHz PCM, refined to the first loud sample, and that sample's position in
  the stream says which chunk carried it);
- outbound relay: a model tone onset leaves the emulator (send time of the modelTurn
  chunk that contains it) -> it reaches the Twilio side (arrival time of the media
  message whose decoded audio shows the onset);
- barge-in: the emulator sends ``interrupted`` while turn audio is flowing -> ``clear``
  arrives at the Twilio side; and how much audio of the interrupted turn still arrives
  after the clear (each turn speaks its own frequency, so turns can be told apart).

The caller streams tone bursts (40 ms of 1 kHz at -12 dBFS, 40-60 ms apart, so the
emulator's VAD hears one long utterance and never ends a turn mid-measurement) for the
whole call; the model side first streams one long turn of tone bursts (outbound), then
runs the barge-in cycles. Onsets sit at random offsets inside frames and chunks.

The Twilio side is a minimal client written for precise timestamps (``_harness.TwilioSide``):
``connected`` and ``start``, then ``media`` every 20 ms on an absolute monotonic clock, mark
echoes when its playback model reaches them, ``clear`` honoured (pending marks echoed at
once), ``stop`` at the end. The harness runs with GC frozen and a 0.5 ms GIL switch interval so
its own pauses are not charged to the server.

Options: ``--samples N`` (minimum samples per figure, default 200) and
``--resamplers fir,soxr-hq`` (RESAMPLER values; the ratio column is first / second). A
config the server refuses at start (e.g. ``fir`` before it exists) is shown as
unavailable. Runtime is about 55 s per config at 200 samples.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import gc
import json
import os
import sys
import tempfile
import time
from dataclasses import dataclass, field

import numpy as np

from _harness import (  # first: it also puts the repository on sys.path
    FRAME, FRAME_S, LIVE_IN_RATE, LIVE_OUT_RATE, TWILIO_RATE, TwilioSide, match, model_frame, onsets_in, pct,
    server_env, start_server, tone as sine,
)
from telephony.audio import ulaw_decode, ulaw_encode
from telephony.testing.emulator import LiveEmulator, Reply, Script

CHUNK_S = 0.04  # model audio per modelTurn frame, like the emulator's default
CHUNK = int(CHUNK_S * LIVE_OUT_RATE)
TONE_HZ = 1000.0
TONE_AMP = 32767 * 10 ** (-12 / 20)  # -12 dBFS peak
NOISE_RMS = 32767 * 10 ** (-60 / 20)  # line noise between bursts
LEAK_AMP = 32767 * 10 ** (-40 / 20)  # a frame with this much of a turn's tone holds its audio
TURN_FREQS = (500.0, 750.0, 1000.0, 1250.0, 1500.0, 1750.0)  # barge-in turns, in rotation
TARGETS = {"inbound": 10.0, "outbound": 10.0, "barge": 5.0}

INTERRUPTED = json.dumps({"serverContent": {"interrupted": True}})
GENERATION_COMPLETE = json.dumps({"serverContent": {"generationComplete": True}})
TURN_COMPLETE = json.dumps({"serverContent": {"turnComplete": True}})
# --------------------------------------------------------------------------- signals


def tone(n: int, freq: float, rate: int, fade: int = 0) -> np.ndarray:
    return sine(n, freq, rate, TONE_AMP, fade)


def inbound_signal(seconds: float, lead_s: float, rng: np.random.Generator) -> tuple[list[str], list[int]]:
    """The caller's 8 kHz stream as base64 media payloads, and the burst onsets (samples)."""
    n = int(seconds * TWILIO_RATE) // FRAME * FRAME
    x = rng.standard_normal(n) * NOISE_RMS
    onsets, pos, burst = [], int(lead_s * TWILIO_RATE), int(0.04 * TWILIO_RATE)
    while pos + burst < n:
        onsets.append(pos)
        x[pos : pos + burst] = tone(burst, TONE_HZ, TWILIO_RATE)  # starts at phase 0: a sharp onset
        pos += burst + int(rng.integers(320, 480))  # 40-60 ms of line noise between bursts
    ulaw = ulaw_encode(np.clip(np.round(x), -32768, 32767).astype(np.int16))
    payloads = [base64.b64encode(ulaw[i : i + FRAME]).decode("ascii") for i in range(0, n, FRAME)]
    return payloads, onsets


def outbound_turn(bursts: int, rng: np.random.Generator) -> tuple[list[str], list[int]]:
    """One long model turn of 40 ms bursts 40-60 ms apart, as modelTurn frames; and the onsets."""
    burst = int(0.04 * LIVE_OUT_RATE)
    onsets, pos = [], int(0.1 * LIVE_OUT_RATE)
    for _ in range(bursts):
        onsets.append(pos)
        pos += burst + int(rng.integers(burst, burst * 3 // 2))
    n = -(-(pos + CHUNK) // CHUNK) * CHUNK
    x = np.zeros(n)
    for o in onsets:
        x[o : o + burst] = tone(burst, TONE_HZ, LIVE_OUT_RATE)
    return [model_frame(x[i : i + CHUNK]) for i in range(0, n, CHUNK)], onsets


def barge_turn(k: int) -> list[str]:
    """Turn k of the barge-in phase: 2 or 3 chunks of its own frequency (5 ms fade in)."""
    chunks = 2 + k % 2
    x = tone(chunks * CHUNK, TURN_FREQS[k % len(TURN_FREQS)], LIVE_OUT_RATE, fade=120)
    return [model_frame(x[i : i + CHUNK]) for i in range(0, len(x), CHUNK)]


def tone_amplitudes(frames: np.ndarray, freqs: tuple[float, ...], rate: int) -> np.ndarray:
    """Amplitude of each frequency in each frame (Hann-windowed single-bin DFT)."""
    n = frames.shape[1]
    w = np.hanning(n)
    basis = np.exp(-2j * np.pi * np.outer(np.arange(n), freqs) / rate)
    return 2 * np.abs((frames * w) @ basis) / w.sum()


# --------------------------------------------------------------------------- one run


@dataclass
class Figures:
    kind: str
    error: str | None = None
    inbound: list[float] = field(default_factory=list)
    outbound: list[float] = field(default_factory=list)
    barge: list[float] = field(default_factory=list)
    leaks_ms: list[float] = field(default_factory=list)
    missed: dict[str, int] = field(default_factory=dict)
    flowing: int = 0
    in_offset_ms: float = float("nan")
    out_offset_ms: float = float("nan")
    seconds: float = 0.0


def launch_server(kind: str, emulator: LiveEmulator, tmp: str):
    """The server for one resampler config (`refused` says why it did not come up)."""
    env = server_env(
        emulator.env(), os.path.join(tmp, f"orders-{kind}.db"),
        RESAMPLER=kind,
        MODEL_WATCHDOG_SECONDS="0",  # the benchmark's model never answers the caller's bursts
    )
    return start_server(env, os.path.join(tmp, f"server-{kind}.log"))


async def run_call(port: int, emulator: LiveEmulator, samples: int, seed: int) -> Figures:
    rng = np.random.default_rng(seed)
    figures = Figures("")
    n = int(samples * 1.05) + 5  # a few spare samples for the ones the edges of phases spoil
    out_frames, out_onsets = outbound_turn(n, rng)
    barge_frames = [barge_turn(k) for k in range(n)]
    budget_s = 0.5 + len(out_frames) * CHUNK_S + 0.4 + n * 0.2 + 1.0
    payloads, in_onsets = inbound_signal(budget_s + 5, 0.3, rng)

    emulator.script = Script(greeting=[], replies=[Reply(steps=[])])
    before = len(emulator.sessions)
    twilio = TwilioSide(f"ws://127.0.0.1:{port}/media-stream", payloads)
    await twilio.open()
    tasks = [asyncio.create_task(twilio.receive_loop()), asyncio.create_task(twilio.echo_loop())]
    media = None
    try:
        # Live is ready once the bridge has asked for its greeting.
        deadline = time.monotonic() + 15
        while not (len(emulator.sessions) > before and emulator.sessions[before].texts):
            if time.monotonic() > deadline or twilio.closed.is_set():
                raise RuntimeError("the server never opened its Live session")
            await asyncio.sleep(0.005)
        session = emulator.sessions[before]
        await asyncio.sleep(0.1)
        media = asyncio.create_task(twilio.media_loop(int((budget_s + 5) / FRAME_S)))
        await asyncio.sleep(0.5)
        loop = asyncio.get_running_loop()

        async def at(deadline: float) -> None:
            delay = deadline - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)

        # Outbound: one long turn of bursts, paced at real time.
        out_start = len(twilio.media_in)
        t0 = loop.time()
        out_sent = []
        for i, frame in enumerate(out_frames):
            await at(t0 + i * CHUNK_S)
            out_sent.append(session.send(frame))
        session.send(GENERATION_COMPLETE)
        session.send(TURN_COMPLETE)
        await asyncio.sleep(0.4)
        out_end = len(twilio.media_in)

        # Barge-in: turns interrupted 0-30 ms after their last chunk went out.
        interrupts = []
        for k, frames in enumerate(barge_frames):
            t0 = loop.time()
            for i, frame in enumerate(frames):
                await at(t0 + i * CHUNK_S)
                session.send(frame)
            await at(t0 + (len(frames) - 1) * CHUNK_S + 0.01 * (k % 4))
            twilio.clear_event.clear()
            interrupts.append(session.send(INTERRUPTED))
            session.send(TURN_COMPLETE)
            try:
                await asyncio.wait_for(twilio.clear_event.wait(), 1.0)
            except TimeoutError:
                pass
            await asyncio.sleep(0.04)
        await asyncio.sleep(0.3)
        call_end = time.monotonic()
    finally:
        if media is not None:
            twilio.stopping = True
            await asyncio.gather(media, return_exceptions=True)
        await twilio.stop()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    analyse(figures, twilio, session, in_onsets, call_end,
            [f.result(timeout=5) for f in out_sent], out_onsets, out_start, out_end,
            [f.result(timeout=5) for f in interrupts])
    return figures


def analyse(fig, twilio, session, in_onsets, call_end, out_sent, out_onsets, out_start, out_end, interrupts) -> None:
    # -- inbound: caller frame sent -> realtime-input chunk arrived at Live
    x16 = np.frombuffer(bytes(session.audio_in), "<i2").astype(np.float64)
    chunks = np.array(session.audio_in_times, dtype=np.float64).reshape(-1, 3)
    ends = (chunks[:, 1] + chunks[:, 2]) // 2  # end sample (exclusive) of each chunk
    sent_at = np.array(twilio.sent_at)
    usable = [s for s in in_onsets if s // FRAME < len(sent_at) and sent_at[s // FRAME] < call_end - 0.5]
    found = match(2 * np.array(usable), onsets_in(x16, LIVE_IN_RATE), LIVE_IN_RATE)
    offsets = []
    for s, d in zip(usable, found):
        c = np.searchsorted(ends, d, side="right") if d is not None else len(ends)
        if c >= len(ends):
            fig.missed["inbound"] = fig.missed.get("inbound", 0) + 1
            continue
        fig.inbound.append((chunks[c, 0] - sent_at[s // FRAME]) * 1000)
        offsets.append((d - 2 * s) / LIVE_IN_RATE * 1000)
    fig.in_offset_ms = float(np.median(offsets)) if offsets else float("nan")

    # -- outbound: modelTurn chunk sent -> media message arrived at Twilio
    out_msgs = twilio.media_in[out_start:out_end]
    data = [base64.b64decode(p) for _, p in out_msgs]
    y = ulaw_decode(b"".join(data)).astype(np.float64)
    ends8 = np.cumsum([len(d) for d in data])
    arrivals = np.array([t for t, _ in out_msgs])
    found = match(np.array(out_onsets) / 3, onsets_in(y, TWILIO_RATE), TWILIO_RATE)
    offsets = []
    for o, d in zip(out_onsets, found):
        m = np.searchsorted(ends8, d, side="right") if d is not None else len(ends8)
        if m >= len(ends8):
            fig.missed["outbound"] = fig.missed.get("outbound", 0) + 1
            continue
        fig.outbound.append((arrivals[m] - out_sent[o // CHUNK]) * 1000)
        offsets.append((d - o / 3) / TWILIO_RATE * 1000)
    fig.out_offset_ms = float(np.median(offsets)) if offsets else float("nan")

    # -- barge-in: interrupted sent -> clear arrived; interrupted-turn audio after the clear
    barge_msgs = twilio.media_in[out_end:]
    times = np.array([t for t, _ in barge_msgs])
    # Every payload is one 160-byte frame; pad anything shorter with mu-law silence.
    frames = b"".join(base64.b64decode(p)[:FRAME].ljust(FRAME, b"\xff") for _, p in barge_msgs)
    amps = (tone_amplitudes(ulaw_decode(frames).reshape(-1, FRAME).astype(np.float64), TURN_FREQS, TWILIO_RATE)
            if frames else np.zeros((0, len(TURN_FREQS))))
    clears = np.array(twilio.clears)
    clear_of = []
    for t_int in interrupts:
        i = int(np.searchsorted(clears, t_int))
        clear_of.append(clears[i] if i < len(clears) else None)
    for k, (t_int, t_clear) in enumerate(zip(interrupts, clear_of)):
        if t_clear is None:
            fig.missed["barge"] = fig.missed.get("barge", 0) + 1
            continue
        fig.barge.append((t_clear - t_int) * 1000)
        own = amps[:, k % len(TURN_FREQS)] > LEAK_AMP
        # Until turn k + len(TURN_FREQS) - 1 is cleared: the next turn with this frequency comes after.
        later = [c for c in clear_of[k + 1 : k + len(TURN_FREQS)] if c is not None]
        horizon = later[-1] if later and k + len(TURN_FREQS) < len(interrupts) else np.inf
        fig.leaks_ms.append(float(np.sum(own & (times > t_clear) & (times <= horizon)) * FRAME_S * 1000))
        previous = clear_of[k - 1] if k and clear_of[k - 1] is not None else 0.0
        fig.flowing += bool(np.any(own & (times > previous) & (times < t_clear)))


def run_config(kind: str, emulator: LiveEmulator, samples: int, tmp: str) -> Figures:
    """One server process, one call; the process is always gone when this returns."""
    started = time.monotonic()
    server = launch_server(kind, emulator, tmp)
    try:
        if server.refused is not None:
            return Figures(kind, error=f"server refused RESAMPLER={kind}: {server.refused}")
        gc.collect()
        gc.freeze()
        gc.disable()
        try:
            figures = asyncio.run(run_call(server.port, emulator, samples, seed=20240611))
        finally:
            gc.enable()
            gc.unfreeze()
        figures.kind = kind
        if server.proc.poll() is not None:
            figures.error = f"server exited with code {server.proc.returncode} during the call"
    except Exception as exc:
        tail = server.tail()
        figures = Figures(kind, error=f"{type(exc).__name__}: {exc}" + (f" (server: {' | '.join(tail)})" if tail else ""))
    finally:
        server.stop()
    figures.seconds = time.monotonic() - started
    return figures


# --------------------------------------------------------------------------- report


def table(results: list[Figures], samples: int) -> str:
    def cell(v: float) -> str:
        return "n/a" if v != v else f"{v:.1f}"

    rows: list[tuple[str, str, list[float]]] = []
    for key, label in (("inbound", "inbound  caller -> Live"), ("outbound", "outbound Live -> caller"),
                       ("barge", "barge-in interrupted -> clear")):
        target = f"<= {TARGETS[key]:g}"
        rows.append((f"{label}  p50 ms", "", [pct(getattr(r, key), 50) if not r.error else float("nan") for r in results]))
        rows.append((f"{'':{len(label)}}  p99 ms", target, [pct(getattr(r, key), 99) if not r.error else float("nan") for r in results]))
    rows.append(("interrupted-turn audio after clear, ms", "0",
                 [sum(r.leaks_ms) if not r.error and r.barge else float("nan") for r in results]))
    rows.append(("stream offset inbound (sample-based) ms", "",
                 [r.in_offset_ms if not r.error else float("nan") for r in results]))
    rows.append(("stream offset outbound (sample-based) ms", "",
                 [r.out_offset_ms if not r.error else float("nan") for r in results]))

    names = [r.kind for r in results]
    ratio = len(results) == 2
    head = f"{'':42} {'target':>7} " + " ".join(f"{n:>10}" for n in names)
    if ratio:
        head += f" {names[0] + '/' + names[1]:>14}"
    lines = [head, "-" * len(head)]
    for label, target, values in rows:
        line = f"{label:42} {target:>7} " + " ".join(f"{cell(v):>10}" for v in values)
        if ratio:
            a, b = values
            line += f" {(f'{a / b:.2f}' if a == a and b == b and b else 'n/a'):>14}"
        lines.append(line)
    lines.append("-" * len(head))
    for r in results:
        if r.error:
            lines.append(f"{r.kind}: unavailable - {r.error}")
            continue
        missed = ", ".join(f"{k} {v}" for k, v in sorted(r.missed.items())) or "none"
        lines.append(
            f"{r.kind}: samples inbound {len(r.inbound)}, outbound {len(r.outbound)}, barge-in {len(r.barge)} "
            f"(audio of the turn reached the caller before its clear in {r.flowing}/{len(r.barge)}); "
            f"missed: {missed}; max audio after one clear {max(r.leaks_ms, default=0):.0f} ms; {r.seconds:.0f} s"
        )
        waited_in = sum(v >= FRAME_S * 1000 * 0.75 for v in r.inbound)
        waited_out = sum(v >= CHUNK_S * 1000 * 0.75 for v in r.outbound)
        lines.append(
            f"  onsets that waited for the next caller frame: {waited_in}/{len(r.inbound)}; "
            f"for the next model chunk: {waited_out}/{len(r.outbound)}"
        )
        if r.barge:
            rest = r.barge[1:] or [float("nan")]
            lines.append(f"  the call's first barge-in: {r.barge[0]:.1f} ms; the others: p50 {pct(rest, 50):.1f}, "
                         f"max {max(rest):.1f} ms")
        short = [k for k in ("inbound", "outbound", "barge") if len(getattr(r, k)) < samples]
        if short:
            lines.append(f"  WARNING: fewer than {samples} samples for {', '.join(short)}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--samples", type=int, default=200, help="minimum samples per figure (default 200)")
    parser.add_argument("--resamplers", default="fir,soxr-hq", help="comma-separated RESAMPLER values")
    args = parser.parse_args(argv)
    kinds = [k.strip() for k in args.resamplers.split(",") if k.strip()]
    if args.samples < 1 or not kinds:
        parser.error("need --samples >= 1 and at least one resampler")
    sys.setswitchinterval(0.0005)  # the emulator thread must not sit 5 ms waiting for the GIL

    print(f"relay latency, real server process on loopback, {args.samples}+ samples per figure", flush=True)
    results = []
    with tempfile.TemporaryDirectory(prefix="latency-") as tmp, LiveEmulator(raise_server_errors=False) as emulator:
        for kind in kinds:
            print(f"  running RESAMPLER={kind} ...", flush=True)
            results.append(run_config(kind, emulator, args.samples, tmp))
        emulator_errors = emulator.server_errors()
    print()
    print(table(results, args.samples))
    for error in emulator_errors:
        print(f"Live emulator error: {error}")
    print("\ninbound: caller media frame sent -> realtime-input chunk read by Live; outbound: modelTurn chunk sent ->\n"
          "media message read by the caller; barge-in: interrupted sent -> clear read. Stream offset = where the onset\n"
          "lands in the relayed stream minus where it was sent (the resampler's delay, measured in samples).")
    return 0 if not emulator_errors and all(r.error is None or r.error.startswith("server refused") for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
