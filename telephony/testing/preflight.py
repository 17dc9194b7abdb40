"""What the test suite needs on the machine, checked before any test runs.

The suite starts the real servers a deployment uses. Without this check a
machine lacking one of them fails minutes in, on whichever test reaches it
first; with it, `python -m pytest` stops at once with one line naming what is
missing and the command that installs it.
"""

from __future__ import annotations

import importlib.util
import os
import shutil

from .postgres_server import PostgresServerError, find_bindir

INSTALL_COMMAND = "scripts/test"

# (what the tests run, Debian package that provides it)
PROGRAMS = (
    ("redis-server", "redis-server"),
    ("nginx", "nginx-light"),
    ("haproxy", "haproxy"),
    ("chromium", "chromium"),
    ("chromedriver", "chromium-driver"),
)

# Python modules the test extra installs (pyproject.toml `[test]`).
MODULES = (("httpx", "httpx"), ("redis", "redis"), ("psycopg", "psycopg"), ("selenium", "selenium"),
           ("opentelemetry.sdk", "opentelemetry-sdk"))


def _program(name: str) -> bool:
    return bool(shutil.which(name)) or any(os.access(f"{d}/{name}", os.X_OK) for d in ("/usr/sbin", "/usr/bin"))


def missing() -> list[str]:
    """Debian packages (servers) and Python distributions the tests need but cannot find."""
    lacking = [package for program, package in PROGRAMS if not _program(program)]
    try:
        find_bindir()
    except PostgresServerError:
        lacking.insert(1, "postgresql")
    for module, dist in MODULES:
        try:
            found = importlib.util.find_spec(module) is not None
        except ModuleNotFoundError:
            found = False
        if not found:
            lacking.append(dist)
    return lacking


def report(lacking: list[str]) -> str:
    """The one line printed when something is missing."""
    return (f"the tests need {', '.join(lacking)}, not found on this machine; "
            f"`{INSTALL_COMMAND}` installs them (Debian/Ubuntu) and runs the suite")
