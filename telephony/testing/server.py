"""Run the real app under uvicorn on a loopback port, in a background thread.

Used by `telephony simulate` and by the test fixtures: the server is the
same one production runs, reached over a real socket.
"""

from __future__ import annotations

import asyncio
import socket
import threading
import time

import uvicorn
from fastapi import FastAPI

from ..cli import UVICORN_OPTIONS


class ServerThread:
    def __init__(self, app: FastAPI, host: str = "127.0.0.1", port: int = 0, log_level: str = "warning", ws=None):
        if port == 0:
            with socket.socket() as sock:
                sock.bind((host, 0))
                port = sock.getsockname()[1]
        self.app = app
        self.host, self.port = host, port
        options = {**UVICORN_OPTIONS, **({"ws": ws} if ws else {})}
        self.config = uvicorn.Config(app, host=host, port=port, log_level=log_level, lifespan="on", **options)
        self.server = uvicorn.Server(self.config)
        self._thread = threading.Thread(target=self._run, name="telephony-server", daemon=True)
        self.error: BaseException | None = None
        self.loop: asyncio.AbstractEventLoop | None = None

    @property
    def http_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def ws_url(self) -> str:
        return f"ws://{self.host}:{self.port}/media-stream"

    def _run(self) -> None:
        try:
            asyncio.run(self._serve())
        except BaseException as exc:  # surfaced by start()
            self.error = exc

    async def _serve(self) -> None:
        self.loop = asyncio.get_running_loop()
        await self.server.serve()

    def task_names(self) -> list[str]:
        """Names of the tasks alive in the server's loop (for leak checks)."""
        assert self.loop is not None

        async def names() -> list[str]:
            return sorted(t.get_name() for t in asyncio.all_tasks() if t is not asyncio.current_task())

        return asyncio.run_coroutine_threadsafe(names(), self.loop).result(timeout=5)

    def start(self, timeout: float = 20.0) -> "ServerThread":
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self.server.started:
            if self.error is not None or not self._thread.is_alive():
                raise RuntimeError(f"server failed to start: {self.error!r}")
            if time.monotonic() > deadline:
                raise RuntimeError("server did not start in time")
            time.sleep(0.02)
        return self

    def stop(self) -> None:
        self.server.should_exit = True
        self._thread.join(timeout=15)

    def __enter__(self) -> "ServerThread":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
