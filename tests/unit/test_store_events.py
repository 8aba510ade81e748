"""Events keep their data: migration 0004 on a real database at 0003, and what comes back."""

from __future__ import annotations

import math
import sqlite3
from enum import Enum
from pathlib import Path

import sqlalchemy as sa
from alembic import command
from alembic.config import Config

import turnout.store.engine as store_engine
from turnout.store import Store


def upgrade_to(url: str, revision: str) -> None:
    """Bring a database to `revision` with the packaged migrations, as an older turnout did."""
    here = Path(store_engine.__file__).parent
    config = Config(str(here / "alembic.ini"))
    config.set_main_option("script_location", str(here / "migrations"))
    engine = store_engine.create_engine(sa.make_url(url))
    with engine.connect() as conn:
        conn.execution_options(turnout_write=True)
        with conn.begin():
            config.attributes["connection"] = conn
            command.upgrade(config, revision)
    engine.dispose()


def test_a_database_at_0003_upgrades_and_keeps_its_rows(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    url = f"sqlite:///{path}"
    upgrade_to(url, "0003")
    with sqlite3.connect(path) as raw:
        assert raw.execute("SELECT version_num FROM alembic_version").fetchall() == [("0003",)]
        assert "data" not in {r[1] for r in raw.execute("PRAGMA table_info(events)")}
        raw.execute(
            "INSERT INTO deployments (id, service, version, target_revision, strategy, plan,"
            " plan_hash, step, phase, message, abort_requested, promote_requested,"
            " created_at, updated_at) VALUES"
            " (7, 'shop', 'v2', 'v2-x', 'canary', '[]', 'h', 1, 'succeeded', 'done', 0, 0, 1, 2)")
        raw.execute("INSERT INTO events (deployment_id, at, step, kind, message)"
                    " VALUES (7, 10.5, 0, 'step', 'start 1 instance of v2')")
        raw.execute("INSERT INTO events (deployment_id, at, step, kind, message)"
                    " VALUES (7, 11.5, 1, 'gate', 'Successful: fine')")
        raw.execute("INSERT INTO tokens (name, kind, secret_sha256, created_at)"
                    " VALUES ('ci', 'admin', 'ab', 3)")
    with Store.open(url) as store:
        old = store.events(7)
        assert [(e.at, e.step, e.kind, e.message, e.data) for e in old] == [
            (10.5, 0, "step", "start 1 instance of v2", {}),
            (11.5, 1, "gate", "Successful: fine", {})]
        record = store.deployment(7)
        assert record is not None and (record.version, record.phase, record.message) == (
            "v2", "succeeded", "done")
        store.add_event(7, step=2, kind="traffic", message="traffic: v2 100%",
                        data={"weights": {"v2": 100}})
        assert store.events(7)[-1].data == {"weights": {"v2": 100}}
    with sqlite3.connect(path) as raw:
        assert raw.execute("SELECT version_num FROM alembic_version").fetchall() == [("0005",)]
        assert raw.execute("SELECT name FROM tokens").fetchall() == [("ci",)]


class Verdict(Enum):
    FAILED = "Failed"


def test_data_comes_back_as_plain_json(tmp_path: Path) -> None:
    with Store.open(f"sqlite:///{tmp_path / 'state.db'}") as store:
        dep = store.create_deployment(
            service="shop", version="v2", target_revision="v2-x", previous_revision=None,
            strategy="canary", plan=[], plan_hash="h", owner_pid=None)
        store.add_event(dep.id, step=3, kind="gate", message="Failed: p99 too high", data={
            "verdict": Verdict.FAILED, "windows": ("canary", "stable"),
            "evidence": {"p99": math.inf, "error_rate": 0.25, 500: 3}, "why": ValueError("x"),
        })
        store.add_event(dep.id, step=3, kind="info", message="no data")
        got = store.last_event(dep.id, "gate")
        assert got is not None
        assert got.data == {"verdict": "Failed", "windows": ["canary", "stable"],
                            "evidence": {"p99": "inf", "error_rate": 0.25, "500": 3}, "why": "x"}
        assert store.events(dep.id)[-1].data == {}
        assert [e.kind for e in store.events(dep.id, kind="gate")] == ["gate"]
        assert store.last_event(dep.id, "traffic") is None
