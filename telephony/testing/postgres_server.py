"""A throwaway PostgreSQL server for tests: its own data directory, port and database.

Why a real server and not a mock: the records backend depends on what only
PostgreSQL does (advisory locks, transactional DDL, a connection that dies
when the server stops), so its tests start one, stop it mid-call and start it
again on the same data directory and port.

PostgreSQL refuses to run as root, so when the tests run as root (CI
containers) every server binary runs through `runuser -u postgres --`, in a
temporary directory the postgres user owns. It trusts every local connection
and runs with fsync off: it holds test data only, and starts in well under a
second.
"""

from __future__ import annotations

import glob
import os
import pwd
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

from .ports import free_port

__all__ = ["PostgresServer", "PostgresServerError", "find_bindir"]

#: The user the server runs as when the tests run as root.
SERVER_USER = "postgres"
DATABASE = "telephony"
#: Settings for speed, not durability: the data is thrown away.
SERVER_OPTIONS = (
    "-c fsync=off -c synchronous_commit=off -c full_page_writes=off -c shared_buffers=16MB "
    "-c max_connections=40 -c max_wal_size=64MB -c log_min_messages=warning"
)


class PostgresServerError(RuntimeError):
    """The server binaries are missing, or the server could not be set up or started."""


def find_bindir() -> Path:
    """The folder holding initdb, pg_ctl and postgres: `pg_config --bindir`, else the newest
    /usr/lib/postgresql/*/bin (Debian installs the server there, off PATH)."""
    candidates: list[Path] = []
    pg_config = shutil.which("pg_config")
    if pg_config:
        done = subprocess.run([pg_config, "--bindir"], capture_output=True, text=True)
        if done.returncode == 0 and done.stdout.strip():
            candidates.append(Path(done.stdout.strip()))
    versioned = glob.glob("/usr/lib/postgresql/*/bin")
    versioned.sort(key=lambda p: int(re.sub(r"\D", "", Path(p).parent.name) or 0), reverse=True)
    candidates.extend(Path(p) for p in versioned)
    for folder in candidates:
        if all((folder / name).is_file() for name in ("initdb", "pg_ctl", "postgres")):
            return folder
    raise PostgresServerError(
        "PostgreSQL server binaries (initdb, pg_ctl, postgres) not found via pg_config --bindir or in "
        "/usr/lib/postgresql/*/bin: install them (Debian: apt-get install postgresql)"
    )


class PostgresServer:
    """`with PostgresServer() as pg:` a running server; `pg.url` reaches its database.

    `stop()` and `start()` take the server down and bring it back on the same
    data directory and port, so a client's URL stays valid across the outage.
    """

    def __init__(self, base_dir: str | Path | None = None):
        self.bindir = find_bindir()
        self._as_root = os.geteuid() == 0
        if self._as_root:
            try:
                self._user = pwd.getpwnam(SERVER_USER)
            except KeyError:
                raise PostgresServerError(
                    f"running as root, and PostgreSQL refuses to run as root, but there is no {SERVER_USER!r} user "
                    "to run it as"
                ) from None
            if shutil.which("runuser") is None:
                raise PostgresServerError("running as root: `runuser` (util-linux) is needed to start PostgreSQL")
        self._base_dir = base_dir
        self.dir: Path | None = None
        self.port: int | None = None
        self.running = False

    @property
    def data_dir(self) -> Path:
        return self._require_dir() / "data"

    @property
    def socket_dir(self) -> Path:
        return self._require_dir() / "socket"

    @property
    def url(self) -> str:
        return self.url_for(DATABASE)

    def url_for(self, database: str) -> str:
        return f"postgresql://{SERVER_USER if self._as_root else self._os_user()}@127.0.0.1:{self.port}/{database}"

    # ------------------------------------------------------------ life cycle

    def __enter__(self) -> "PostgresServer":
        try:
            self.setup()
            self.start()
            self.create_database(DATABASE)
        except BaseException:
            self.cleanup()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.cleanup()

    def setup(self) -> None:
        """initdb into a fresh temporary directory the server's user owns."""
        self.dir = Path(tempfile.mkdtemp(prefix="telephony-pg-", dir=self._base_dir))
        self.socket_dir.mkdir()
        if self._as_root:
            for path in (self.dir, self.socket_dir):
                os.chown(path, self._user.pw_uid, self._user.pw_gid)
        self.port = free_port()
        self._run("initdb", "-D", str(self.data_dir), "-U", self._superuser(), "--auth=trust", "--no-sync",
                  "--encoding=UTF8", "--locale=C")

    def start(self) -> None:
        """Start (or restart) the server on its data directory and port; return once it accepts connections."""
        if self.running:
            return
        options = f"-c listen_addresses=127.0.0.1 -p {self.port} -k {self.socket_dir} {SERVER_OPTIONS}"
        self._run("pg_ctl", "-D", str(self.data_dir), "-l", str(self._log_file), "-o", options, "-w", "-t", "30",
                  "start")
        self.running = True

    def stop(self) -> None:
        """Fast shutdown: open connections are cut, as when a database server goes away."""
        if not self.running:
            return
        self._run("pg_ctl", "-D", str(self.data_dir), "-m", "fast", "-w", "-t", "30", "stop")
        self.running = False

    def create_database(self, name: str) -> str:
        """A new empty database; its URL."""
        if not re.fullmatch(r"[a-z_][a-z0-9_]*", name):
            raise ValueError(f"database name {name!r}: lower-case letters, digits and _ only")
        self._run("createdb", "-h", str(self.socket_dir), "-p", str(self.port), "-U", self._superuser(), name)
        return self.url_for(name)

    def cleanup(self) -> None:
        try:
            if self.running and self.dir is not None:
                self.stop()
        finally:
            if self.dir is not None:
                shutil.rmtree(self.dir, ignore_errors=True)
                self.dir = None

    # ------------------------------------------------------------ helpers

    @property
    def _log_file(self) -> Path:
        return self._require_dir() / "server.log"

    def _require_dir(self) -> Path:
        if self.dir is None:
            raise PostgresServerError("the server is not set up (use it as a context manager, or call setup())")
        return self.dir

    def _superuser(self) -> str:
        return SERVER_USER if self._as_root else self._os_user()

    @staticmethod
    def _os_user() -> str:
        return pwd.getpwuid(os.geteuid()).pw_name

    def _run(self, program: str, *args: str) -> None:
        command = [str(self.bindir / program), *args]
        if self._as_root:
            command = ["runuser", "-u", SERVER_USER, "--", *command]
        done = subprocess.run(command, capture_output=True, text=True, cwd=self.dir, timeout=60)
        if done.returncode != 0:
            log_tail = ""
            if self.dir is not None and self._log_file.is_file():
                log_tail = "\nserver log:\n" + "\n".join(self._log_file.read_text(errors="replace").splitlines()[-20:])
            raise PostgresServerError(
                f"{program} failed (exit {done.returncode}): {(done.stderr or done.stdout).strip()}{log_tail}"
            )
