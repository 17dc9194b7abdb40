"""What the benchmarks share: a real server process, Twilio's side of a stream, onset finding.

- `server_env()` / `start_server()`: one ``python -m telephony.cli serve`` subprocess on
  loopback, pointed at a Live emulator, with our security and limit variables removed
  from the inherited environment (a developer's shell must not change what is measured).
  `ServerProcess.stop()` always leaves the process gone.
- `TwilioSide`: a minimal Twilio end of one bidirectional Media Stream written for precise
  timestamps: ``connected`` and ``start``, ``media`` sent by `send_media()` (``media_loop()``
  paces them every 20 ms on an absolute monotonic clock), mark echoes when its playback
  model reaches them, ``clear`` honoured (pending marks echoed at once), ``stop`` at the end.
- `onsets_in()` / `match()`: find tone-burst onsets in relayed audio and pair them with the
  onsets that were sent, so relay latency is measured on the audio itself.
- /proc readers for the server's RSS, CPU time and file descriptors.

Every clock is ``time.monotonic()``, which is system-wide on Linux, so timestamps taken in
different processes of one machine compare directly.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

TWILIO_RATE, LIVE_IN_RATE, LIVE_OUT_RATE = 8_000, 16_000, 24_000
FRAME = 160  # mu-law bytes per 20 ms media message
FRAME_S = 0.02
SILENCE_PAYLOAD = base64.b64encode(b"\xff" * FRAME).decode("ascii")

ONSET_RMS = 32767 * 10 ** (-30 / 20)  # a 1 ms block louder than this holds an onset
ONSET_SAMPLE = 32767 * 10 ** (-24 / 20)  # first sample this loud marks the onset

# Variables of ours that would change the server's behaviour if inherited from the shell.
SCRUB = (
    "GOOGLE_API_KEY", "GOOGLE_GENAI_USE_VERTEXAI", "GOOGLE_GENAI_USE_ENTERPRISE", "PUBLIC_URL",
    "TWILIO_ACCOUNT_SID", "TWILIO_AUTH_TOKEN", "REQUIRE_TWILIO_SIGNATURE", "STREAM_TOKEN_SECRET",
    "MAX_CALLS_PER_CALLER", "MAX_CALLS_PER_CALLER_PER_HOUR", "MAX_CALL_SECONDS", "AGENT_GREETING",
)


# --------------------------------------------------------------------------- the server process


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def server_env(emulator_env: Mapping[str, str], orders_db: str, *, tree: str | Path = ROOT,
               **overrides: str) -> dict[str, str]:
    """The server's environment: ours minus `SCRUB`, the emulator's, LOG_LEVEL=WARNING, then `overrides`.

    `tree` is the checkout whose `telephony` the server runs (another commit's worktree,
    to measure two versions side by side in one run)."""
    env = {k: v for k, v in os.environ.items() if k not in SCRUB}
    env.update(emulator_env)
    env.update({
        "ORDERS_DB_PATH": orders_db,
        "CALLS_DB_PATH": str(Path(orders_db).with_name("calls.db")),
        "LOG_LEVEL": "WARNING",
        "PYTHONPATH": str(tree) + os.pathsep + env.get("PYTHONPATH", ""),
    })
    env.update(overrides)
    return env


@dataclass
class ServerProcess:
    proc: subprocess.Popen
    port: int
    log: object  # the binary file its stdout and stderr go to
    refused: str | None = None
    """Why it never answered /healthz (its last log line, or a timeout), or None once up."""

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/media-stream"

    def health(self, timeout: float = 5) -> dict:
        return health(self.port, timeout)

    def tail(self, lines: int = 3) -> list[str]:
        self.log.seek(0)
        return self.log.read().decode(errors="replace").strip().splitlines()[-lines:]

    def stop(self, timeout: float = 5) -> None:
        """SIGTERM (the server drains), then SIGKILL after `timeout`; closes the log."""
        stop_server(self.proc, timeout)
        self.log.close()


def start_server(env: Mapping[str, str], log_path: str, timeout: float = 30, workers: int = 1) -> ServerProcess:
    """Start ``telephony serve`` on a free loopback port and wait for /healthz.

    Never raises for a server that will not come up: `refused` says why, and the
    process is still there for `stop()`.
    """
    port = free_port()
    log = open(log_path, "w+b")
    proc = subprocess.Popen(
        [sys.executable, "-m", "telephony.cli", "serve", "--host", "127.0.0.1", "--port", str(port),
         *(["--workers", str(workers)] if workers != 1 else [])],
        cwd=env.get("PYTHONPATH", str(ROOT)).split(os.pathsep)[0] or ROOT, env=dict(env), stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
    )
    server = ServerProcess(proc, port, log)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            lines = [ln for ln in server.tail(1_000) if ln.strip()]
            server.refused = lines[-1] if lines else f"exit code {proc.returncode}"
            return server
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=1) as r:
                if r.status == 200:
                    return server
        except OSError:
            pass
        time.sleep(0.05)
    server.refused = f"did not answer /healthz within {timeout:g} s"
    return server


def stop_server(proc: subprocess.Popen, timeout: float = 5) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)


def health(port: int, timeout: float = 5) -> dict:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=timeout) as r:
        return json.loads(r.read())


# --------------------------------------------------------------------------- /proc


CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def family(pid: int) -> list[int]:
    """`pid` and its descendants (uvicorn's worker processes under `--workers`)."""
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        try:
            for task in os.listdir(f"/proc/{p}/task"):
                todo += [int(c) for c in Path(f"/proc/{p}/task/{task}/children").read_text().split()]
        except OSError:  # it just ended
            pass
    return out


def rss_kb(pid: int) -> int:
    """Resident memory of `pid` and its descendants, KB."""
    total = 0
    for p in family(pid):
        try:
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
        except OSError:
            pass
    return total


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def fd_targets(pid: int) -> set[str]:
    """What each open descriptor points at (files by path, sockets/pipes by inode)."""
    out = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            out.add(f"{fd} -> {os.readlink(f'/proc/{pid}/fd/{fd}')}")
        except OSError:
            pass
    return out


def runqueue_wait_seconds(pid: int) -> float:
    """Time the threads of a process spent runnable but waiting for a CPU (/proc/<pid>/task/*/schedstat).

    A process that waits here is slowed by the others on the machine, not by its own work.
    """
    total = 0
    for p in family(pid):
        try:
            tasks = os.listdir(f"/proc/{p}/task")
        except OSError:
            continue
        for task in tasks:
            try:
                total += int(Path(f"/proc/{p}/task/{task}/schedstat").read_text().split()[1])
            except (OSError, IndexError, ValueError):  # a thread that just ended
                pass
    return total / 1e9


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process and its descendants (all threads), from /proc/<pid>/stat."""
    total = 0
    for p in family(pid):
        try:
            stat = Path(f"/proc/{p}/stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2 :].split()  # the name may hold spaces; fields start at 3
        total += int(fields[11]) + int(fields[12])
    return total / CLOCK_TICKS


def machine_cpu_seconds() -> tuple[float, float]:
    """(busy, total) CPU seconds of the whole machine, all cores, from /proc/stat."""
    values = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = values[3] + values[4]  # idle + iowait
    total = sum(values[:8])  # guest time is already counted in user
    return (total - idle) / CLOCK_TICKS, total / CLOCK_TICKS


# --------------------------------------------------------------------------- signals


def tone(n: int, freq: float, rate: int, amp: float, fade: int = 0) -> np.ndarray:
    """`n` samples of a sine starting at phase 0 (a sharp onset), optionally faded in."""
    x = amp * np.sin(2 * np.pi * freq * np.arange(n) / rate)
    if fade:
        x[:fade] *= np.linspace(0, 1, fade, endpoint=False)
    return x


def model_frame(pcm: np.ndarray) -> str:
    """A Live ``modelTurn`` frame carrying `pcm` (24 kHz) as its audio."""
    data = base64.b64encode(np.clip(np.round(pcm), -32768, 32767).astype("<i2").tobytes()).decode("ascii")
    return json.dumps({"serverContent": {"modelTurn": {"parts": [{"inlineData": {
        "mimeType": f"audio/pcm;rate={LIVE_OUT_RATE}", "data": data}}]}}}, separators=(",", ":"))


def onsets_in(x: np.ndarray, rate: int, block_rms: float = ONSET_RMS, sample: float = ONSET_SAMPLE) -> np.ndarray:
    """Sample index of each onset: a 1 ms block louder than `block_rms` after >= 20 ms of
    quieter blocks, refined to the block's first sample louder than `sample`."""
    block = rate // 1000
    n = len(x) // block
    blocks = x[: n * block].reshape(n, block)
    loud = np.flatnonzero(np.sqrt((blocks * blocks).mean(axis=1)) > block_rms)
    starts = loud[np.diff(np.r_[-1_000, loud]) > 20]  # more than 20 blocks since the last loud one
    out = []
    for i in starts:
        over = np.flatnonzero(np.abs(blocks[i]) > sample)
        out.append(i * block + (int(over[0]) if over.size else 0))
    return np.asarray(out, dtype=np.int64)


def match_indices(expected, found, rate: int, early_ms: float = 2, late_ms: float = 60) -> np.ndarray:
    """For each expected onset (sorted `found` positions), the index in `found` of the
    first onset in [-early, +late] ms of it, or -1."""
    expected = np.asarray(expected, dtype=np.float64)
    found = np.asarray(found)
    i = np.searchsorted(found, expected - early_ms * rate / 1000)
    ok = i < len(found)
    ok[ok] = found[i[ok]] <= expected[ok] + late_ms * rate / 1000
    return np.where(ok, i, -1)


def match(expected: np.ndarray, found: np.ndarray, rate: int, early_ms: float = 2, late_ms: float = 60) -> list[int | None]:
    """For each expected onset, the first found onset in [-early, +late] ms of it."""
    return [int(found[i]) if i >= 0 else None for i in match_indices(expected, found, rate, early_ms, late_ms)]


def pct(values, q: float) -> float:
    return float(np.percentile(values, q)) if len(values) else float("nan")


# --------------------------------------------------------------------------- Twilio side


class TwilioSide:
    """Twilio's end of one bidirectional Media Stream, timestamping everything.

    `payloads` is any sequence of base64 media payloads (frame k is ``payloads[k]``;
    past its end the caller sends silence). Received media are kept as
    ``(arrival, payload)`` in `media_in`; each mark as ``(len(media_in), name)`` in
    `marks_in`, so the media a mark follows can be told apart by turn afterwards.
    """

    def __init__(self, url: str, payloads: Sequence[str], *, stream_sid: str = "MZ" + "7a" * 16,
                 call_sid: str = "CA" + "5b" * 16, account_sid: str = "AC" + "3c" * 16,
                 caller: str = "+15550001111", called: str = "+15550002222", compression: str | None = "deflate"):
        self.url = url
        self.compression = compression  # offer permessage-deflate (the websockets default) or not
        self.payloads = payloads
        self.stream_sid, self.call_sid, self.account_sid = stream_sid, call_sid, account_sid
        self.caller, self.called = caller, called
        self._media = (
            '{"event":"media","sequenceNumber":"%d","media":{"track":"inbound","chunk":"%d",'
            '"timestamp":"%d","payload":"%s"},"streamSid":"' + stream_sid + '"}'
        )
        self._mark = '{"event":"mark","sequenceNumber":"%d","streamSid":"' + stream_sid + '","mark":{"name":%s}}'
        self.silence = SILENCE_PAYLOAD
        self.sent_at: list[float] = []  # per media frame
        self.media_in: list[tuple[float, str]] = []  # (arrival, base64 payload)
        self.marks_in: list[tuple[int, str]] = []  # (media received before it, name)
        self.clears: list[float] = []
        self.clear_event = asyncio.Event()
        self.closed = asyncio.Event()
        self.seq = 0
        self.play_end = 0.0
        self.pending: dict[str, asyncio.TimerHandle] = {}
        self.echoes: asyncio.Queue[str] = asyncio.Queue()
        self.stopping = False
        self.close_code: int | None = None
        self.ws = None

    async def send(self, text: str) -> None:
        await self.ws.send(text)

    async def open(self) -> None:
        from websockets.asyncio.client import connect

        self.ws = await connect(self.url, user_agent_header="Twilio.TmeWs/1.0", max_size=2**24,
                                compression=self.compression)
        await self.send(json.dumps({"event": "connected", "protocol": "Call", "version": "1.0.0"}))
        self.seq = 1
        await self.send(json.dumps({
            "event": "start", "sequenceNumber": "1", "streamSid": self.stream_sid,
            "start": {"accountSid": self.account_sid, "streamSid": self.stream_sid, "callSid": self.call_sid,
                      "tracks": ["inbound"], "customParameters": {"From": self.caller, "To": self.called},
                      "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1}},
        }))

    async def send_media(self, k: int) -> None:
        """Send media frame `k` (0-based) now, recording when it left."""
        payload = self.payloads[k] if k < len(self.payloads) else self.silence
        self.seq += 1
        text = self._media % (self.seq, k + 1, 20 * (k + 1), payload)
        self.sent_at.append(time.monotonic())
        await self.ws.send(text)

    async def media_loop(self, limit: int) -> None:
        """One media message every 20 ms on an absolute clock, until told to stop."""
        t0 = time.monotonic()
        for k in range(limit):
            if self.stopping:
                return
            delay = t0 + k * FRAME_S - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            await self.send_media(k)

    async def echo_loop(self) -> None:
        while True:
            name = await self.echoes.get()
            self.seq += 1
            await self.ws.send(self._mark % (self.seq, json.dumps(name)))

    async def receive_loop(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            async for raw in self.ws:
                now = time.monotonic()
                msg = json.loads(raw)
                event = msg.get("event")
                if event == "media":
                    payload = msg["media"]["payload"]
                    self.media_in.append((now, payload))
                    self.play_end = max(self.play_end, now) + len(payload) * 3 / 4 / TWILIO_RATE
                elif event == "mark":
                    name = msg["mark"]["name"]
                    self.marks_in.append((len(self.media_in), name))
                    if self.play_end <= now:
                        self.echoes.put_nowait(name)
                    else:
                        self.pending[name] = loop.call_at(self.play_end, self._played, name)
                elif event == "clear":
                    self.clears.append(now)
                    self.clear_event.set()
                    self.play_end = now
                    for name, handle in list(self.pending.items()):
                        handle.cancel()
                        self.echoes.put_nowait(name)
                    self.pending.clear()
        except Exception:
            pass
        finally:
            self.close_code = self.ws.close_code
            self.closed.set()

    def _played(self, name: str) -> None:
        if self.pending.pop(name, None) is not None:
            self.echoes.put_nowait(name)

    async def stop(self, timeout: float = 5) -> None:
        """Send ``stop`` and wait up to `timeout` for the server to close; close it ourselves otherwise."""
        self.stopping = True
        self.seq += 1
        try:
            await self.ws.send(json.dumps({"event": "stop", "sequenceNumber": str(self.seq), "streamSid": self.stream_sid,
                                           "stop": {"accountSid": self.account_sid, "callSid": self.call_sid}}))
        except Exception:
            pass
        try:
            await asyncio.wait_for(self.closed.wait(), timeout)
        except TimeoutError:
            await self.ws.close()
