"""The deployment's own reverse proxy (deploy/nginx.conf), run on loopback for tests.

The compose file puts nginx in front of two agent instances with no session
affinity; the tests run that very configuration, with the upstream addresses
and the listening port swapped for loopback ones, so what is tested is what
is deployed.
"""

from __future__ import annotations

import re
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

from .ports import LoopbackAddress, free_port

CONFIG = Path(__file__).resolve().parents[2] / "deploy" / "nginx.conf"


class NginxMissing(RuntimeError):
    """nginx is not installed (Debian: apt-get install nginx-light)."""


def loopback_config(text: str, upstreams: list[str], port: int) -> str:
    """deploy/nginx.conf with its `server agent-…:8000` lines and `listen` port replaced."""
    servers = [m for m in re.finditer(r"^(\s*)server agent-[\w-]+:\d+(.*?);$", text, re.M)]
    if len(servers) != len(upstreams):
        raise ValueError(f"the config names {len(servers)} upstream servers, not {len(upstreams)}")
    for m, address in reversed(list(zip(servers, upstreams))):
        text = text[: m.start()] + f"{m.group(1)}server {address}{m.group(2)};" + text[m.end():]
    text, n = re.subn(r"listen \d+;", f"listen 127.0.0.1:{port};", text)
    if n != 1:
        raise ValueError("the config must have exactly one `listen` line")
    return text


class NginxProxy(LoopbackAddress):
    def __init__(self, upstreams: list[str], config: Path = CONFIG):
        binary = shutil.which("nginx") or ("/usr/sbin/nginx" if Path("/usr/sbin/nginx").exists() else None)
        if binary is None:
            raise NginxMissing("nginx is not installed (Debian: apt-get install nginx-light)")
        self.host, self.port = "127.0.0.1", free_port()
        self._dir = Path(tempfile.mkdtemp(prefix="nginx-"))
        self._dir.chmod(0o755)
        (self._dir / "nginx.conf").write_text(loopback_config(config.read_text(), upstreams, self.port))
        self._proc = subprocess.Popen(
            [binary, "-p", str(self._dir), "-c", str(self._dir / "nginx.conf"),
             "-g", f"daemon off; pid {self._dir}/nginx.pid; error_log {self._dir}/error.log;"],
            stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return
            except OSError:
                if self._proc.poll() is not None or time.monotonic() > deadline:
                    log = (self._dir / "error.log").read_text() if (self._dir / "error.log").exists() else ""
                    self.stop()
                    raise RuntimeError(f"nginx did not start: {log[-1000:]}")
                time.sleep(0.05)

    def stop(self) -> None:
        if self._proc.poll() is None:
            self._proc.terminate()
            try:
                self._proc.wait(10)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
        shutil.rmtree(self._dir, ignore_errors=True)

    def __enter__(self) -> "NginxProxy":
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
