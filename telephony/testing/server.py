"""Run the real app under uvicorn on a loopback port, in a background thread
(or in an event loop already running in one, such as the Live emulator's).

Used by `telephony simulate` and by the test fixtures: the server is the
same one production runs, reached over a real socket.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import threading
import time

import uvicorn
from fastapi import FastAPI

from ..cli import UVICORN_OPTIONS
from .ports import LoopbackAddress, free_port


class ServerThread(LoopbackAddress):
    """The app under uvicorn in a thread of its own, or, given `loop` (an event loop
    running in another thread, e.g. the Live emulator's), as one more task there."""

    def __init__(self, app: FastAPI, host: str = "127.0.0.1", port: int = 0, log_level: str = "warning", ws=None,
                 loop: asyncio.AbstractEventLoop | None = None):
        if port == 0:
            port = free_port(host)
        self.app = app
        self.host, self.port = host, port
        options = {**UVICORN_OPTIONS, **({"ws": ws} if ws else {})}
        self.config = uvicorn.Config(app, host=host, port=port, log_level=log_level, lifespan="on", **options)
        self.server = uvicorn.Server(self.config)
        self._thread = threading.Thread(target=self._run, name="telephony-server", daemon=True)
        self.error: BaseException | None = None
        self.loop: asyncio.AbstractEventLoop | None = loop
        self._hosted: concurrent.futures.Future | None = None

    def _run(self) -> None:
        try:
            asyncio.run(self._serve())
        except BaseException as exc:  # surfaced by start()
            self.error = exc

    async def _serve(self) -> None:
        self.loop = asyncio.get_running_loop()
        await self.server.serve()

    async def _serve_hosted(self) -> None:
        """uvicorn exits (SystemExit) when it cannot bind; in a loop shared with others that
        would stop the whole loop, so it becomes this server's own start-up error."""
        try:
            await self.server.serve()
        except SystemExit as exc:
            raise RuntimeError(f"uvicorn exited with {exc.code} (is port {self.port} taken?)") from None

    def task_names(self) -> list[str]:
        """Names of the tasks alive in the server's loop (for leak checks)."""
        assert self.loop is not None

        async def names() -> list[str]:
            return sorted(t.get_name() for t in asyncio.all_tasks() if t is not asyncio.current_task())

        return asyncio.run_coroutine_threadsafe(names(), self.loop).result(timeout=5)

    def finished_call(self, call_sid: str, timeout: float = 10.0) -> dict:
        """The summary of call `call_sid`, once its bridge has finished.

        The summary lands in `recent_calls` after the caller's socket has closed,
        so a test that reads `recent_calls[-1]` as soon as its call returns can
        read the previous call's. This waits, in the server's own loop, until no
        bridge of that CallSid is active, then returns the newest summary for it.
        """
        assert self.loop is not None
        state = self.app.state

        async def summary() -> dict:
            while any(bridge.call.call_sid == call_sid for bridge in list(state.active_calls)):
                await asyncio.sleep(0.01)
            for done in reversed(list(state.recent_calls)):
                if done.get("call_sid") == call_sid:
                    return done
            raise LookupError(f"no finished call {call_sid} on this server")

        return asyncio.run_coroutine_threadsafe(summary(), self.loop).result(timeout=timeout)

    def start(self, timeout: float = 20.0) -> "ServerThread":
        if self.loop is not None:
            self._hosted = asyncio.run_coroutine_threadsafe(self._serve_hosted(), self.loop)
        else:
            self._thread.start()
        deadline = time.monotonic() + timeout
        while not self.server.started:
            if self._hosted is not None and self._hosted.done():
                raise RuntimeError(f"server failed to start: {self._hosted.exception()!r}")
            if self._hosted is None and (self.error is not None or not self._thread.is_alive()):
                raise RuntimeError(f"server failed to start: {self.error!r}")
            if time.monotonic() > deadline:
                raise RuntimeError("server did not start in time")
            time.sleep(0.02)
        return self

    def stop(self) -> None:
        self.server.should_exit = True
        if self._hosted is not None:
            with contextlib.suppress(Exception):
                self._hosted.result(timeout=15)
        else:
            self._thread.join(timeout=15)

    def __enter__(self) -> "ServerThread":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


class ServerProcess(LoopbackAddress):
    """`telephony serve` as a real process on a free loopback port, its output in a file.

    For what a thread cannot show: several instances side by side, `--workers`,
    signals. `env` is the whole environment of the process.
    """

    def __init__(self, env: dict[str, str], log_path: str, *, workers: int = 1, host: str = "127.0.0.1",
                 port: int | None = None):
        import subprocess
        import sys
        from pathlib import Path

        self.port = port or free_port(host)
        self.host = host
        self.workers = workers
        self.log_path = log_path
        self._log = open(log_path, "a")
        command = [sys.executable, "-m", "telephony.cli", "serve", "--host", host, "--port", str(self.port)]
        if workers != 1:
            command += ["--workers", str(workers)]
        self.proc = subprocess.Popen(command, env=env, cwd=Path(__file__).resolve().parents[2],
                                     stdout=self._log, stderr=subprocess.STDOUT, text=True)

    def output(self) -> str:
        self._log.flush()
        with open(self.log_path) as f:
            return f.read()

    def wait_healthy(self, timeout: float = 30.0) -> "ServerProcess":
        import json
        import urllib.request

        deadline = time.monotonic() + timeout
        while True:
            try:
                with urllib.request.urlopen(f"{self.http_url}/healthz", timeout=1) as r:
                    if r.status == 200 and self._answered_by_us(json.loads(r.read()).get("instance", "")):
                        return self
            except OSError:
                pass
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"server did not start (exit {self.proc.poll()}):\n{self.output()[-2000:]}")
            time.sleep(0.05)

    def _answered_by_us(self, instance: str) -> bool:
        """Whether /healthz came from this process (its id carries the pid), not from
        another test's server that took the port between our pick and our bind. With
        several workers the answering pid is a worker's: then, that this one still runs."""
        return f":{self.proc.pid}:" in instance if self.workers == 1 else self.proc.poll() is None

    def stop(self, timeout: float = 15.0) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout)
            except Exception:
                self.proc.kill()
                self.proc.wait()
        self._log.close()
