"""The state folder: owner-only modes on real folders, and every path from the one value."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from turnout.errors import TurnoutError
from turnout.model import Instance
from turnout.platforms.local import LocalPlatform
from turnout.routers.builtin import BuiltinRouter
from turnout.statedir import StateDir, make_private


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_created_owner_only_whatever_the_umask(tmp_path: Path) -> None:
    old = os.umask(0o002)
    try:
        state = StateDir.for_spec(tmp_path / "turnout.yaml").create()
    finally:
        os.umask(old)
    assert state.path == tmp_path / ".turnout"
    assert mode(state.path) == 0o700


@pytest.mark.parametrize("loose", [0o755, 0o777, 0o750, 0o711])
def test_an_existing_loose_folder_is_tightened(tmp_path: Path, loose: int) -> None:
    folder = tmp_path / ".turnout"
    folder.mkdir()
    folder.chmod(loose)
    (folder / "kept").write_text("x")
    StateDir.beside(tmp_path).create()
    assert mode(folder) == 0o700
    assert (folder / "kept").read_text() == "x", "tightening keeps what is inside"


def test_a_folder_that_cannot_be_made_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / ".turnout").write_text("a file where the folder goes")
    with pytest.raises(TurnoutError, match=r"cannot use the state folder .*\.turnout"):
        StateDir.beside(tmp_path).create()


def test_nothing_is_made_until_asked(tmp_path: Path) -> None:
    state = StateDir.for_spec(tmp_path / "turnout.yaml", env={})
    assert state.router.admin_socket.name == "admin.sock"
    assert not state.path.exists()
    assert state.database() == f"sqlite:///{tmp_path / '.turnout' / 'state.db'}"
    assert mode(state.path) == 0o700, "the folder holding the database is made owner-only"


def test_an_outside_database_leaves_the_folder_alone(tmp_path: Path) -> None:
    url = "postgresql://deployer@db.internal/turnout"
    state = StateDir.for_spec(tmp_path / "turnout.yaml", env={"TURNOUT_DATABASE_URL": url})
    assert state.database_url == url
    assert not state.owns_database
    assert state.database() == url
    assert not state.path.exists()


def test_an_empty_variable_means_the_default(tmp_path: Path) -> None:
    state = StateDir.beside(tmp_path, env={"TURNOUT_DATABASE_URL": ""})
    assert state.owns_database
    assert state.database_url == f"sqlite:///{state.database_file}"


def test_every_path_comes_from_the_one_value(tmp_path: Path) -> None:
    spec_dir = tmp_path / "svc"
    spec_dir.mkdir()
    state = StateDir.for_spec(spec_dir / "turnout.yaml", env={})
    root = spec_dir / ".turnout"
    assert state.spec_dir == spec_dir
    assert {
        state.database_file, state.deploy_lock, state.logs, state.instances,
        state.reaper_record, state.reaper_log, state.router.path,
    } == {root / "state.db", root / "deploy.lock", root / "logs", root / "instances",
          root / "reaper.json", root / "logs" / "reaper.log", root / "router"}
    files = state.router
    assert {files.admin_socket, files.pid_file, files.log, files.table, files.flags, files.counters} == {
        root / "router" / name
        for name in ("admin.sock", "proxy.pid", "proxy.log", "table.json", "flags.json", "counters.json")
    }
    # the adapters take their paths from it, not from names of their own
    platform = LocalPlatform(state=state)
    assert platform.spec_dir == spec_dir
    instance = Instance(service="shop", revision="v1-abc", version="v1", slot=0, host="127.0.0.1", port=1)
    assert platform.logs_path(instance) == root / "logs" / "shop-v1-abc-0.log"
    router = BuiltinRouter(state.router.path, listen="127.0.0.1:0", preview_listen=None)
    assert (router.socket_path, router.pid_path, router.log_path) == (
        files.admin_socket, files.pid_file, files.log)


def test_make_private_makes_missing_parents(tmp_path: Path) -> None:
    folder = tmp_path / "a" / "b"
    make_private(folder)
    assert mode(folder) == 0o700
