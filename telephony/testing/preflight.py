"""What the test suite needs on the machine, checked before any test runs.

The suite starts the real servers a deployment uses. Without this check a
machine lacking one of them fails minutes in, on whichever test reaches it
first; with it, `python -m pytest` stops at once with one line naming what is
missing and the command that installs it.
"""

from __future__ import annotations

import os
import re
import shutil
import tomllib
from importlib import metadata
from pathlib import Path

from .postgres_server import PostgresServerError, find_bindir

INSTALL_COMMAND = "scripts/test"

# (what the tests run, Debian package that provides it)
PROGRAMS = (
    ("redis-server", "redis-server"),
    ("haproxy", "haproxy"),
    ("chromium", "chromium"),
    ("chromedriver", "chromium-driver"),
)

PYPROJECT = Path(__file__).resolve().parents[2] / "pyproject.toml"


def _distribution_names(pyproject: Path) -> list[str]:
    """The project's dependencies and its `test` extra, by distribution name (markers and
    versions left aside: this catches what is not installed at all)."""
    if not pyproject.is_file():  # an installed copy, without its pyproject
        return []
    project = tomllib.loads(pyproject.read_text())["project"]
    requirements = [*project.get("dependencies", []), *project.get("optional-dependencies", {}).get("test", [])]
    return [re.split(r"[\s\[<>=!~;]", r, maxsplit=1)[0] for r in requirements if ";" not in r]


def _program(name: str) -> bool:
    return bool(shutil.which(name)) or any(os.access(f"{d}/{name}", os.X_OK) for d in ("/usr/sbin", "/usr/bin"))


def missing() -> list[str]:
    """Debian packages (servers) and Python distributions (pyproject.toml: the dependencies
    and the `test` extra) the tests need but cannot find."""
    lacking = [package for program, package in PROGRAMS if not _program(program)]
    try:
        find_bindir()
    except PostgresServerError:
        lacking.insert(1, "postgresql")
    for name in _distribution_names(PYPROJECT):
        try:
            metadata.distribution(name)
        except metadata.PackageNotFoundError:
            lacking.append(name)
    return lacking


def report(lacking: list[str]) -> str:
    """The one line printed when something is missing."""
    return (f"the tests need {', '.join(lacking)}, not found on this machine; "
            f"`{INSTALL_COMMAND}` installs them (Debian/Ubuntu) and runs the suite")
