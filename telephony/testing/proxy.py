"""The deployment's own reverse proxy (deploy/haproxy.cfg), run on loopback for tests.

The compose file puts haproxy in front of two agent instances with no session
affinity; the tests run that very configuration, with the listening port, the
instances' ports and the DNS server swapped for loopback ones, so what is tested
is what is deployed. The instances keep their names (agent-a, agent-b): a small
DNS stand-in (`NameServer`) answers for them, so a test can move an instance to
another loopback address, or make its name vanish, as a container restart does.
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

HAPROXY_CONFIG = Path(__file__).resolve().parents[2] / "deploy" / "haproxy.cfg"


# --------------------------------------------------------------------------- haproxy and its DNS


class HaproxyMissing(RuntimeError):
    """haproxy is not installed (Debian: apt-get install haproxy)."""


class NameServer:
    """A DNS server on loopback UDP answering A queries from `names` (name -> IPv4),
    which a test may change at any time; other names get NXDOMAIN."""

    def __init__(self, names: dict[str, str]):
        import threading

        self.names = dict(names)
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self._sock.bind(("127.0.0.1", 0))
        self.port = self._sock.getsockname()[1]
        self._running = True
        self._thread = threading.Thread(target=self._serve, name="dns-standin", daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        import struct

        while self._running:
            try:
                query, peer = self._sock.recvfrom(512)
            except OSError:
                return
            if len(query) < 12:
                continue
            ident, _flags, qdcount = struct.unpack("!HHH", query[:6])
            labels, i = [], 12
            while i < len(query) and query[i]:
                labels.append(query[i + 1:i + 1 + query[i]].decode("ascii", "replace"))
                i += 1 + query[i]
            question = query[12:i + 5]
            qtype = struct.unpack("!H", query[i + 1:i + 3])[0] if i + 3 <= len(query) else 0
            name = ".".join(labels).lower().rstrip(".")
            address = self.names.get(name) or self.names.get(name.split(".")[0])
            if address is None:
                header = struct.pack("!HHHHHH", ident, 0x8183, 1, 0, 0, 0)  # NXDOMAIN
                self._sock.sendto(header + question, peer)
                continue
            answers = b""
            if qtype == 1:
                answers = b"\xc0\x0c" + struct.pack("!HHIH", 1, 1, 1, 4) + socket.inet_aton(address)
            header = struct.pack("!HHHHHH", ident, 0x8180, 1, 1 if answers else 0, 0, 0)
            self._sock.sendto(header + question + answers, peer)

    def stop(self) -> None:
        self._running = False
        self._sock.close()


def haproxy_loopback_config(text: str, upstreams: dict[str, int], port: int, dns_port: int,
                            stats_socket: str | None = None) -> str:
    """deploy/haproxy.cfg with its `bind`, the instances' ports and the resolver moved to loopback
    (and a stats socket, for tests to read what the health checks decided)."""
    for name, upstream_port in upstreams.items():
        text, n = re.subn(rf"^(\s*server {name} {name}):\d+", rf"\g<1>:{upstream_port}", text, flags=re.M)
        if n < 1:
            raise ValueError(f"the config must name server {name}")
    text, n = re.subn(r"^(\s*)bind :\d+", rf"\g<1>bind 127.0.0.1:{port}", text, flags=re.M)
    if n != 1:
        raise ValueError("the config must have exactly one `bind` line")
    text, n = re.subn(r"^(\s*)parse-resolv-conf$", rf"\g<1>nameserver standin 127.0.0.1:{dns_port}", text, flags=re.M)
    if n != 1:
        raise ValueError("the config must use parse-resolv-conf once")
    text = text.replace("log stdout format raw local0 warning", "log stderr format raw local0 info")
    if stats_socket:
        text = text.replace("global\n", f"global\n    stats socket {stats_socket} mode 600 level user\n", 1)
    return text


class HaproxyProxy(LoopbackAddress):
    """deploy/haproxy.cfg in front of `upstreams` ({"agent-a": (host, port), ...}), on loopback."""

    def __init__(self, upstreams: dict[str, tuple[str, int]], config: Path = HAPROXY_CONFIG):
        binary = shutil.which("haproxy") or ("/usr/sbin/haproxy" if Path("/usr/sbin/haproxy").exists() else None)
        if binary is None:
            raise HaproxyMissing("haproxy is not installed (Debian: apt-get install haproxy)")
        self.dns = NameServer({name: host for name, (host, _) in upstreams.items()})
        self.host = "127.0.0.1"
        self._dir = Path(tempfile.mkdtemp(prefix="haproxy-"))
        self.stats_socket = str(self._dir / "stats.sock")
        self.log_path = self._dir / "haproxy.log"
        self._log = open(self.log_path, "w")
        # A free port can be taken by another test process before haproxy binds it; then haproxy
        # exits while the port still answers (the other process), so its stats socket is the proof
        # that this haproxy is the one listening. A lost race is retried on another port.
        for attempt in range(3):
            self.port = free_port()
            text = haproxy_loopback_config(config.read_text(), {n: p for n, (_, p) in upstreams.items()}, self.port,
                                           self.dns.port, self.stats_socket)
            (self._dir / "haproxy.cfg").write_text(text)
            Path(self.stats_socket).unlink(missing_ok=True)
            self._proc = subprocess.Popen([binary, "-db", "-f", str(self._dir / "haproxy.cfg")],
                                          stdout=self._log, stderr=subprocess.STDOUT)
            if self._started(deadline=time.monotonic() + 10):
                return
            if self._proc.poll() is None or attempt == 2:
                self.stop()
                raise RuntimeError(f"haproxy did not start: {self.output()[-1000:]}")

    def _started(self, deadline: float) -> bool:
        """Whether this haproxy came up (False as soon as it exits, or at the deadline)."""
        while self._proc.poll() is None and time.monotonic() < deadline:
            try:
                with socket.socket(socket.AF_UNIX) as stats:
                    stats.settimeout(1)
                    stats.connect(self.stats_socket)
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return self._proc.poll() is None
            except OSError:
                time.sleep(0.05)
        return False

    def output(self) -> str:
        try:
            return self.log_path.read_text()
        except OSError:
            return ""

    def server_states(self) -> dict[tuple[str, str], str]:
        """{(backend, server): "UP" / "DOWN" / "MAINT" ...} as the health checks left them."""
        with socket.socket(socket.AF_UNIX) as sock:
            sock.settimeout(5)
            sock.connect(self.stats_socket)
            sock.sendall(b"show stat\n")
            data = b""
            while chunk := sock.recv(65536):
                data += chunk
        lines = data.decode().splitlines()
        header = lines[0].lstrip("# ").split(",")
        states = {}
        for line in lines[1:]:
            row = dict(zip(header, line.split(",")))
            if row.get("svname") not in (None, "FRONTEND", "BACKEND"):
                states[(row["pxname"], row["svname"])] = row["status"].split(" ")[0]
        return states

    def move(self, name: str, host: str) -> None:
        """The instance `name` is now at `host` (a container restarted with a new address)."""
        self.dns.names[name] = host

    def stop(self) -> None:
        if self._proc.poll() is None:
            self._proc.terminate()
            try:
                self._proc.wait(10)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
        self._log.close()
        self.dns.stop()
        shutil.rmtree(self._dir, ignore_errors=True)

    def __enter__(self) -> "HaproxyProxy":
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
