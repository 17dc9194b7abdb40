"""Many concurrent calls through one real server process (run: python benchmarks/load.py).

    python benchmarks/load.py [--calls 100] [--duration 20] [--find-max]

Three kinds of process, all on loopback:

- the server: one ``python -m telephony.cli serve`` subprocess (LOG_LEVEL=WARNING,
  MAX_CONCURRENT_CALLS=100000, MODEL_WATCHDOG_SECONDS=0, security variables removed);
- the callers (``--caller-procs``, default 1): Twilio's side of every call, one
  `_lean.LeanCaller` per call. One `_lean.Ticker` per process sends every call's media,
  each call at its own phase inside the 20 ms period (the moment its stream started, on
  an absolute monotonic clock), so the server sees the even spread of real traffic rather
  than N frames at once, and the generator pays one timer wake-up per due group of frames
  instead of one sleeping task per call;
- "Live": `_lean.LeanLive` in its own process, a TLS WebSocket server that the server's
  unmodified google-genai SDK connects to (same certificate and environment as
  ``LiveEmulator``), and in the same event loop the agent driver: a `Ticker` that speaks a
  1.6 s turn every 3 s on every session (``--turn-every``, ``--turn-seconds``), each
  session at its own random phase, paced in real time in 40 ms ``modelTurn`` chunks
  encoded once as complete WebSocket frames, each sent with one transport write whose
  moment is the time the chunk left "Live".

The generators are lean on purpose. With the websockets library (a connection object and
tasks per call, the ``LiveEmulator`` thread handing every send across the GIL) the
emulator and the callers took ~80% of a core at 100 calls, waited for it hundreds of ms
per second, and could not drive 200 calls from the one core they share. `_lean` speaks
just enough RFC 6455 on asyncio Protocols (uvloop when installed): a received message
costs one ``(arrival, raw bytes)`` append, JSON and base64 are decoded after the run, and
a sent one is one ``transport.write``; the callers mask with the all-zero key, so masking
is free. Together they take ~32% of a core at 100 calls and ~45% at 200: what is left is
mostly the kernel's (a system call and a wake-up per message, loopback TCP, TLS).

On a machine with 2+ CPUs the server is pinned to the first one and everything else to
the rest (``--no-pin`` to let the OS place them): the server then gets a core to itself,
as in production, and the generators cannot delay it, so its own capacity shows.

Relay latency is measured on the audio itself, as in latency.py, and cheaply: both
directions carry 40 ms 1 kHz tone bursts whose onsets fall at random offsets inside
frames and chunks (never in their last 2 ms: a causal resampler would hold such an onset
until the next frame, a 20-40 ms wait that latency.py reports and that would hide the
load here). Recording costs the generators one list append per message; the onsets are
found afterwards with numpy, by each process in what it received (after the callers
stopped, so none of it falls in the window), and paired with the
onsets sent by their position in the stream: an onset not found where it was sent is
"missing", which a lost, repeated or corrupted frame would cause.

- inbound (caller -> Live): send time of the caller frame holding an onset -> arrival at
  "Live" of the realtime-input message holding it (the moment its bytes were read). The
  caller's bursts are at -40 dBFS, under ``LiveEmulator``'s VAD threshold, so a real
  emulator would not take them for speech either (``LeanLive`` has no VAD): the agent's
  turns come only from the driver, as scheduled.
- outbound (Live -> caller): send time of the ``modelTurn`` chunk holding an onset ->
  arrival of the media message holding it (turns are told apart by the mark names).
- calls are matched to emulator sessions by an ID each caller sends first: the gaps
  between its first three bursts, in 1 ms steps (the resampler's delay cancels out).
- frames lost: caller frames sent vs audio received by the emulator, per call (less what
  the server's own resampler still holds at the end, computed with the server's code);
  agent frames sent vs media received by the caller, per turn.

Only what was sent inside the measured window counts (``--duration`` s, after every call
is open and 2 s have passed). Also printed, over that window: the server's CPU ms per
call-second and every process's CPU (/proc/<pid>/stat), the time each waited for a CPU
while runnable (/proc/<pid>/task/*/schedstat), what processes outside the benchmark used,
the server's RSS growth per call (against the idle server after one warm-up call), and
how late the generators ran against their own schedules. A busy generator delays the
timestamps it takes on receipt, so the verdict names what saturated: the server, a
generator process, the generators' CPU, or the machine.

``--find-max`` runs steps of N (``--steps``), each on a fresh server, until one fails
p99 <= 20 ms both ways with zero frames lost and no missing onset, then halves the gap to
the first failure down to 5 calls. This machine may be shared: before each step the
benchmark waits (up to 30 s) until other processes use under 10% of a core, and a failing
step during which they took >= 10% anyway runs once more. Each step measures 10 s unless ``--duration`` says
otherwise. A default run takes about 35 s, ``--find-max`` 2-6 minutes (it stops starting steps
after 330 s).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import gc
import math
import multiprocessing as mp
import os
import re
import sys
import tempfile
import time
import urllib.parse
from dataclasses import dataclass, field

import numpy as np

from _harness import (  # first: it also puts the repository on sys.path
    ROOT,
    family,
    FRAME, FRAME_S, LIVE_IN_RATE, LIVE_OUT_RATE, SILENCE_PAYLOAD, TWILIO_RATE, TwilioSide, cpu_seconds,
    machine_cpu_seconds, match_indices, model_frame, onsets_in, pct, rss_kb, runqueue_wait_seconds, server_env,
    start_server, tone,
)
from _lean import LeanCaller, LeanLive, LeanSession, Ticker, run as lean_run, server_frame
from telephony.audio import RESAMPLERS, InboundAudio, inbound_resampler, ulaw_decode, ulaw_encode

TARGET_P99_MS = 20.0
TONE_HZ = 1000.0
BURST = 320  # 40 ms at 8 kHz
CHUNK_S = 0.04  # agent audio per modelTurn frame, like the emulator's default
CHUNK = int(CHUNK_S * LIVE_OUT_RATE)
# The caller's bursts stay under the emulator's VAD (-35 dBFS RMS over 20 ms), so "Live"
# never hears speech; they are still 40 dB above the FIR's ring and mu-law's last step.
IN_AMP = 32767 * 10 ** (-40 / 20)
IN_BLOCK_RMS = 32767 * 10 ** (-52 / 20)
IN_SAMPLE = 32767 * 10 ** (-48 / 20)
OUT_AMP = 32767 * 10 ** (-12 / 20)
EDGE_MS = 2  # no onset in the last 2 ms of a frame or chunk (see clear_of_edge)

# The caller's ID: bursts at A, B = A + 60 ms + (id % 128) ms, C = B + 60 ms + (id // 128) ms.
ID_BASE, ID_GAP, ID_STEP, ID_RADIX = 800, 480, 8, 128
WARM_ID = ID_RADIX * ID_RADIX - 1  # the warm-up call's
PREAMBLE_FRAMES = 29  # the ID bursts end by 514 ms; 580 ms leaves 60 ms of quiet
BASE_FRAMES = 500  # 10 s of shared caller audio after the preamble, repeated
AGENT_VARIANTS = 8  # different burst layouts of the agent's turns

GENERATION_COMPLETE = '{"serverContent":{"generationComplete":true}}'
TURN_COMPLETE = '{"serverContent":{"turnComplete":true}}'
MARK_TURN = re.compile(r"t(\d+)-")  # call.py names marks t<turn>-<seq>

RAMP_PER_S = 50.0
SETTLE_S = 2.0  # after the last call opened, before the measured window
STOP_AFTER_S = 0.3  # between a call's last media and its stop


# --------------------------------------------------------------------------- signals


def id_onsets(ident: int) -> list[int]:
    a = ID_BASE
    b = a + ID_GAP + ID_STEP * (ident % ID_RADIX)
    return [a, b, b + ID_GAP + ID_STEP * (ident // ID_RADIX)]


def decode_id(found16: np.ndarray) -> int | None:
    """The caller's ID from the first three onsets found at 16 kHz, or None."""
    if len(found16) < 3:
        return None
    digits = []
    for gap in np.diff(found16[:3]) / 2 - ID_GAP:  # in 8 kHz samples, minus the fixed part
        digit = round(gap / ID_STEP)
        if not (0 <= digit < ID_RADIX and abs(gap - digit * ID_STEP) <= 2):
            return None
        digits.append(digit)
    return digits[0] + ID_RADIX * digits[1]


def encode_payloads(x: np.ndarray) -> list[str]:
    ulaw = ulaw_encode(np.clip(np.round(x), -32768, 32767).astype(np.int16))
    return [base64.b64encode(ulaw[i : i + FRAME]).decode("ascii") for i in range(0, len(ulaw), FRAME)]


def bursts(n: int, onsets, amp: float, rate: int, burst: int) -> np.ndarray:
    x = np.zeros(n)
    for o in onsets:
        x[o : o + burst] = tone(burst, TONE_HZ, rate, amp)  # starts at phase 0: a sharp onset
    return x


def clear_of_edge(pos: int, size: int, margin: int) -> int:
    """`pos`, or the start of the next block if it lies in the last `margin` samples of its block.

    An onset there would leave a causal resampler only with the next frame or chunk, a
    one-frame wait that latency.py reports on its own; here it would hide the load.
    """
    return pos + size - pos % size if pos % size >= size - margin else pos


def base_onsets(seed: int) -> list[int]:
    """Onsets of the shared caller audio: 150-250 ms apart, >= 60 ms of quiet at both ends."""
    rng = np.random.default_rng(seed)
    n, out, pos = BASE_FRAMES * FRAME, [], 480
    while (pos := clear_of_edge(pos, FRAME, EDGE_MS * TWILIO_RATE // 1000)) + BURST + 480 <= n:
        out.append(pos)
        pos += int(rng.integers(1200, 2000))
    return out


class CallerStream:
    """Call `ident`'s media payloads: its ID preamble, then the shared audio, repeated."""

    def __init__(self, ident: int, base: list[str]):
        self.pre = encode_payloads(bursts(PREAMBLE_FRAMES * FRAME, id_onsets(ident), IN_AMP, TWILIO_RATE, BURST))
        self.base = base

    def __len__(self) -> int:
        return 1 << 40

    def __getitem__(self, k: int) -> str:
        return self.pre[k] if k < PREAMBLE_FRAMES else self.base[(k - PREAMBLE_FRAMES) % BASE_FRAMES]


def caller_onsets(ident: int, frames: int, seed: int) -> np.ndarray:
    """Every onset (8 kHz stream sample) in the first `frames` frames of call `ident`."""
    base = np.asarray(base_onsets(seed))
    cycles = max(0, math.ceil((frames - PREAMBLE_FRAMES) / BASE_FRAMES))
    rest = (PREAMBLE_FRAMES * FRAME + np.arange(cycles)[:, None] * BASE_FRAMES * FRAME + base[None, :]).ravel()
    out = np.r_[id_onsets(ident), rest]
    return out[out + BURST <= frames * FRAME]


def agent_turns(seed: int, chunks: int) -> list[tuple[list[str], np.ndarray]]:
    """Turn variants as (modelTurn frames, onsets at 24 kHz): bursts 100-160 ms apart."""
    rng = np.random.default_rng(seed + 1)
    n, burst, out = chunks * CHUNK, int(0.04 * LIVE_OUT_RATE), []
    for _ in range(AGENT_VARIANTS):
        onsets, pos = [], int(rng.integers(240, 1200))
        while (pos := clear_of_edge(pos, CHUNK, EDGE_MS * LIVE_OUT_RATE // 1000)) + burst + 480 <= n:
            onsets.append(pos)
            pos += int(rng.integers(2400, 3840))
        x = bursts(n, onsets, OUT_AMP, LIVE_OUT_RATE, burst)
        out.append(([model_frame(x[i : i + CHUNK]) for i in range(0, n, CHUNK)], np.asarray(onsets)))
    return out


# --------------------------------------------------------------------------- the emulator process


@dataclass
class Turn:
    session: LeanSession
    variant: int
    t0: float
    chunk: int = 0
    scheduled: list[float] = field(default_factory=list)
    sent: list[float] = field(default_factory=list)  # per chunk: when it left "Live" (NaN: the session was gone)


END_OF_TURN = server_frame(GENERATION_COMPLETE) + server_frame(TURN_COMPLETE)


def emulator_main(conn, opts: dict) -> None:
    """Run the lean Live stand-in and the agent driver in one event loop; on "collect", analyse every session."""
    if opts["generator_cpus"]:
        os.sched_setaffinity(0, opts["generator_cpus"])
    turns = [[server_frame(chunk) for chunk in frames] for frames, _ in agent_turns(opts["seed"], opts["turn_chunks"])]
    result = lean_run(emulate(conn, turns, opts))
    if result is not None:
        conn.send(result)


async def emulate(conn, turns: list[list[bytes]], opts: dict) -> dict | None:
    live = await LeanLive().start()
    try:
        conn.send(("ready", live.env()))
        msg = await receive(conn)  # the loop serves the warm-up call meanwhile
        if msg[0] != "go":
            return None
        _, window_end, hard_deadline = msg
        gc.collect()
        gc.freeze()
        gc.disable()
        try:
            by_session = await drive_agent(live, conn, turns, opts, window_end, hard_deadline)
        finally:
            gc.enable()
        deadline = time.monotonic() + 10
        while not all(s.closed for s in live.sessions) and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        return analyse_sessions(live, by_session)
    finally:
        await live.stop()


async def receive(conn):
    """The next message on a multiprocessing connection, without blocking the event loop."""
    loop = asyncio.get_running_loop()
    ready = loop.create_future()
    loop.add_reader(conn.fileno(), lambda: ready.done() or ready.set_result(None))
    try:
        await ready
    finally:
        unwatch(loop, conn)
    return conn.recv()


def unwatch(loop: asyncio.AbstractEventLoop, conn) -> None:
    """Stop watching `conn`, and make it blocking again (add_reader made it non-blocking,
    and a large result would then fail to send)."""
    loop.remove_reader(conn.fileno())
    os.set_blocking(conn.fileno(), True)


async def drive_agent(live: LeanLive, conn, turns: list[list[bytes]], opts: dict, window_end: float,
                      hard_deadline: float) -> dict:
    """Speak a turn every `turn_every` s on every listening session until told to collect.

    One `Ticker` on the absolute monotonic clock: a session's turn starts 0.3-3.3 s after
    it asked for its greeting, then every `turn_every` s while it starts inside the window;
    chunk k of a turn is due at t0 + k * 40 ms, generationComplete + turnComplete after
    the last one.
    """
    loop = asyncio.get_running_loop()
    rng = np.random.default_rng(opts["seed"] + 2)
    every, chunks = opts["turn_every"], opts["turn_chunks"]
    ticker = Ticker(loop)
    by_session: dict[int, list[Turn]] = {}

    def speak(due: float, turn: Turn) -> None:
        s = turn.session
        if s.closed:  # the call is over: drop the turn
            return
        if turn.chunk < chunks:
            turn.scheduled.append(due)
            turn.sent.append(s.send(turns[turn.variant][turn.chunk]))
            turn.chunk += 1
            ticker.at(turn.t0 + turn.chunk * CHUNK_S, speak, turn)
        else:
            s.send(END_OF_TURN)
            t_next = turn.t0 + every
            if t_next <= window_end and not s.closed:
                nxt = Turn(s, (turn.variant + 1) % AGENT_VARIANTS, t_next)
                by_session[s.index].append(nxt)
                ticker.at(t_next, speak, nxt)

    def listening(s: LeanSession) -> None:  # the bridge asked for its greeting: the call is listening
        t0 = time.monotonic() + 0.3 + rng.uniform(0, every)
        turn = Turn(s, int(rng.integers(AGENT_VARIANTS)), t0)
        by_session[s.index] = [turn]
        ticker.at(t0, speak, turn)

    for s in list(live.sessions):  # those that asked before the "go" (the warm-up call)
        if s.texts:
            listening(s)
    live.on_greeting = listening
    done = loop.create_future()

    def stop() -> None:
        if not done.done():
            done.set_result(None)

    loop.add_reader(conn.fileno(), stop)
    deadline = loop.call_later(max(0.0, hard_deadline - time.monotonic()), stop)
    try:
        await done
    finally:
        unwatch(loop, conn)
        deadline.cancel()
        live.on_greeting = None
        ticker.clear()
    if conn.poll():
        conn.recv()  # the "collect" that ended the run
    return by_session


def analyse_sessions(live: LeanLive, by_session: dict) -> dict:
    """Per session: the caller's ID, inbound onsets with arrival times, the agent's turns."""
    out, lags = [], []
    for s in list(live.sessions):
        s.decode()
        x = np.frombuffer(bytes(s.audio_in), "<i2").astype(np.float64)
        found = onsets_in(x, LIVE_IN_RATE, IN_BLOCK_RMS, IN_SAMPLE)
        chunks = np.array(s.audio_in_times, dtype=np.float64).reshape(-1, 3)
        ends = (chunks[:, 1] + chunks[:, 2]) // 2  # end sample (exclusive) of each chunk
        c = np.searchsorted(ends, found, side="right")
        arrival = np.where(c < len(ends), chunks[np.minimum(c, len(ends) - 1), 0], np.nan) if len(ends) else np.full(len(found), np.nan)
        turns = []
        for turn in by_session.get(s.index, []):
            sent = np.asarray(turn.sent, dtype=np.float64)
            lags.extend((sent - np.asarray(turn.scheduled))[~np.isnan(sent)])
            turns.append((turn.variant, sent))
        out.append({"index": s.index, "id": decode_id(found), "bytes_in": len(s.audio_in),
                    "found": found, "arrival": arrival, "turns": turns})
        s.frames, s.audio_in, s.audio_in_times = [], bytearray(), []  # only the figures travel on
    return {"sessions": out, "send_lag_ms": np.asarray(lags) * 1000, "errors": live.server_errors()}


# --------------------------------------------------------------------------- the caller processes


def caller_main(conn, opts: dict) -> None:
    if opts["generator_cpus"]:
        os.sched_setaffinity(0, opts["generator_cpus"])
    base = encode_payloads(bursts(BASE_FRAMES * FRAME, base_onsets(opts["seed"]), IN_AMP, TWILIO_RATE, BURST))
    conn.send(("ready",))
    msg = conn.recv()
    if msg[0] != "go":
        return
    _, url, opens, media_end = msg
    gc.collect()
    gc.freeze()
    gc.disable()
    result = lean_run(run_callers(url, opens, media_end, base, opts["compression"]))
    gc.enable()
    conn.send(result)


async def run_callers(url: str, opens: list[tuple[int, float]], media_end: float, base: list[str],
                      compression: str | None) -> dict:
    """Open each call at its time, send every call's media from one ticker, then stop them all."""
    loop = asyncio.get_running_loop()
    where = urllib.parse.urlsplit(url)
    base_bytes = [p.encode("ascii") for p in base]
    ticker = Ticker(loop)
    sides: dict[int, LeanCaller] = {}
    errors: dict[int, str] = {}
    lags: list[float] = []

    def media(due: float, ident: int, side: LeanCaller, k: int) -> None:
        if not side.send_media(k):
            errors.setdefault(ident, "send failed: the stream is closed")
            return
        lags.append(side.sent_at[-1] - due)
        if due + FRAME_S < media_end:
            ticker.at(due + FRAME_S, media, ident, side, k + 1)

    async def open_call(ident: int, at: float) -> None:
        await asyncio.sleep(max(0.0, at - time.monotonic()))
        side = LeanCaller(CallerStream(ident, base_bytes), stream_sid=f"MZ{ident:032x}", call_sid=f"CA{ident:032x}",
                          caller=f"+1555{ident:07d}", called="+15550002222", compression=compression)
        try:
            await side.open(where.hostname, where.port, where.path)
        except Exception as exc:
            errors[ident] = f"open failed: {type(exc).__name__}: {exc}"
            return
        sides[ident] = side
        ticker.at(time.monotonic(), media, ident, side, 0)

    await asyncio.gather(*(open_call(ident, at) for ident, at in opens))
    await asyncio.sleep(max(0.0, media_end - time.monotonic()))
    while len(ticker):  # the last frames, due before media_end
        await asyncio.sleep(0.005)
    await asyncio.sleep(STOP_AFTER_S)
    closed_early = {i for i, side in sides.items() if side.closed}
    await asyncio.gather(*(side.stop(timeout=10) for side in sides.values()), return_exceptions=True)
    calls = {}
    for ident, side in sides.items():
        calls[ident] = analyse_call(side)
        calls[ident]["closed_early"] = ident in closed_early
    return {"calls": calls, "errors": errors, "send_lag_ms": np.asarray(lags) * 1000}


def analyse_call(side: LeanCaller | TwilioSide) -> dict:
    """Send times, and per agent turn: frames received and onsets with their arrival times."""
    by_turn: dict[int, list[tuple[float, str]]] = {}
    start = 0
    for end, name in side.marks_in:  # a mark follows the media of each chunk of a turn
        m = MARK_TURN.match(name)
        by_turn.setdefault(int(m.group(1)) if m else -1, []).extend(side.media_in[start:end])
        start = end
    turns: dict[int, tuple[int, np.ndarray, np.ndarray]] = {}
    for number, msgs in by_turn.items():
        if not msgs:
            continue
        data = [base64.b64decode(p) for _, p in msgs]
        ends = np.cumsum([len(d) for d in data])
        found = onsets_in(ulaw_decode(b"".join(data)).astype(np.float64), TWILIO_RATE)
        arrivals = np.array([t for t, _ in msgs])
        turns[number] = (int(ends[-1]) // FRAME, found, arrivals[np.searchsorted(ends, found, side="right")])
    return {"sent_at": np.asarray(side.sent_at), "turns": turns, "unmarked": len(side.media_in) - start,
            "close_code": side.close_code}


# --------------------------------------------------------------------------- one step


@dataclass
class Step:
    calls: int
    duration: float
    error: str | None = None
    inbound: np.ndarray = field(default_factory=lambda: np.zeros(0))
    outbound: np.ndarray = field(default_factory=lambda: np.zeros(0))
    missing_in: int = 0
    missing_out: int = 0
    frames_in: int = 0
    lost_in: int = 0
    frames_out: int = 0
    lost_out: int = 0
    connected: int = 0
    matched: int = 0
    active_mid: int = -1
    ended_early: int = 0
    cpu: dict[str, float] = field(default_factory=dict)  # % of one core over the window
    waited: dict[str, float] = field(default_factory=dict)  # ms per second runnable but without a CPU
    others_pct: float = float("nan")  # CPU of everything else on the machine, % of one core
    machine_pct: float = float("nan")  # % of all cores
    server_ms_per_call_s: float = float("nan")
    rss0_kb: int = 0
    rss1_kb: int = 0
    caller_lag_ms: np.ndarray = field(default_factory=lambda: np.zeros(0))
    emulator_lag_ms: np.ndarray = field(default_factory=lambda: np.zeros(0))
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return (self.error is None and self.matched == self.calls and self.lost_in == 0 and self.lost_out == 0
                and self.missing_in == 0 and self.missing_out == 0 and len(self.inbound) > 0 and len(self.outbound) > 0
                and pct(self.inbound, 99) <= TARGET_P99_MS and pct(self.outbound, 99) <= TARGET_P99_MS)

    @property
    def backlog(self) -> bool:
        """Relay latency is queueing up: half the audio is already late."""
        return pct(self.inbound, 50) > TARGET_P99_MS or pct(self.outbound, 50) > TARGET_P99_MS

    @property
    def rss_per_call_kb(self) -> float:
        return (self.rss1_kb - self.rss0_kb) / self.calls if self.calls else float("nan")


def inbound_holdback(kind: str, frames: int) -> np.ndarray:
    """Frames of caller audio the server's inbound resampler still holds after k frames, k = 0..frames."""
    audio = InboundAudio(inbound_resampler(kind))
    out = np.zeros(frames + 1)
    total = 0
    for k in range(1, frames + 1):
        total += len(audio.convert(SILENCE_PAYLOAD))
        out[k] = k - total / (4 * FRAME)
    return out


async def warm_up(url: str, seed: int) -> None:
    """One short call, so lazy imports and first-call allocations are not charged to the load."""
    base = encode_payloads(bursts(BASE_FRAMES * FRAME, base_onsets(seed), IN_AMP, TWILIO_RATE, BURST))
    side = TwilioSide(url, CallerStream(WARM_ID, base), stream_sid=f"MZ{WARM_ID:032x}", call_sid=f"CA{WARM_ID:032x}")
    await side.open()
    tasks = [asyncio.create_task(side.receive_loop()), asyncio.create_task(side.echo_loop())]
    await side.media_loop(40)
    await side.stop()
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


def wait_for_quiet(log, limit_s: float = 30, busy_pct: float = 10) -> None:
    """Wait (up to `limit_s`) until other processes use under `busy_pct` of a core, so that
    another user's test run does not pass for the server's limit (the figures still show it)."""
    deadline, said = time.monotonic() + limit_s, False
    while True:
        busy0, total0 = machine_cpu_seconds()
        time.sleep(1.0)
        busy1, total1 = machine_cpu_seconds()
        pct_busy = (busy1 - busy0) / (total1 - total0) * 100 * (os.cpu_count() or 1)
        if pct_busy < busy_pct or time.monotonic() > deadline:
            if said:
                log(f"    ... {'quiet' if pct_busy < busy_pct else f'still {pct_busy:.0f}% busy; going ahead'}")
            return
        if not said:
            log(f"  other processes use {pct_busy:.0f}% of a core; waiting up to {limit_s:.0f} s for quiet")
            said = True


def run_step(n: int, duration: float, opts: dict, log) -> Step:
    """One server, one emulator process, the caller processes; everything is gone on return."""
    started = time.monotonic()
    wait_for_quiet(log)
    step = Step(n, duration)
    ctx = mp.get_context("spawn")
    procs: dict[str, tuple[mp.Process, object]] = {}
    server = None
    with tempfile.TemporaryDirectory(prefix="load-") as tmp:
        try:
            names = ["emulator"] + [f"callers{k + 1}" if opts["caller_procs"] > 1 else "callers"
                                    for k in range(opts["caller_procs"])]
            for name in names:
                here, there = ctx.Pipe()
                target = emulator_main if name == "emulator" else caller_main
                proc = ctx.Process(target=target, args=(there, opts), name=f"load-{name}", daemon=True)
                proc.start()
                procs[name] = (proc, here)
            env = expect(procs["emulator"], 60, "the emulator did not start")[1]
            extra = {"REDIS_URL": opts["redis_url"]} if opts.get("redis_url") else {}
            extra.update(opts.get("server_env", {}))
            server = start_server(server_env(
                env, os.path.join(tmp, "orders.db"), tree=opts["server_tree"], RESAMPLER=opts["resampler"],
                MAX_CONCURRENT_CALLS="100000", MODEL_WATCHDOG_SECONDS="0", DRAIN_TIMEOUT_SECONDS="1", **extra,
            ), os.path.join(tmp, "server.log"), workers=opts.get("workers", 1))
            if server.refused is not None:
                raise RuntimeError(f"the server did not start: {server.refused}")
            if opts["server_cpus"]:
                time.sleep(0.5 if opts.get("workers", 1) > 1 else 0)  # the workers are up once /healthz answers
                for pid in family(server.pid):
                    pin(pid, opts["server_cpus"])
            asyncio.run(asyncio.wait_for(warm_up(server.ws_url, opts["seed"]), 20))
            settle_deadline = time.monotonic() + 10
            while server.health()["active_calls"] and time.monotonic() < settle_deadline:
                time.sleep(0.05)
            step.rss0_kb = rss_kb(server.pid)
            callers = [name for name in names if name != "emulator"]
            for name in callers:
                expect(procs[name], 60, f"{name} did not start")

            t_open = time.monotonic() + 0.3
            ramp = n / opts["ramp"]
            t_ms = t_open + ramp + SETTLE_S
            t_me = t_ms + duration
            media_end = t_me + opts["turn_chunks"] * CHUNK_S + 0.5  # the last turn started in the window ends
            procs["emulator"][1].send(("go", t_me, media_end + 120))
            for k, name in enumerate(callers):
                opens = [(i, t_open + i / opts["ramp"]) for i in range(k, n, len(callers))]
                procs[name][1].send(("go", server.ws_url, opens, media_end))
            log(f"  {n} calls: opening over {ramp:.1f} s, measuring {duration:g} s ...")

            pids = {"server": server.pid, **{name: procs[name][0].pid for name in names}, "main": os.getpid()}
            if opts.get("redis_pid"):
                pids["redis"] = opts["redis_pid"]
            sleep_until(t_ms)
            cpu0, machine0 = {k: cpu_seconds(p) for k, p in pids.items()}, machine_cpu_seconds()
            wait0, began = {k: runqueue_wait_seconds(p) for k, p in pids.items()}, time.monotonic()
            sleep_until(t_ms + duration / 2)
            try:
                step.active_mid = server.health(timeout=max(1.0, t_me - time.monotonic()))["active_calls"]
            except OSError:
                step.notes.append("/healthz did not answer before the end of the window")
            sleep_until(t_me)
            cpu1, machine1 = {k: cpu_seconds(p) for k, p in pids.items()}, machine_cpu_seconds()
            wait1, span = {k: runqueue_wait_seconds(p) for k, p in pids.items()}, time.monotonic() - began
            step.rss1_kb = rss_kb(server.pid)
            cpu = {k: (cpu1[k] - cpu0[k]) / span * 100 for k in pids}
            step.machine_pct = (machine1[0] - machine0[0]) / (machine1[1] - machine0[1]) * 100 * os.cpu_count()
            step.others_pct = max(0.0, step.machine_pct - sum(cpu.values()))
            del cpu["main"]  # it only sleeps and samples
            step.cpu = cpu
            step.waited = {k: (wait1[k] - wait0[k]) / span * 1000 for k in cpu}
            step.server_ms_per_call_s = (cpu1["server"] - cpu0["server"]) * 1000 / (n * span)

            caller_results = [expect(procs[name], media_end - time.monotonic() + 60, f"{name} did not finish")
                              for name in callers]
            procs["emulator"][1].send(("collect",))
            emulated = expect(procs["emulator"], 120, "the emulator did not report")
            analyse(step, caller_results, emulated, opts, t_ms, t_me)
            if server.proc.poll() is not None:
                step.error = f"the server exited with code {server.proc.returncode}: {' | '.join(server.tail())}"
        except Exception as exc:
            step.error = f"{type(exc).__name__}: {exc}"
            if server is not None and server.refused is None and server.proc.poll() is not None:
                step.error += f" (the server exited: {' | '.join(server.tail()) or 'no log'})"
        finally:
            if server is not None:
                server.stop()
            for proc, conn in procs.values():
                proc.join(timeout=0 if step.error else 20)  # on an error they may wait for a "go" forever
                if proc.is_alive():
                    proc.terminate()
                    proc.join(timeout=5)
                if proc.is_alive():
                    proc.kill()
                    proc.join(timeout=5)
                conn.close()
    step.seconds = time.monotonic() - started
    return step


def pin(pid: int, cpus: set[int]) -> None:
    """Every thread of `pid` onto `cpus` (sched_setaffinity(pid) alone moves one thread)."""
    for task in os.listdir(f"/proc/{pid}/task"):
        try:
            os.sched_setaffinity(int(task), cpus)
        except OSError:  # a thread that just ended
            pass


def expect(entry, timeout: float, what: str):
    """The next message from a child process; raises at once if it died, or after `timeout`."""
    proc, conn = entry
    deadline = time.monotonic() + max(0.0, timeout)
    while not conn.poll(0.1):
        if not proc.is_alive() and not conn.poll():
            raise RuntimeError(f"{what}: {proc.name} exited with code {proc.exitcode}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what} within {timeout:.0f} s")
    try:
        return conn.recv()
    except EOFError:
        raise RuntimeError(f"{what}: {proc.name} exited with code {proc.exitcode}") from None


def sleep_until(t: float) -> None:
    delay = t - time.monotonic()
    if delay > 0:
        time.sleep(delay)


def analyse(step: Step, caller_results: list[dict], emulated: dict, opts: dict, t_ms: float, t_me: float) -> None:
    calls = {i: c for r in caller_results for i, c in r["calls"].items()}
    errors = {i: e for r in caller_results for i, e in r["errors"].items()}
    step.caller_lag_ms = np.concatenate([r["send_lag_ms"] for r in caller_results])
    step.emulator_lag_ms = emulated["send_lag_ms"]
    step.connected = len(calls)
    step.ended_early = sum(c["closed_early"] for c in calls.values())
    codes = sorted({c["close_code"] for c in calls.values()} - {1000})
    if codes:
        step.notes.append(f"streams closed with codes other than 1000: {codes}")
    if errors:
        step.notes.append(f"{len(errors)} call(s) failed on the caller side, e.g. {next(iter(errors.values()))}")
    for error in emulated["errors"][:3]:
        step.notes.append(f"Live emulator error: {error}")
    sessions = {}
    for s in emulated["sessions"]:
        if s["id"] is None:
            step.notes.append(f"emulator session #{s['index']} carried no readable caller ID")
        elif s["id"] != WARM_ID:
            sessions.setdefault(s["id"], []).append(s)
    longest = max((len(c["sent_at"]) for c in calls.values()), default=0)
    holdback = inbound_holdback(opts["resampler"], longest)
    variants = [onsets for _, onsets in agent_turns(opts["seed"], opts["turn_chunks"])]
    inbound, outbound = [], []
    for ident, call in sorted(calls.items()):
        matches = sessions.get(ident, [])
        if len(matches) != 1:
            step.notes.append(f"call {ident}: {len(matches)} emulator sessions")
            continue
        step.matched += 1
        s = matches[0]
        sent_at = call["sent_at"]
        # -- inbound: frames sent vs received; onsets sent in the window -> when Live read them
        step.frames_in += len(sent_at)
        step.lost_in += max(0, round(len(sent_at) - s["bytes_in"] / (4 * FRAME) - holdback[len(sent_at)]))
        expected = caller_onsets(ident, len(sent_at), opts["seed"])
        at = sent_at[expected // FRAME]
        expected = expected[(at >= t_ms) & (at < t_me)]
        hit = match_indices(2 * expected, s["found"], LIVE_IN_RATE)
        arrival = np.where(hit >= 0, s["arrival"][np.maximum(hit, 0)] if len(s["found"]) else np.nan, np.nan)
        step.missing_in += int(np.sum(np.isnan(arrival)))
        good = ~np.isnan(arrival)
        inbound.append((arrival[good] - sent_at[expected[good] // FRAME]) * 1000)
        # -- outbound: per turn, chunk frames sent vs media received; onsets sent in the window
        for number, (variant, chunk_sent) in enumerate(s["turns"]):
            frames, found, arrivals = call["turns"].get(number + 1, (0, np.zeros(0, np.int64), np.zeros(0)))
            chunks_ok = int(np.sum(~np.isnan(chunk_sent)))
            step.frames_out += 2 * chunks_ok  # 40 ms chunks, 20 ms frames
            step.lost_out += max(0, 2 * chunks_ok - frames)
            onsets = variants[variant]
            onsets = onsets[onsets // CHUNK < len(chunk_sent)]
            t_sent = chunk_sent[onsets // CHUNK]
            keep = (t_sent >= t_ms) & (t_sent < t_me)
            onsets, t_sent = onsets[keep], t_sent[keep]
            hit = match_indices(onsets / 3, found, TWILIO_RATE)
            step.missing_out += int(np.sum(hit < 0))
            outbound.append((arrivals[hit[hit >= 0]] - t_sent[hit >= 0]) * 1000)
        if call["unmarked"]:
            step.notes.append(f"call {ident}: {call['unmarked']} media message(s) after the last mark")
    step.inbound = np.concatenate(inbound) if inbound else np.zeros(0)
    step.outbound = np.concatenate(outbound) if outbound else np.zeros(0)
    if len(step.notes) > 8:
        step.notes[8:] = [f"... and {len(step.notes) - 8} more notes"]


# --------------------------------------------------------------------------- report


def verdict(step: Step, opts: dict) -> str:
    """Which CPU ran out first, so the server's capacity can be told apart from the generator's."""
    cores = os.cpu_count() or 1
    server = step.cpu.get("server", float("nan"))
    generators = {k: v for k, v in step.cpu.items() if k != "server"}
    gen_cpus = len(opts["generator_cpus"])
    full = []
    if server >= 90:
        full.append(f"the server process ({server:.0f}% of one core, its ceiling: it runs one event loop)")
    full += [f"the {k} process ({v:.0f}% of one core)" for k, v in generators.items() if v >= 90]
    if gen_cpus and sum(generators.values()) >= 90 * gen_cpus:
        full.append(f"the generators' CPU ({sum(generators.values()):.0f}% of {gen_cpus * 100}%)")
    if not gen_cpus and step.machine_pct >= 90 * cores:
        full.append(f"the machine ({step.machine_pct:.0f}% of {cores * 100}%)")
    where = ("saturated: " + "; ".join(full)) if full else "nothing saturated"
    waited = step.waited.get("server", float("nan"))
    if waited >= 50:
        where += (f"; the server waited {waited:.0f} ms per second for a CPU held by other processes, which "
                  "delays it beyond its own work")
    slow = {k: v for k, v in step.waited.items() if k != "server" and v >= 100}
    if slow:
        where += ("; generator processes waited for a CPU (" + ", ".join(f"{k} {v:.0f} ms/s" for k, v in slow.items())
                  + "), which also delays the arrival times they record, so part of the latency is theirs")
    if step.others_pct >= 10:
        where += f"; processes outside this benchmark used {step.others_pct:.0f}% of a core"
    if server >= 90 and step.backlog:
        return f"{where}. The server cannot keep up with {step.calls} calls: latency grows for as long as they last"
    capacity = 1000 / step.server_ms_per_call_s if step.server_ms_per_call_s > 0 else float("nan")
    return (f"{where}. At {cell(step.server_ms_per_call_s, '{:.1f}')} CPU ms per call-second the server would fill "
            f"one core at ~{cell(capacity, '{:.0f}')} calls (latency gives out before that)")


def cell(v: float, fmt: str = "{:.1f}") -> str:
    return "n/a" if v != v else fmt.format(v)


def report(step: Step, opts: dict) -> str:
    lines = []
    if step.error:
        lines.append(f"FAILED: {step.error}")
    lines.append(f"{'':26}{'p50 ms':>9}{'p99 ms':>9}{'max ms':>9}{'samples':>9}   target p99 <= {TARGET_P99_MS:g} ms")
    for label, values in (("inbound  caller -> Live", step.inbound), ("outbound Live -> caller", step.outbound)):
        lines.append(f"{label:26}{cell(pct(values, 50)):>9}{cell(pct(values, 99)):>9}"
                     f"{cell(float(np.max(values)) if len(values) else float('nan')):>9}{len(values):>9}")
    lines.append(f"frames lost: caller -> Live {step.lost_in} of {step.frames_in}, Live -> caller {step.lost_out} of "
                 f"{step.frames_out}; onsets missing (audio not where it was sent): {step.missing_in} inbound, "
                 f"{step.missing_out} outbound")
    lines.append(f"calls: {step.connected}/{step.calls} connected, {step.matched} matched to their Live session, "
                 f"{step.active_mid} active at the server mid-window, {step.ended_early} ended before the caller hung up")
    server = step.cpu.get("server", float("nan"))
    busy = ", behind: the work it got through, less than offered" if server >= 90 and step.backlog else ""
    lines.append(f"server: {cell(step.server_ms_per_call_s, '{:.2f}')} CPU ms per call-second ({server:.0f}% of one core"
                 f"{busy}); "
                 f"RSS {step.rss0_kb / 1024:.0f} MB idle -> {step.rss1_kb / 1024:.0f} MB with {step.calls} calls "
                 f"= {cell(step.rss_per_call_kb, '{:.0f}')} KB per call")
    procs = ", ".join(f"{k} {v:.0f}% (waited {step.waited.get(k, float('nan')):.0f} ms/s)" for k, v in step.cpu.items())
    lines.append(f"CPU over the window, % of one core (and time runnable without a CPU): {procs}; "
                 f"everything else {step.others_pct:.0f}%; machine {step.machine_pct:.0f}% of {(os.cpu_count() or 1) * 100}%")
    lines.append(f"generator lateness vs its schedule: caller media p50 {cell(pct(step.caller_lag_ms, 50), '{:.2f}')} / "
                 f"p99 {cell(pct(step.caller_lag_ms, 99))} ms; agent chunks p50 {cell(pct(step.emulator_lag_ms, 50), '{:.2f}')} / "
                 f"p99 {cell(pct(step.emulator_lag_ms, 99))} ms")
    if step.error is None:
        lines.append(f"bottleneck: {verdict(step, opts)}")
    lines.extend(f"note: {n}" for n in step.notes)
    lines.append(f"verdict: {'PASS' if step.ok else 'FAIL'} (p99 <= {TARGET_P99_MS:g} ms both ways, zero frames lost, "
                 f"every onset where it was sent); step took {step.seconds:.0f} s")
    return "\n".join(lines)


def table_row(step: Step) -> str:
    c = step.cpu
    callers = sum(v for k, v in c.items() if k.startswith("callers"))
    return (f"{step.calls:>6} {cell(pct(step.inbound, 50)):>7} {cell(pct(step.inbound, 99)):>7} "
            f"{cell(pct(step.outbound, 50)):>7} {cell(pct(step.outbound, 99)):>7} {step.lost_in + step.lost_out:>6} "
            f"{step.missing_in + step.missing_out:>6} {cell(step.server_ms_per_call_s, '{:.2f}'):>8} "
            f"{c.get('server', float('nan')):>7.0f} {step.waited.get('server', float('nan')):>6.0f} "
            f"{c.get('emulator', float('nan')):>6.0f} {callers:>6.0f} {step.others_pct:>6.0f} {step.machine_pct:>6.0f} "
            f"{cell(step.rss_per_call_kb, '{:.0f}'):>7} {'PASS' if step.ok else 'FAIL':>5}")


TABLE_HEAD = (f"{'calls':>6} {'in p50':>7} {'in p99':>7} {'out p50':>7} {'out p99':>7} {'lost':>6} {'miss':>6} "
              f"{'ms/c-s':>8} {'server%':>7} {'wait':>6} {'emul%':>6} {'call%':>6} {'other%':>6} {'mach%':>6} "
              f"{'KB/call':>7} {'':>5}")


def find_max(opts: dict, duration: float, steps: list[int], budget_s: float, log,
             results: list[Step] | None = None) -> int:
    """Run steps up to the first failure, then halve the gap to it while time allows; return the best N."""
    began = time.monotonic()
    results = [] if results is None else results
    best, first_fail = 0, None

    def run(n: int) -> Step:
        step = run_step(n, duration, opts, log)
        summary(step)
        if not step.ok and step.error is None and step.others_pct >= 10 and affordable(n):
            log(f"    processes outside this benchmark took {step.others_pct:.0f}% of a core during that step: once more")
            step = run_step(n, duration, opts, log)
            summary(step)
        results.append(step)
        return step

    def summary(step: Step) -> None:
        log(f"    {'PASS' if step.ok else 'FAIL'}: p99 in {cell(pct(step.inbound, 99))} / out "
            f"{cell(pct(step.outbound, 99))} ms, lost {step.lost_in + step.lost_out}, CPU "
            + ", ".join(f"{k} {v:.0f}%" for k, v in step.cpu.items())
            + f", others {step.others_pct:.0f}%" + (f"; {step.error}" if step.error else ""))

    def affordable(n: int) -> bool:
        if not results:
            return True
        last = results[-1]
        guess = last.seconds + (n - last.calls) / opts["ramp"] + 5
        return time.monotonic() - began + guess <= budget_s

    for n in steps:
        if not affordable(n):
            log(f"  (stopping: a step of {n} calls would overrun the {budget_s:.0f} s budget)")
            break
        step = run(n)
        if step.ok:
            best = n
        else:
            first_fail = step
            break
    while first_fail is not None and first_fail.calls - best > 5:  # halve the gap, to 5-call steps
        mid = (best + first_fail.calls) // 2 // 5 * 5
        if mid <= best or not affordable(mid):
            break
        step = run(mid)
        if step.ok:
            best = mid
        else:
            first_fail = step
    log("")
    log("in/out = relay latency ms; lost = frames lost both ways; miss = onsets not where they were sent;")
    log("ms/c-s = server CPU ms per call-second; server%, emul%, call%, other% = CPU of the server, the emulator, the")
    log("callers and everything else (% of one core); wait = ms per second the server was runnable without a CPU;")
    log(f"mach% = the whole machine ({os.cpu_count()} cores = {os.cpu_count() * 100}%)")
    log(TABLE_HEAD)
    for step in sorted(results, key=lambda s: s.calls):
        log(table_row(step))
    for title, step in (("largest passing step", max((s for s in results if s.ok), key=lambda s: s.calls, default=None)),
                        ("first failing step", first_fail)):
        if step is not None:
            log(f"\n{title}: {step.calls} calls")
            log(report(step, opts))
    log("")
    return best


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=100, help="concurrent calls (default 100)")
    parser.add_argument("--duration", type=float, default=None,
                        help="measured seconds (default 20; 10 per step with --find-max)")
    parser.add_argument("--find-max", action="store_true", help="step N up to the first failure")
    parser.add_argument("--steps", default="25,50,75,100,150,200,300,400,500", help="N for --find-max")
    parser.add_argument("--ramp", type=float, default=RAMP_PER_S, help="calls opened per second (default 50)")
    parser.add_argument("--caller-procs", type=int, default=1, help="processes for the callers (default 1)")
    parser.add_argument("--turn-every", type=float, default=3.0, help="seconds between agent turns per call")
    parser.add_argument("--turn-seconds", type=float, default=1.6, help="length of an agent turn")
    parser.add_argument("--resampler", default=RESAMPLERS[0], choices=RESAMPLERS, help="RESAMPLER for the server")
    parser.add_argument("--no-pin", action="store_true",
                        help="let the OS place the processes (default: the server gets CPU 0 to itself, the "
                             "emulator and callers share the others)")
    parser.add_argument("--no-deflate", action="store_true",
                        help="callers do not offer permessage-deflate (by default they offer it, as the websockets "
                             "client does; the server declines it, and a caller fails its call if it is accepted)")
    parser.add_argument("--seed", type=int, default=20240611)
    parser.add_argument("--workers", type=int, default=1,
                        help="server worker processes (`telephony serve --workers`); above 1 they share a redis-server "
                             "this benchmark starts, whose CPU is shown as redis%%")
    parser.add_argument("--redis", action="store_true", help="share state through Redis even with one worker")
    parser.add_argument("--server-env", action="append", default=[], metavar="NAME=VALUE",
                        help="a setting for the server (repeatable), e.g. RECORD_AUDIO=true")
    parser.add_argument("--compare", metavar="TREE", default=None,
                        help="another checkout (e.g. `git worktree add /tmp/old <commit>`): --find-max runs on both, "
                             "alternating tree by tree, and prints them side by side")
    args = parser.parse_args(argv)
    if any("=" not in item for item in args.server_env):
        parser.error("--server-env takes NAME=VALUE")
    duration = args.duration if args.duration is not None else (10.0 if args.find_max else 20.0)
    turn_chunks = round(args.turn_seconds / CHUNK_S)
    steps = sorted({int(s) for s in args.steps.split(",") if s.strip()})
    if not (1 <= args.calls < WARM_ID and 1 <= duration <= 600 and args.ramp > 0 and 1 <= args.caller_procs <= 8
            and 2 <= turn_chunks and args.turn_every >= args.turn_seconds + 0.5 and steps
            and 1 <= steps[0] and steps[-1] < WARM_ID):
        parser.error("need 1 <= calls, steps < 16383, 1 <= duration <= 600, ramp > 0, 1-8 caller processes, "
                     "turn-every >= turn-seconds + 0.5")
    opts = {"seed": args.seed, "resampler": args.resampler, "ramp": args.ramp, "caller_procs": args.caller_procs,
            "turn_every": args.turn_every, "turn_chunks": turn_chunks,
            "compression": None if args.no_deflate else "deflate", "server_cpus": set(), "generator_cpus": set(),
            "server_tree": str(ROOT), "workers": args.workers, "redis_url": None, "redis_pid": None,
            "server_env": dict(item.split("=", 1) for item in args.server_env)}
    cpus = sorted(os.sched_getaffinity(0))
    if not args.no_pin and len(cpus) >= 2:
        opts["server_cpus"], opts["generator_cpus"] = {cpus[0]}, set(cpus[1:])
        os.sched_setaffinity(0, opts["generator_cpus"])  # this process only sleeps and samples
    redis_server = None
    if args.workers > 1 or args.redis:
        from telephony.testing.redis_server import RedisServer

        redis_server = RedisServer().start()
        opts["redis_url"], opts["redis_pid"] = redis_server.url, redis_server.pid
        if opts["generator_cpus"]:
            pin(redis_server.pid, opts["generator_cpus"])

    try:
        return _run(args, opts, duration, steps, turn_chunks)
    finally:
        if redis_server is not None:
            redis_server.close()


def _run(args, opts: dict, duration: float, steps: list[int], turn_chunks: int) -> int:
    def log(text: str = "", end: str = "\n") -> None:
        print(text, end=end, flush=True)

    placement = (f"the server pinned to CPU {min(opts['server_cpus'])}, the Live emulator (1 process) and the callers "
                 f"({args.caller_procs} process(es)) on CPU {','.join(map(str, sorted(opts['generator_cpus'])))}"
                 if opts["server_cpus"] else
                 f"{len(os.sched_getaffinity(0))} CPUs shared by the server, the Live emulator (1 process) and the callers "
                 f"({args.caller_procs} process(es))")
    served = (f"`telephony serve --workers {args.workers}` (REDIS_URL: a redis-server with the generators)"
              if args.workers > 1 else "one `telephony serve` process" + (" with REDIS_URL" if args.redis else ""))
    log(f"load: {served} (RESAMPLER={args.resampler}) on loopback; {placement}; "
        f"the agent speaks {turn_chunks * CHUNK_S:g} s every {args.turn_every:g} s on every call")
    if args.find_max and args.compare:
        rows = []
        for label, tree in (("this tree", str(ROOT)), (f"--compare {args.compare}", args.compare)):
            log(f"\n=== {label} ===")
            results: list[Step] = []
            best = find_max({**opts, "server_tree": tree}, duration, steps, budget_s=330, log=log, results=results)
            rows.append((label, best, results))
        log("side by side: most calls passing, and server CPU ms per call-second at each step both ran")
        common = sorted(set.intersection(*({s.calls for s in r} for _, _, r in rows)))
        log(f"{'':34}{'max calls':>10}" + "".join(f"{f'ms/c-s @{n}':>13}" for n in common))
        for label, best, results in rows:
            by_n = {s.calls: s for s in results}
            log(f"{label:34}{best:>10}" + "".join(f"{by_n[n].server_ms_per_call_s:>13.2f}" for n in common))
        return 0
    if args.find_max:
        best = find_max(opts, duration, steps, budget_s=330, log=log)
        log(f"maximum concurrent calls with p99 relay latency <= {TARGET_P99_MS:g} ms both ways and zero frames lost: "
            f"{best if best else f'none of the steps (smallest tried: {steps[0]})'}")
        return 0
    step = run_step(args.calls, duration, opts, log)
    log("")
    log(report(step, opts))
    return 0 if step.error is None else 1


if __name__ == "__main__":
    sys.exit(main())
