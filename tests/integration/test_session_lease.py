"""A session on a shared PostgreSQL database holds its deployment lock as a lease, and a
deployment whose lease was taken over stops where it stands, loudly, undoing nothing.

The session runs `Session.deploy` for real (executor, store, lock) over the fake platform
and router; only the lease is made short, so its renewals show within a second.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from turnout.engine.events import Event
from turnout.errors import ConflictError
from turnout.service import Session
from turnout.service.lock import FileLock, LeaseLock, for_state, this_process
from turnout.spec import Spec
from turnout.statedir import StateDir
from turnout.store import Store
from turnout.testing import FakePlatform, FakeRouter, Journal, fake_http

pytestmark = pytest.mark.timeout(60)

SPEC: dict[str, Any] = {
    "service": "shop",
    "listen": "127.0.0.1:8080",
    "instances": 2,
    "run": {"command": ["app", "--port", "{port}"], "grace": "1s"},
    "health": {"path": "/healthz", "interval": "50ms", "deadline": "5s"},
    "routing": {"drain_timeout": "1s"},
    "strategy": {"kind": "canary", "steps": [{"weight": 50}, {"pause": "forever"}]},
}


@pytest.fixture
async def session(postgres_url: str, tmp_path: Path) -> AsyncIterator[Session]:
    state = StateDir(path=tmp_path / ".turnout", database_url=postgres_url).create()
    journal = Journal()
    platform, router = FakePlatform(journal=journal), FakeRouter(journal=journal)
    with Store.open(postgres_url) as store:
        async with fake_http(platform) as http:
            opened = Session(Spec.model_validate(SPEC), tmp_path, state, store, platform, router, http)
            opened._lock = LeaseLock(store, "shop", this_process(), lease=1.5, renew=0.2)
            yield opened


@pytest.mark.serial  # a 1.5 s lease kept by renewals every 0.2 s
async def test_a_taken_lease_stops_the_deployment_where_it_stands(
    session: Session, postgres_url: str
) -> None:
    router = session.router
    assert isinstance(router, FakeRouter)
    first = await session.deploy("v1")
    assert first is not None and first.phase == "succeeded"
    assert not session.locked()  # released at the end of the command

    events: list[Event] = []
    session.emit = events.append
    task = asyncio.create_task(session.deploy("v2"))
    for _ in range(200):
        active = session.store.active_deployment("shop")
        if active is not None and active.phase == "paused":
            break
        await asyncio.sleep(0.05)
    else:
        raise AssertionError("the canary never paused")
    await asyncio.sleep(2.0)  # more than a lease: its renewals keep it
    assert session.locked() and not task.done()
    tables = len(router.tables)

    engine = sa.create_engine(postgres_url)  # another control plane takes the row over
    with engine.begin() as conn:
        conn.execute(sa.text("UPDATE deploy_locks SET token = 'theirs', holder = 'deploy@ci-9 pid 9',"
                             " pid_space = 'boot-of-ci-9', expires_at = expires_at + 60"))
    engine.dispose()
    with pytest.raises(ConflictError) as caught:
        await asyncio.wait_for(task, 10)
    message = str(caught.value)
    assert message.startswith("lost the deployment lock of shop: the lease ended and was taken over "
                              "by deploy@ci-9 pid 9 until")
    assert any(e.kind == "warning" and e.message == message for e in events)
    stored = session.store.active_deployment("shop")
    assert stored is not None and stored.phase == "paused" and stored.version == "v2"
    assert len(router.tables) == tables
    lease = session.store.lease("shop")
    assert lease is not None and lease.token == "theirs"  # not released: it is theirs


def test_the_lock_is_an_flock_beside_the_local_file_and_a_lease_elsewhere(tmp_path: Path) -> None:
    local = StateDir.beside(tmp_path, env={}).create()
    shared = StateDir.beside(tmp_path, env={"TURNOUT_DATABASE_URL": f"sqlite:///{tmp_path / 'x.db'}"})
    with Store.open(local.database_url) as store:
        flock = for_state(local, store, "shop")
        assert isinstance(flock, FileLock) and flock.holder() is None
        assert flock.try_acquire()
        other = for_state(local, store, "shop")
        assert not other.try_acquire()
        assert other.holder() == this_process().holder  # what the holder wrote in the file
        flock.release()
        assert other.holder() is None and other.try_acquire()
        other.release()
        assert isinstance(for_state(shared, store, "shop"), LeaseLock)
