"""One suite for every store backend: each method of `Store`, as the engine relies on it.

`ALL_STORES` names each backend and how to get a fresh, empty database of it per test:
an SQLite file in the test's folder, or a scratch database on the session's throwaway
PostgreSQL server (`tests.pg`), dropped after the test.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext

from turnout.errors import ConflictError, StoreError
from turnout.model import Instance, Revision
from turnout.spec import Spec
from turnout.store import DeploymentRecord, Event, InstanceRecord, Store
from turnout.store.schema import metadata

ALL_STORES: dict[str, Callable[[pytest.FixtureRequest, Path], str]] = {
    "sqlite": lambda _request, tmp: f"sqlite:///{tmp / 'state.db'}",
    "postgresql": lambda request, _tmp: str(request.getfixturevalue("postgres_url")),
}


class Ticker:
    """A wall clock that moves one second per reading, so timestamps are predictable."""

    def __init__(self) -> None:
        self.value = 1000.0

    def __call__(self) -> float:
        self.value += 1.0
        return self.value


@pytest.fixture(params=list(ALL_STORES))
def url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """The URL of a fresh, empty database of each backend."""
    return ALL_STORES[request.param](request, tmp_path)


@pytest.fixture
def store(url: str) -> Iterator[Store]:
    with Store.open(url, now=Ticker()) as opened:
        yield opened


def rev(version: str, service: str = "shop", command: str = "app") -> Revision:
    spec = Spec.model_validate({"service": service, "run": {"command": [command, "{port}"]}})
    return Revision.of(spec, version)


def deploy(store: Store, version: str = "v2", service: str = "shop",
           previous: str | None = "v1-x") -> DeploymentRecord:
    return store.create_deployment(
        service=service, version=version, target_revision=f"{version}-x",
        previous_revision=previous, strategy="canary",
        plan=[{"kind": "start", "count": 1}, {"kind": "weight", "weight": 10}],
        plan_hash="abc", owner_pid=4242,
    )


def inst(slot: int, revision: str = "v2-x", service: str = "shop") -> Instance:
    return Instance(service=service, revision=revision, version=revision.split("-", 1)[0],
                    slot=slot, host="127.0.0.1", port=9000 + slot, pid=100 + slot,
                    started=55.0)


# -- revisions and stable ----------------------------------------------------------------
def test_revisions_round_trip_newest_first_and_idempotent(store: Store) -> None:
    v1, v2, other = rev("v1"), rev("v2"), rev("v1", service="cart", command="cart")
    for revision in (v1, v2, other, v1):
        store.save_revision(revision)
    assert store.revision(v1.id) == v1
    assert store.revision("nope") is None
    assert store.revisions("shop") == [v2, v1]
    assert store.revisions("cart") == [other]
    assert store.revisions("none") == []


def test_same_version_in_two_services_is_two_revisions(store: Store) -> None:
    shop, cart = rev("v1"), rev("v1", service="cart")
    assert shop.id != cart.id  # the revision hash covers the service
    store.save_revision(shop)
    store.save_revision(cart)
    assert store.revisions("cart") == [cart] and store.revisions("shop") == [shop]


def test_revision_id_taken_by_another_service_is_refused(store: Store) -> None:
    store.save_revision(rev("v1"))
    twin = rev("v1", service="cart").model_copy(update={"hash": rev("v1").hash})
    with pytest.raises(StoreError, match="already taken by service shop"):
        store.save_revision(twin)
    assert store.revisions("cart") == []


def test_same_version_with_other_settings_is_another_revision(store: Store) -> None:
    first, second = rev("v1"), rev("v1", command="app2")
    store.save_revision(first)
    store.save_revision(second)
    assert first.id != second.id
    assert store.revisions("shop") == [second, first]


def test_stable_pointer(store: Store) -> None:
    assert store.stable("shop") is None
    store.set_stable("shop", "v1-x")
    store.set_stable("cart", "c1-x")
    assert store.stable("shop") == "v1-x"
    store.set_stable("shop", "v2-x")
    assert store.stable("shop") == "v2-x"
    store.set_stable("shop", None)
    assert store.stable("shop") is None
    assert store.stable("cart") == "c1-x"


# -- deployments -------------------------------------------------------------------------
def test_create_and_read_deployment(store: Store) -> None:
    created = deploy(store)
    assert created.id > 0
    assert (created.service, created.version, created.target_revision) == ("shop", "v2", "v2-x")
    assert created.previous_revision == "v1-x" and created.strategy == "canary"
    assert created.plan == [{"kind": "start", "count": 1}, {"kind": "weight", "weight": 10}]
    assert (created.plan_hash, created.step, created.phase, created.message) == ("abc", 0,
                                                                              "progressing", "")
    assert not created.abort_requested and not created.promote_requested
    assert created.owner_pid == 4242 and created.finished_at is None
    assert created.created_at == created.updated_at
    assert created.active
    assert store.deployment(created.id) == created
    assert store.deployment(created.id + 100) is None
    assert store.active_deployment("shop") == created
    assert store.active_deployment("cart") is None


def test_one_active_deployment_per_service(store: Store) -> None:
    first = deploy(store)
    with pytest.raises(ConflictError, match="is progressing"):
        deploy(store, version="v3")
    other = deploy(store, service="cart")
    assert store.active_deployment("cart") == other
    store.update_deployment(first.id, phase="failed")
    second = deploy(store, version="v3")
    assert store.active_deployment("shop") == second


def test_update_deployment_fields(store: Store) -> None:
    created = deploy(store)
    moved = store.update_deployment(created.id, step=2, message="weight 10%")
    assert (moved.step, moved.message, moved.phase) == (2, "weight 10%", "progressing")
    assert moved.owner_pid == 4242 and moved.updated_at > created.updated_at
    paused = store.update_deployment(created.id, phase="paused", owner_pid=None)
    assert paused.phase == "paused" and paused.active and paused.owner_pid is None
    assert paused.finished_at is None and paused.step == 2
    new_plan = [{"kind": "stop"}]
    replanned = store.update_deployment(created.id, plan=new_plan, plan_hash="def", owner_pid=7)
    assert (replanned.plan, replanned.plan_hash, replanned.owner_pid) == (new_plan, "def", 7)
    assert store.deployment(created.id) == replanned


@pytest.mark.parametrize("phase", ["succeeded", "aborted", "failed"])
def test_final_phase_sets_finished_at(store: Store, phase: str) -> None:
    created = deploy(store)
    done = store.update_deployment(created.id, phase=phase)
    assert done.phase == phase and not done.active
    assert done.finished_at == done.updated_at
    assert store.active_deployment("shop") is None


def test_update_unknown_deployment_or_phase(store: Store) -> None:
    with pytest.raises(StoreError, match="no deployment 99"):
        store.update_deployment(99, step=1)
    created = deploy(store)
    with pytest.raises(ValueError, match="unknown phase"):
        store.update_deployment(created.id, phase="exploded")


def test_abort_and_promote_requests(store: Store) -> None:
    created = deploy(store)
    store.request(created.id, "abort")
    assert store.deployment(created.id).abort_requested  # type: ignore[union-attr]
    store.request(created.id, "promote")
    both = store.deployment(created.id)
    assert both is not None and both.abort_requested and both.promote_requested
    store.clear_request(created.id, "abort")
    after = store.deployment(created.id)
    assert after is not None and not after.abort_requested and after.promote_requested
    store.clear_request(created.id, "promote")
    cleared = store.deployment(created.id)
    assert cleared is not None and not cleared.promote_requested
    with pytest.raises(StoreError):
        store.request(created.id + 1, "abort")


def test_history_newest_first_with_limit(store: Store) -> None:
    ids = []
    for version in ("v2", "v3", "v4"):
        record = deploy(store, version=version)
        store.update_deployment(record.id, phase="succeeded")
        ids.append(record.id)
    deploy(store, service="cart")
    assert [d.id for d in store.history("shop")] == ids[::-1]
    assert [d.version for d in store.history("shop", limit=2)] == ["v4", "v3"]
    assert store.history("none") == []


def test_events_in_order(store: Store) -> None:
    first, second = deploy(store), deploy(store, service="cart")
    store.add_event(first.id, step=0, kind="step", message="start 1 instance")
    store.add_event(second.id, step=0, kind="step", message="elsewhere")
    store.add_event(first.id, step=1, kind="gate", message="healthy")
    got = store.events(first.id)
    assert [(e.step, e.kind, e.message) for e in got] == [
        (0, "step", "start 1 instance"), (1, "gate", "healthy")]
    assert all(isinstance(e, Event) for e in got)
    assert got[0].at < got[1].at
    assert store.events(12345) == []


def test_events_keep_their_data(store: Store) -> None:
    dep = deploy(store)
    evidence = {"canary": {"requests": 120, "error_rate": 0.0}, "baseline": None}
    store.add_event(dep.id, step=2, kind="traffic", message="traffic: v2 10%",
                    data={"weights": {"v2": 10, "v1": 90}})
    store.add_event(dep.id, step=3, kind="gate", message="Successful: fine",
                    data={"verdict": "Successful", "evidence": evidence})
    store.add_event(dep.id, step=3, kind="gate", message="Failed: errors",
                    data={"verdict": "Failed", "evidence": {}})
    store.add_event(dep.id, step=4, kind="info", message="no data")
    got = store.events(dep.id)
    assert [e.data for e in got] == [{"weights": {"v2": 10, "v1": 90}},
                                     {"verdict": "Successful", "evidence": evidence},
                                     {"verdict": "Failed", "evidence": {}}, {}]
    assert [e.id for e in got] == sorted(e.id for e in got) and len({e.id for e in got}) == 4
    assert [e.message for e in store.events(dep.id, kind="gate")] == ["Successful: fine", "Failed: errors"]
    last = store.last_event(dep.id, "gate")
    assert last is not None and (last.step, last.data["verdict"]) == (3, "Failed")
    assert store.last_event(dep.id, "phase") is None


def test_event_for_unknown_deployment_is_a_store_error(store: Store) -> None:
    with pytest.raises(StoreError):
        store.add_event(12345, step=0, kind="step", message="orphan")


# -- instances ---------------------------------------------------------------------------
def test_instances_upsert_state_and_remove(store: Store) -> None:
    a, b, c = inst(0), inst(1), inst(0, revision="c1-x", service="cart")
    store.put_instance(a, state="starting")
    store.put_instance(b, state="healthy", warm_until=2000.0)
    store.put_instance(c, state="healthy")
    assert store.instances("shop") == [
        InstanceRecord(a, "starting", None), InstanceRecord(b, "healthy", 2000.0)]
    moved = Instance(**{**a.to_json(), "port": 9999, "pid": 5})  # type: ignore[arg-type]
    store.put_instance(moved, state="healthy")
    assert store.instances("shop")[0] == InstanceRecord(moved, "healthy", None)
    store.set_instance_state(b.id, "warm", warm_until=3000.0)
    assert store.instances("shop")[1] == InstanceRecord(b, "warm", 3000.0)
    store.set_instance_state(b.id, "draining")
    assert store.instances("shop")[1] == InstanceRecord(b, "draining", None)
    store.remove_instance(a.id)
    store.remove_instance(a.id)
    assert [r.instance for r in store.instances("shop")] == [b]
    assert [r.instance for r in store.instances("cart")] == [c]
    with pytest.raises(StoreError, match="no instance"):
        store.set_instance_state("ghost-0", "healthy")


def test_closed_store_raises_store_error(store: Store) -> None:
    store.close()
    with pytest.raises(StoreError, match="closed"):
        store.stable("shop")
    store.close()


# -- the schema ----------------------------------------------------------------------------
def test_migrations_build_the_tables_the_code_uses(url: str) -> None:
    Store.open(url).close()
    engine = sa.create_engine(url)
    with engine.connect() as conn:
        differences = compare_metadata(MigrationContext.configure(conn), metadata)
    engine.dispose()
    assert differences == []


def test_three_processes_opening_a_fresh_database_at_once(url: str) -> None:
    opener = ("import sys\nfrom turnout.store import Store\n"
              "with Store.open(sys.argv[1]) as store:\n    store.set_stable(sys.argv[2], 'r')\n")
    children = [subprocess.Popen([sys.executable, "-c", opener, url, name], stderr=subprocess.PIPE,
                                 text=True) for name in ("one", "two", "three")]
    said = [child.communicate(timeout=60)[1] for child in children]  # every child ends first
    assert [child.returncode for child in children] == [0, 0, 0], said
    with Store.open(url) as store:
        assert [store.stable(name) for name in ("one", "two", "three")] == ["r"] * 3
