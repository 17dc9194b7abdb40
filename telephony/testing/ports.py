"""A free loopback port, for the servers the tests and benchmarks start."""

from __future__ import annotations

import socket


def free_port(host: str = "127.0.0.1") -> int:
    """A port nothing listens on now (the kernel's pick; taken again only by a race)."""
    with socket.socket() as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]
