"""A throwaway PostgreSQL server for the tests: one per test session, one database per test.

The server runs Debian's `postgresql` binaries from a temporary folder that holds both its
data and its unix socket (it listens on no TCP port), never the system service. initdb and
the server refuse to run as root, so as root they run as the `postgres` user, in a folder
that user owns. Durability is off (fsync, synchronous commits, full page writes): a crash
would lose a test's data and nothing else, and the server starts in about a second.

`postgres_url` gives a test the SQLAlchemy URL of a fresh, empty database, dropped after
it. Without the binaries the tests that ask for it are skipped, except as root, where
`scripts/install-system-deps.sh` installs them: there, a missing server is a failure.
"""

from __future__ import annotations

import glob
import itertools
import os
import pwd
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import psycopg
import pytest

from tests.system import missing

SERVER_USER = "postgres"
START_TIMEOUT = 30
SETTINGS = {
    "listen_addresses": "''",
    "fsync": "off",
    "synchronous_commit": "off",
    "full_page_writes": "off",
    "max_connections": "200",
    "shared_buffers": "32MB",
    "log_min_messages": "warning",
}


def binaries() -> Path | None:
    """The folder of initdb and pg_ctl: Debian's newest, else whatever is on PATH."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"),
                   key=lambda p: int(Path(p).parts[-3]) if Path(p).parts[-3].isdigit() else 0)
    if found:
        return Path(found[-1]).parent
    initdb = shutil.which("initdb")
    return Path(initdb).parent if initdb else None


@dataclass
class PostgresServer:
    """A running throwaway server: its folder (data, socket, log) and how long it took to start."""

    folder: Path
    bin: Path
    as_user: tuple[str, ...]
    started_in: float = 0.0
    _names: Iterator[int] = field(default_factory=itertools.count)

    @classmethod
    def start(cls, bin_dir: Path) -> PostgresServer:
        as_user: tuple[str, ...] = ()
        folder = Path(tempfile.mkdtemp(prefix="turnout-pg-"))
        if os.geteuid() == 0:
            as_user = ("runuser", "-u", SERVER_USER, "--")
            account = pwd.getpwnam(SERVER_USER)
            os.chown(folder, account.pw_uid, account.pw_gid)
        server = cls(folder, bin_dir, as_user)
        began = time.monotonic()
        try:
            server._run("initdb", "-D", str(server.data), "-A", "trust", "-U", SERVER_USER,
                        "-E", "UTF8", "--locale=C", "--no-sync")
            settings = {**SETTINGS, "unix_socket_directories": f"'{folder}'"}
            with (server.data / "postgresql.conf").open("a") as conf:
                conf.writelines(f"{name} = {value}\n" for name, value in settings.items())
            server._run("pg_ctl", "-D", str(server.data), "-l", str(folder / "server.log"),
                        "-w", "-t", str(START_TIMEOUT), "start")
        except BaseException:
            shutil.rmtree(folder, ignore_errors=True)
            raise
        server.started_in = time.monotonic() - began
        return server

    @property
    def data(self) -> Path:
        return self.folder / "data"

    def url(self, database: str) -> str:
        return f"postgresql+psycopg://{SERVER_USER}@/{database}?host={self.folder}"

    def admin(self) -> psycopg.Connection[tuple[object, ...]]:
        return psycopg.connect(host=str(self.folder), user=SERVER_USER, dbname="postgres",
                               autocommit=True)

    def create_database(self) -> str:
        name = f"turnout_test_{os.getpid()}_{next(self._names)}"
        with self.admin() as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return name

    def drop_database(self, name: str) -> None:
        with self.admin() as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    def stop(self) -> None:
        try:
            self._run("pg_ctl", "-D", str(self.data), "-m", "immediate", "-w", "stop")
        finally:
            shutil.rmtree(self.folder, ignore_errors=True)

    def _run(self, program: str, *args: str) -> None:
        argv = [*self.as_user, str(self.bin / program), *args]
        done = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False,
                              stdin=subprocess.DEVNULL)
        if done.returncode != 0:
            log = self.folder / "server.log"
            tail = log.read_text(errors="replace")[-2000:] if log.exists() else ""
            raise RuntimeError(f"{program} exited {done.returncode}: {done.stderr.strip()}\n{tail}")


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    """The session's PostgreSQL server, started on first use."""
    bin_dir = binaries()
    if bin_dir is None:
        message = ("PostgreSQL is not installed (no initdb in /usr/lib/postgresql/*/bin or on "
                   "PATH): install Debian's postgresql package")
        missing(message)
    server = PostgresServer.start(bin_dir)
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def postgres_url(postgres_server: PostgresServer) -> Iterator[str]:
    """The URL of a fresh, empty database on the session's server, dropped after the test."""
    name = postgres_server.create_database()
    try:
        yield postgres_server.url(name)
    finally:
        postgres_server.drop_database(name)
