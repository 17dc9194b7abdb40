"""Two agent instances behind deploy/haproxy.cfg, sharing Redis and PostgreSQL, as composed.

The instances are real `telephony serve` processes named agent-a and agent-b, each
on a loopback address of its own (127.0.0.2, 127.0.0.3) so that the proxy finds them
by name, through its DNS stand-in, exactly as compose's DNS would serve them. Tests
and benchmarks drain, kill and restart them; `standin` plays Twilio, following
`<Connect action>` from one stream to the next.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import httpx

from .proxy import HaproxyProxy
from .server import ServerProcess
from .twilio_standin import TwilioStandIn

AUTH_TOKEN = "0123456789abcdef0123456789abcdef"
ACCOUNT = "AC" + "4" * 32
PUBLIC = "https://agent.example.test"
OUR_NUMBER = "+15559870000"
API_TOKEN = "calls-api-token-for-tests"
HOSTS = {"agent-a": "127.0.0.2", "agent-b": "127.0.0.3"}


class Deployment:
    """The instances (`servers["agent-a"]`, ...), the proxy and Twilio's stand-in."""

    def __init__(self, emulator, redis_url: str, database_url: str, folder: Path, extra_env: dict | None = None,
                 down: tuple[str, ...] = ()):
        """`down`: instances not started (the proxy starts without them, their names unknown to DNS)."""
        self.folder = Path(folder)
        env = {k: v for k, v in os.environ.items()
               if k not in ("PUBLIC_URL", "TWILIO_ACCOUNT_SID", "REQUIRE_TWILIO_SIGNATURE", "STREAM_TOKEN_SECRET")}
        env.update(emulator.env())
        env.update({"GEMINI_API_KEY": "test-api-key-123", "TWILIO_AUTH_TOKEN": AUTH_TOKEN, "PUBLIC_URL": PUBLIC,
                    "REDIS_URL": redis_url, "DATABASE_URL": database_url, "CALLS_API_TOKEN": API_TOKEN,
                    "STREAM_TOKEN_TTL_SECONDS": "300", "LOG_LEVEL": "INFO", "DRAIN_TIMEOUT_SECONDS": "20",
                    "LIVE_CONNECT_TIMEOUT_SECONDS": "3", "ORDERS_DB_PATH": str(self.folder / "orders.db"),
                    **(extra_env or {})})
        self.env = env
        self.servers: dict[str, ServerProcess] = {}
        self.proxy: HaproxyProxy | None = None
        self.standin = TwilioStandIn(account_sid=ACCOUNT, auth_token=AUTH_TOKEN)
        from .ports import free_port

        self.ports = {name: free_port(host) for name, host in HOSTS.items()}
        try:
            for name, host in HOSTS.items():
                if name not in down:
                    self.servers[name] = self.start(name, host, self.ports[name])
            for server in self.servers.values():
                server.wait_healthy()
            self.proxy = HaproxyProxy({name: (HOSTS[name], port) for name, port in self.ports.items()})
            for name in down:
                del self.proxy.dns.names[name]
            self.wait_in_rotation(*self.servers)
        except BaseException:
            self.stop()
            raise

    def start(self, name: str, host: str, port: int | None = None) -> ServerProcess:
        env = {**self.env, "CALLS_DB_PATH": str(self.folder / f"calls-{name}.db")}
        return ServerProcess(env, str(self.folder / f"{name}.log"), host=host, port=port)

    def bring_up(self, name: str) -> ServerProcess:
        """Start an instance that was down, at its address (and its name resolves again)."""
        server = self.servers[name] = self.start(name, HOSTS[name], self.ports[name])
        server.wait_healthy()
        assert self.proxy is not None
        self.proxy.move(name, HOSTS[name])
        return server

    def restart(self, name: str, host: str) -> ServerProcess:
        """Start `name` again at another address, on its port (a container restarted elsewhere)."""
        old = self.servers[name]
        old.stop()
        server = self.servers[name] = self.start(name, host, old.port)
        server.wait_healthy()
        assert self.proxy is not None
        self.proxy.move(name, host)
        return server

    def sigterm(self, name: str) -> float:
        """Send SIGTERM to an instance (a deploy replacing it); returns time.monotonic() then."""
        self.servers[name].proc.send_signal(signal.SIGTERM)
        return time.monotonic()

    def instance_behind_proxy(self) -> str:
        assert self.proxy is not None
        return httpx.get(f"{self.proxy.http_url}/healthz", timeout=5).json()["instance"]

    def wait_in_rotation(self, *names: str, timeout: float = 15.0) -> None:
        """Until the proxy's health checks have every one of `names` up, for media streams
        and for everything else (each backend checks on its own)."""
        assert self.proxy is not None
        deadline = time.monotonic() + timeout
        while True:
            states = self.proxy.server_states()
            if all(states.get((backend, name)) == "UP" for name in names for backend in ("streams", "agents")):
                return
            if time.monotonic() > deadline:
                raise TimeoutError(f"the proxy has {states}, not {names} up: {self.proxy.output()[-1500:]}")
            time.sleep(0.1)

    def record(self, call_sid: str, name: str = "agent-b") -> dict | None:
        r = httpx.get(f"{self.servers[name].http_url}/calls/{call_sid}",
                      headers={"Authorization": f"Bearer {API_TOKEN}"}, timeout=10)
        return r.json() if r.status_code == 200 else None

    def stop(self) -> None:
        if self.proxy is not None:
            self.proxy.stop()
        for server in self.servers.values():
            server.stop()

    def __enter__(self) -> "Deployment":
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
