"""The flag store on a real SQLite file and on PostgreSQL (`tests.pg`): changes, versions,
revision, audit, segments, tokens."""

from __future__ import annotations

import hashlib
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from turnout.errors import ConflictError, StoreError
from turnout.flags import FlagState, evaluate
from turnout.flags.store import FlagError, FlagExists, FlagNotFound, FlagStore, Token, VersionConflict
from turnout.store import Store
from turnout.store.schema import metadata


class Ticks:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        self.t += 1
        return self.t


@pytest.fixture(params=["sqlite", "postgresql"])
def db(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "postgresql":
        return str(request.getfixturevalue("postgres_url"))
    return f"sqlite:///{tmp_path / '.turnout' / 'state.db'}"


@pytest.fixture
def store(db: str) -> Iterator[FlagStore]:
    with FlagStore.open(db, now=Ticks()) as opened:
        yield opened


def flag(name: str = "checkout", **fields: Any) -> dict[str, Any]:
    return {"name": name, **fields}


def test_a_fresh_store_is_empty_at_revision_zero(store: FlagStore) -> None:
    assert store.revision() == 0
    assert store.state() == {"version": 2, "features": [], "segments": [], "meta": {"revision": 0}}
    assert store.flags() == [] and store.flag("checkout") is None and store.segments() == []


def test_create_stores_the_normalised_definition_at_version_1(store: FlagStore) -> None:
    record = store.create(flag(enabled=True, strategies=[
        {"name": "flexibleRollout", "parameters": {"rollout": 30}}]), who="alice")
    assert (record.name, record.version, record.archived, record.updated_at) == ("checkout", 1, False, 1001.0)
    assert record.definition["strategies"][0]["parameters"]["rollout"] == "30"
    assert store.flag("checkout") == record
    assert store.flags() == [record]
    assert store.revision() == 1
    [audit] = store.history("checkout")
    assert (audit.flag, audit.version, audit.who, audit.action) == ("checkout", 1, "alice", "create")
    assert audit.change == {"before": None, "after": record.definition}


def test_create_twice_is_a_conflict_and_changes_nothing(store: FlagStore) -> None:
    store.create(flag(), who="a")
    with pytest.raises(FlagExists) as caught:
        store.create(flag(enabled=True), who="b")
    assert isinstance(caught.value, ConflictError)
    assert store.revision() == 1 and store.flag("checkout").definition["enabled"] is False  # type: ignore[union-attr]


def test_create_many_creates_all_or_none(store: FlagStore) -> None:
    with pytest.raises(FlagError) as caught:
        store.create_many([flag("a"), flag("b", strategies=[{"name": "default", "segments": [7]}])],
                          who="x")
    assert caught.value.problems == ["1.strategies.0.segments.0: no segment with id 7"]
    assert store.flags() == [] and store.revision() == 0
    made = store.create_many([flag("parent"), flag("child", dependencies=[{"feature": "parent"}])],
                             who="x")
    assert [(r.name, r.version) for r in made] == [("parent", 1), ("child", 1)]
    assert store.revision() == 2


def test_invalid_definitions_change_nothing(store: FlagStore) -> None:
    store.create(flag(), who="a")
    with pytest.raises(FlagError) as caught:
        store.update("checkout", flag(strategies=[{"name": "flexibleRollout"}]), who="a")
    assert caught.value.problems == ["strategies.0.parameters.rollout: required by flexibleRollout"]
    with pytest.raises(FlagError):
        store.create({"name": "bad name"}, who="a")
    with pytest.raises(FlagError):
        store.set_rollout("checkout", 101, who="a")
    with pytest.raises(FlagError):
        store.add_users("checkout", ["a,b"], who="a")
    assert store.revision() == 1 and len(store.history("checkout")) == 1
    assert [f.name for f in store.flags()] == ["checkout"]


def test_every_change_bumps_version_revision_and_audit(store: FlagStore) -> None:
    store.create(flag(), who="a")
    store.set_enabled("checkout", True, who="b")
    store.set_rollout("checkout", 10, who="c", stickiness="userId")
    store.set_rollout("checkout", 40, who="c")
    store.add_users("checkout", ["u1", "u2"], who="d")
    store.add_users("checkout", ["u2", "u3"], who="d")
    record = store.update("checkout", flag(enabled=False), who="e", expected_version=6)
    assert record.version == 7 and store.revision() == 7
    history = store.history("checkout")
    assert [(h.version, h.action, h.who) for h in history] == [
        (1, "create", "a"), (2, "enable", "b"), (3, "rollout", "c"), (4, "rollout", "c"),
        (5, "target", "d"), (6, "target", "d"), (7, "update", "e")]
    assert [h.at for h in history] == sorted(h.at for h in history)
    strategies = history[5].change["after"]["strategies"]
    assert [s["name"] for s in strategies] == ["flexibleRollout", "userWithId"]
    assert strategies[0]["parameters"] == {"rollout": "40", "stickiness": "userId", "groupId": "checkout"}
    assert strategies[1]["parameters"] == {"userIds": "u1,u2,u3"}
    assert history[1].change["before"]["enabled"] is False and history[1].change["after"]["enabled"]


def test_a_change_that_changes_nothing_is_not_recorded(store: FlagStore) -> None:
    store.create(flag(enabled=True), who="a")
    again = store.set_enabled("checkout", True, who="a")
    assert again.version == 1 and store.revision() == 1 and len(store.history("checkout")) == 1


def test_rollout_and_users_really_decide_evaluation(store: FlagStore) -> None:
    store.create(flag(enabled=True), who="a")
    store.add_users("checkout", ["vip"], who="a")
    state = FlagState.from_json(store.state())
    assert evaluate(state, "checkout", {"userId": "vip"}).enabled
    assert not evaluate(state, "checkout", {"userId": "someone"}).enabled
    store.set_rollout("checkout", 100, who="a")
    assert evaluate(FlagState.from_json(store.state()), "checkout", {"userId": "someone"}).enabled
    store.set_enabled("checkout", False, who="a")
    assert not evaluate(FlagState.from_json(store.state()), "checkout", {"userId": "vip"}).enabled


def test_rollout_keeps_conditional_strategies_and_adds_a_plain_one(store: FlagStore) -> None:
    conditional = {"name": "flexibleRollout", "parameters": {"rollout": 100},
                   "constraints": [{"contextName": "region", "operator": "IN", "values": ["eu"]}]}
    store.create(flag(enabled=True, strategies=[conditional]), who="a")
    record = store.set_rollout("checkout", 5, who="a")
    rollouts = [s["parameters"]["rollout"] for s in record.definition["strategies"]]
    assert rollouts == ["100", "5"]


def test_a_rollout_change_keeps_stickiness_group_and_the_users_already_in(store: FlagStore) -> None:
    mine = {"name": "flexibleRollout",
            "parameters": {"rollout": 20, "stickiness": "accountId", "groupId": "checkout-2024"}}
    store.create(flag(enabled=True, strategies=[mine]), who="a")
    users = [{"properties": {"accountId": f"acct-{i}"}} for i in range(3000)]

    def enabled() -> set[int]:
        state = FlagState.from_json(store.state())
        return {i for i, ctx in enumerate(users) if evaluate(state, "checkout", ctx).enabled}

    at = {20: enabled()}
    for percent in (33, 40):
        record = store.set_rollout("checkout", percent, who="b")
        assert record.definition["strategies"][0]["parameters"] == {
            "rollout": str(percent), "stickiness": "accountId", "groupId": "checkout-2024"}
        at[percent] = enabled()
    assert at[20] <= at[33] <= at[40]
    assert 0.36 < len(at[40]) / len(users) < 0.44, len(at[40])
    # an explicit stickiness is a deliberate change of who is in; the group stays
    record = store.set_rollout("checkout", 40, who="b", stickiness="userId")
    assert record.definition["strategies"][0]["parameters"] == {
        "rollout": "40", "stickiness": "userId", "groupId": "checkout-2024"}


def test_a_new_rollout_strategy_gets_default_stickiness_and_the_flag_as_group(
    store: FlagStore,
) -> None:
    store.create(flag(enabled=True), who="a")
    record = store.set_rollout("checkout", 33, who="b")
    assert record.definition["strategies"][0]["parameters"] == {
        "rollout": "33", "stickiness": "default", "groupId": "checkout"}
    with pytest.raises(FlagError, match="stickiness"):
        store.set_rollout("checkout", 40, who="b", stickiness=" ")


def test_update_checks_version_name_and_existence(store: FlagStore) -> None:
    store.create(flag(), who="a")
    with pytest.raises(VersionConflict):
        store.update("checkout", flag(enabled=True), who="a", expected_version=3)
    with pytest.raises(FlagError, match="name"):
        store.update("checkout", flag("other"), who="a")
    with pytest.raises(FlagNotFound):
        store.update("missing", {"enabled": True}, who="a")
    assert store.update("checkout", {"enabled": True}, who="a").definition["name"] == "checkout"
    for call in (lambda: store.set_enabled("missing", True, who="a"),
                 lambda: store.set_rollout("missing", 5, who="a"),
                 lambda: store.add_users("missing", ["u"], who="a"),
                 lambda: store.archive("missing", who="a")):
        with pytest.raises(FlagNotFound, match="missing"):
            call()


def test_archive_hides_a_flag_from_the_state_and_create_revives_it(store: FlagStore) -> None:
    store.create(flag("a", enabled=True), who="x")
    store.create(flag("b"), who="x")
    archived = store.archive("a", who="y")
    assert archived.archived and archived.version == 2 and store.revision() == 3
    assert [f["name"] for f in store.state()["features"]] == ["b"]
    assert [f.name for f in store.flags()] == ["b"]
    assert [f.name for f in store.flags(archived=True)] == ["a"]
    assert store.flag("a").archived  # type: ignore[union-attr]
    with pytest.raises(FlagNotFound, match="archived"):
        store.set_enabled("a", False, who="y")
    revived = store.create(flag("a"), who="z")
    assert (revived.version, revived.archived) == (3, False)
    assert [h.action for h in store.history("a")] == ["create", "archive", "revive"]


def test_segments_are_served_and_must_exist_to_be_referenced(store: FlagStore) -> None:
    with pytest.raises(FlagError, match=r"strategies\.0\.segments\.0: no segment with id 1"):
        store.create(flag(strategies=[{"name": "default", "segments": [1]}]), who="a")
    beta = store.put_segment({"name": "beta", "constraints": [
        {"contextName": "region", "operator": "IN", "values": ["eu"]}]}, who="a")
    assert beta["id"] == 1 and store.revision() == 1
    store.create(flag(enabled=True, strategies=[{"name": "default", "segments": [1]}]), who="a")
    state = FlagState.from_json(store.state())
    assert evaluate(state, "checkout", {"properties": {"region": "eu"}}).enabled
    assert not evaluate(state, "checkout", {"properties": {"region": "us"}}).enabled
    store.put_segment({"id": 1, "name": "beta", "constraints": [
        {"contextName": "region", "operator": "IN", "values": ["us"]}]}, who="b")
    assert store.revision() == 3
    doc = store.state()
    assert doc["segments"] == [{"id": 1, "name": "beta", "constraints": [
        {"contextName": "region", "operator": "IN", "values": ["us"], "inverted": False,
         "caseInsensitive": False}]}]
    assert evaluate(FlagState.from_json(doc), "checkout", {"properties": {"region": "us"}}).enabled
    assert store.put_segment({"name": "gamma"}, who="a")["id"] == 2
    assert [s["name"] for s in store.segments()] == ["beta", "gamma"]
    assert [h.action for h in store.history("segment:1")] == ["segment", "segment-update"]


def test_dependencies_need_a_live_parent(store: FlagStore) -> None:
    child = flag("child", dependencies=[{"feature": "parent"}])
    with pytest.raises(FlagError, match=r"dependencies\.0\.feature: no flag named 'parent'"):
        store.create(child, who="a")
    store.create(flag("parent", enabled=True), who="a")
    store.create(child, who="a")
    with pytest.raises(ConflictError, match="child"):
        store.archive("parent", who="a")
    with pytest.raises(FlagError, match="one level"):
        store.create(flag("grandchild", dependencies=[{"feature": "child"}]), who="a")


def test_tokens_keep_only_a_hash_and_say_their_kind(store: FlagStore, db: str) -> None:
    client = store.create_token("sdk", "client")
    admin = store.create_token("ops", "admin")
    assert client.startswith("client:") and admin.startswith("admin:") and client != admin
    assert store.check_token(client) == Token("sdk", "client")
    assert store.check_token(admin) == Token("ops", "admin")
    assert store.check_token("client:guess") is None and store.check_token("") is None
    engine = sa.create_engine(db)
    with engine.connect() as raw:
        rows = raw.execute(sa.text("SELECT name, kind, secret_sha256 FROM tokens ORDER BY id")).all()
        dump = "\n".join(repr(row) for table in metadata.sorted_tables
                         for row in raw.execute(sa.select(table)))
    engine.dispose()
    assert tuple(rows[0]) == ("sdk", "client", hashlib.sha256(client.encode()).hexdigest())
    assert client not in dump and admin not in dump
    assert store.revision() == 0  # tokens are not part of the flag state


def test_changes_from_another_process_show_in_revision_and_state(store: FlagStore, db: str) -> None:
    script = ("import sys\nfrom turnout.flags.store import FlagStore\n"
              "s = FlagStore.open(sys.argv[1])\n"
              "s.create({'name': 'remote', 'enabled': True}, who='other')\ns.close()\n")
    before = store.revision()
    subprocess.run([sys.executable, "-c", script, db], check=True, timeout=60)
    assert store.revision() == before + 1
    assert [f["name"] for f in store.state()["features"]] == ["remote"]


def test_the_deployment_store_shares_the_database(store: FlagStore, db: str) -> None:
    store.create(flag(), who="a")
    with Store.open(db) as deployments:
        deployments.set_stable("shop", "v1-x")
    assert store.revision() == 1


def test_a_closed_store_raises_store_error(db: str) -> None:
    opened = FlagStore.open(db)
    opened.close()
    with pytest.raises(StoreError, match="closed"):
        opened.revision()


def test_an_unusable_url_is_a_store_error(tmp_path: Path) -> None:
    with pytest.raises(StoreError, match="cannot open"):
        FlagStore.open("nosuchdriver://x/y")
    (tmp_path / "dir.db").mkdir()
    with pytest.raises(StoreError):
        FlagStore.open(f"sqlite:///{tmp_path / 'dir.db'}")


def test_require_finds_archived_flags_and_names_missing_ones(tmp_path: Path) -> None:
    with FlagStore.open(f"sqlite:///{tmp_path / 'r.db'}") as store:
        store.create({"name": "old", "enabled": True, "strategies": []}, who="t")
        store.archive("old", who="t")
        assert store.require("old").archived
        with pytest.raises(FlagNotFound, match="no flag named 'nope'"):
            store.require("nope")
