"""The SQLite store on real files: migrations, WAL, two processes at once, durability, errors."""

from __future__ import annotations

import json
import re
import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext

from turnout.errors import ConflictError, StoreError
from turnout.store import Store
from turnout.store import engine as engine_module
from turnout.store.schema import metadata

PY = sys.executable


def url_of(path: Path) -> str:
    return f"sqlite:///{path}"


def run_child(script: str, *args: str) -> subprocess.Popen[str]:
    """A Python process working on the store; its stdout is JSON or nothing."""
    prelude = "import json, os, signal, sys\nfrom turnout.store import Store\n"
    return subprocess.Popen([PY, "-c", prelude + textwrap.dedent(script), *args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def finish(child: subprocess.Popen[str]) -> str:
    out, err = child.communicate(timeout=30)
    assert child.returncode == 0, err
    return out


def new_deployment(store: Store, service: str = "shop") -> int:
    return store.create_deployment(
        service=service, version="v2", target_revision="v2-x", previous_revision=None,
        strategy="rolling", plan=[], plan_hash="h", owner_pid=None,
    ).id


def test_fresh_database_is_migrated_to_head_and_reopens(tmp_path: Path) -> None:
    path = tmp_path / "nested" / ".turnout" / "state.db"
    with Store.open(url_of(path)) as store:
        store.set_stable("shop", "v1-x")
    with Store.open(url_of(path)) as again:
        assert again.stable("shop") == "v1-x"
    with sqlite3.connect(path) as raw:
        assert raw.execute("SELECT version_num FROM alembic_version").fetchall() == [("0005",)]
        assert raw.execute("PRAGMA journal_mode").fetchone() == ("wal",)
        tables = {r[0] for r in raw.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    assert {"services", "revisions", "deployments", "events", "instances"} <= tables


def test_every_migration_is_numbered_by_its_file_and_the_newest_is_the_head() -> None:
    versions = Path(engine_module.__file__).parent / "migrations" / "versions"
    chain: list[tuple[str, str | None]] = []
    for script in sorted(versions.glob("*.py")):
        text = script.read_text()
        revision = re.search(r'^revision: str = "(\w+)"', text, re.M)
        down = re.search(r'^down_revision: str \| None = (None|"\w+")', text, re.M)
        assert revision and down, script.name
        assert revision.group(1) == script.name[:4], f"{script.name}: revision {revision.group(1)}"
        chain.append((revision.group(1), None if down.group(1) == "None" else down.group(1).strip('"')))
    previous = None
    for revision_id, down_id in chain:  # one line of scripts, each after the one before
        assert down_id == previous, f"{revision_id} follows {down_id}, not {previous}"
        previous = revision_id
    assert engine_module.head() == previous


def test_a_database_at_the_head_opens_without_importing_alembic(tmp_path: Path) -> None:
    url = url_of(tmp_path / "state.db")
    Store.open(url).close()  # created and migrated
    probe = ("import sys; from turnout.store.db import Store; "
             f"Store.open({url!r}).close(); print('alembic' in sys.modules)")
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "False", result.stderr


def test_migrations_match_the_tables_the_code_uses(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    Store.open(url_of(path)).close()
    engine = sa.create_engine(url_of(path))
    with engine.connect() as conn:
        differences = compare_metadata(MigrationContext.configure(conn), metadata)
    engine.dispose()
    assert differences == []


def test_the_database_itself_allows_one_active_deployment(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    with Store.open(url_of(path)) as store:
        new_deployment(store)
    with sqlite3.connect(path) as raw, pytest.raises(sqlite3.IntegrityError):
        raw.execute(
            "INSERT INTO deployments (service, version, target_revision, strategy, plan,"
            " plan_hash, step, phase, message, abort_requested, promote_requested,"
            " created_at, updated_at) VALUES"
            " ('shop', 'v3', 'v3-x', 'rolling', '[]', 'h', 0, 'paused', '', 0, 0, 1, 1)"
        )


def test_two_processes_see_each_others_writes(tmp_path: Path) -> None:
    url = url_of(tmp_path / "state.db")
    with Store.open(url) as store:
        deployment = new_deployment(store)
        store.add_event(deployment, step=0, kind="step", message="from parent")
        child = run_child("""
            store = Store.open(sys.argv[1])
            dep = store.active_deployment("shop")
            store.add_event(dep.id, step=1, kind="step", message="from child")
            store.request(dep.id, "abort")
            store.set_stable("shop", "v1-x")
            print(json.dumps([e.message for e in store.events(dep.id)]))
            store.close()
        """, url)
        assert json.loads(finish(child)) == ["from parent", "from child"]
        record = store.deployment(deployment)
        assert record is not None and record.abort_requested
        assert store.stable("shop") == "v1-x"
        assert [e.message for e in store.events(deployment)] == ["from parent", "from child"]


def test_concurrent_writers_in_two_processes_lose_nothing(tmp_path: Path) -> None:
    url = url_of(tmp_path / "state.db")
    with Store.open(url) as store:
        deployment = new_deployment(store)
    writer = """
        store = Store.open(sys.argv[1])
        for i in range(40):
            store.add_event(int(sys.argv[2]), step=i, kind=sys.argv[3], message=str(i))
            store.update_deployment(int(sys.argv[2]), message=sys.argv[3] + str(i))
        store.close()
    """
    children = [run_child(writer, url, str(deployment), name) for name in ("a", "b")]
    for child in children:
        finish(child)
    with Store.open(url) as store:
        kinds = [e.kind for e in store.events(deployment)]
    assert kinds.count("a") == 40 and kinds.count("b") == 40


def test_two_processes_opening_a_fresh_database_at_once(tmp_path: Path) -> None:
    url = url_of(tmp_path / "fresh.db")
    opener = """
        with Store.open(sys.argv[1]) as store:
            store.set_stable(sys.argv[2], "r")
    """
    children = [run_child(opener, url, name) for name in ("one", "two", "three")]
    for child in children:
        finish(child)
    with Store.open(url) as store:
        assert [store.stable(name) for name in ("one", "two", "three")] == ["r"] * 3


def test_writes_survive_sigkill_right_after_the_call(tmp_path: Path) -> None:
    url = url_of(tmp_path / "state.db")
    child = run_child("""
        store = Store.open(sys.argv[1])
        dep = store.create_deployment(service="shop", version="v2", target_revision="v2-x",
            previous_revision=None, strategy="canary", plan=[{"kind": "pause"}],
            plan_hash="h", owner_pid=os.getpid())
        store.update_deployment(dep.id, step=3, phase="paused")
        store.add_event(dep.id, step=3, kind="pause", message="waiting")
        os.kill(os.getpid(), signal.SIGKILL)
    """, url)
    child.communicate(timeout=30)
    assert child.returncode == -9
    with Store.open(url) as store:
        record = store.active_deployment("shop")
        assert record is not None and (record.step, record.phase) == (3, "paused")
        assert [e.message for e in store.events(record.id)] == ["waiting"]
        with pytest.raises(ConflictError, match=f"pid {child.pid}"):
            new_deployment(store)


def test_unwritable_path_is_a_store_error(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    with pytest.raises(StoreError, match="cannot open the state database"):
        Store.open(url_of(blocker / "state.db"))


def test_directory_in_place_of_the_file_is_a_store_error(tmp_path: Path) -> None:
    with pytest.raises(StoreError, match="cannot open"):
        Store.open(url_of(tmp_path))


def test_corrupt_file_is_a_store_error(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    path.write_bytes(b"this is not an SQLite database at all" * 100)
    with pytest.raises(StoreError, match="not a database"):
        Store.open(url_of(path))


def test_unknown_database_kind_is_a_store_error() -> None:
    with pytest.raises(StoreError, match="nosuchdb"):
        Store.open("nosuchdb://somewhere/db")


def test_error_after_open_is_a_store_error(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    with Store.open(url_of(path)) as store:
        with sqlite3.connect(path) as raw:
            raw.execute("DROP TABLE services")
        with pytest.raises(StoreError, match="no such table"):
            store.stable("shop")


def test_in_memory_store_works_for_quick_tools() -> None:
    with Store.open("sqlite://") as store:
        store.set_stable("shop", "v1-x")
        assert store.stable("shop") == "v1-x"


def test_missing_driver_is_a_store_error_without_the_password() -> None:
    with pytest.raises(StoreError) as caught:
        Store.open("postgresql+nosuchdriver://turnout:s3cret@127.0.0.1:1/turnout")
    assert "s3cret" not in str(caught.value)
    assert "127.0.0.1" in str(caught.value)
