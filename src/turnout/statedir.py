"""The state folder beside a spec: one value names every file turnout keeps there.

`.turnout/` next to the spec file holds the SQLite database (unless `TURNOUT_DATABASE_URL`
names another), the deployment lock, the reaper's record, the local platform's instance
records and logs, and the builtin router's own folder (admin socket, pid file, log, routing
table, flags and counters). No other module spells these names: it asks a `StateDir` (or
the `RouterFiles` inside it) for the path.

The folder is the deployer's alone. Whoever reaches the router's admin socket moves live
traffic, and the database holds the hashes of API tokens, so `create()` makes it 0700 and
tightens a folder found with looser modes.

Only the lightest parts of the standard library are imported: the router's processes,
which import nothing heavy, name their files through `RouterFiles` too.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from turnout.errors import TurnoutError

FOLDER = ".turnout"
DATABASE_FILE = "state.db"
DATABASE_URL_ENV = "TURNOUT_DATABASE_URL"
OWNER_ONLY = 0o700


def configured_database_url(env: Mapping[str, str] | None = None) -> str | None:
    """The URL `TURNOUT_DATABASE_URL` gives (in `env`, default this process's), if set."""
    return (os.environ if env is None else env).get(DATABASE_URL_ENV) or None


def make_private(folder: Path) -> None:
    """Create `folder` (and its parents) with mode 0700; set 0700 on one that has another.

    Raises OSError when the folder cannot be made or its mode cannot be set (say, it
    belongs to another user).
    """
    folder.mkdir(mode=OWNER_ONLY, parents=True, exist_ok=True)
    if stat.S_IMODE(folder.stat().st_mode) != OWNER_ONLY:
        folder.chmod(OWNER_ONLY)


@dataclass(frozen=True, slots=True)
class RouterFiles:
    """The builtin router's folder: what its processes and its clients read and write."""

    path: Path

    @property
    def admin_socket(self) -> Path:
        return self.path / "admin.sock"

    @property
    def pid_file(self) -> Path:
        return self.path / "proxy.pid"

    @property
    def log(self) -> Path:
        return self.path / "proxy.log"

    @property
    def table(self) -> Path:
        return self.path / "table.json"

    @property
    def flags(self) -> Path:
        return self.path / "flags.json"

    @property
    def counters(self) -> Path:
        return self.path / "counters.json"


@dataclass(frozen=True, slots=True)
class StateDir:
    """The state folder of one spec and the database its commands use.

    Build it with `for_spec` (or `beside` for a spec's folder); it touches nothing on disk
    until `create()`.
    """

    path: Path
    database_url: str

    @classmethod
    def for_spec(cls, spec_path: Path, *, env: Mapping[str, str] | None = None) -> StateDir:
        return cls.beside(spec_path.resolve().parent, env=env)

    @classmethod
    def beside(cls, spec_dir: Path, *, env: Mapping[str, str] | None = None) -> StateDir:
        folder = spec_dir.resolve() / FOLDER
        url = configured_database_url(env) or f"sqlite:///{folder / DATABASE_FILE}"
        return cls(path=folder, database_url=url)

    def create(self) -> StateDir:
        """Make the folder owner-only (see `make_private`); return self.

        Raises TurnoutError (exit 1) saying which folder and why when that fails.
        """
        try:
            make_private(self.path)
        except OSError as exc:
            raise TurnoutError(f"cannot use the state folder {self.path}: {exc.strerror or exc}") from exc
        return self

    def database(self) -> str:
        """The database URL, after creating the folder when the database lives in it."""
        if self.owns_database:
            self.create()
        return self.database_url

    @property
    def owns_database(self) -> bool:
        """True when the database is the SQLite file in this folder."""
        return self.database_url == f"sqlite:///{self.database_file}"

    @property
    def spec_dir(self) -> Path:
        return self.path.parent

    @property
    def database_file(self) -> Path:
        return self.path / DATABASE_FILE

    @property
    def deploy_lock(self) -> Path:
        return self.path / "deploy.lock"

    @property
    def logs(self) -> Path:
        return self.path / "logs"

    @property
    def instances(self) -> Path:
        """Where the local platform keeps one JSON record per instance."""
        return self.path / "instances"

    @property
    def reaper_record(self) -> Path:
        return self.path / "reaper.json"

    @property
    def reaper_log(self) -> Path:
        return self.logs / "reaper.log"

    @property
    def router(self) -> RouterFiles:
        return RouterFiles(self.path / "router")
