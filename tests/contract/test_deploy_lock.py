"""The deployment lock as a lease in the state database, on SQLite and on PostgreSQL.

Real leases of a fraction of a second, real processes: one holder at a time, a lease
that ends is taken over and its old holder learns who took it, renewals keep it, a holder
on this machine whose process is gone is replaced at once (but not one elsewhere, nor a
live one), and of many processes claiming at the same moment exactly one wins.
"""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from turnout import procs
from turnout.service.lock import LeaseLock, this_process
from turnout.store import Store
from turnout.store.lease import Claimant

pytestmark = pytest.mark.timeout(60)

BACKENDS: dict[str, Callable[[pytest.FixtureRequest, Path], str]] = {
    "sqlite": lambda _request, tmp: f"sqlite:///{tmp / 'shared' / 'state.db'}",
    "postgresql": lambda request, _tmp: str(request.getfixturevalue("postgres_url")),
}
HOLDS = re.compile(r"^\S+@\S+ pid \d+ until \d\d:\d\d:\d\d$")


@pytest.fixture(params=list(BACKENDS))
def url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    return BACKENDS[request.param](request, tmp_path)


@pytest.fixture
def store(url: str) -> Iterator[Store]:
    with Store.open(url) as opened:
        yield opened


def elsewhere(pid: int = 4242, host: str = "ci-runner-2") -> Claimant:
    """A control plane on another machine (its own boot, so its pid says nothing here)."""
    return Claimant(holder=f"deploy@{host} pid {pid}", host=host,
                    pid_space=f"boot-of-{host} pid:[1]", pid=pid, pid_start=1)


def until(check: Callable[[], bool], what: str, seconds: float = 10.0) -> None:
    deadline = time.monotonic() + seconds
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting until {what}"
        time.sleep(0.02)


def test_one_holder_at_a_time_until_it_releases(store: Store) -> None:
    first = LeaseLock(store, "shop", this_process())
    second = LeaseLock(store, "shop", elsewhere())
    assert first.holder() is None
    assert first.try_acquire()
    assert not second.try_acquire()
    held = second.holder()
    assert held is not None and HOLDS.match(held) and f"pid {os.getpid()} until" in held
    assert LeaseLock(store, "cart", elsewhere()).try_acquire()  # another service: its own lock
    first.release()
    assert second.holder() is None
    assert second.try_acquire()
    assert first.holder() == second.holder()
    assert first.holder() is not None and first.holder().startswith("deploy@ci-runner-2 pid 4242 until")  # type: ignore[union-attr]


def test_an_ended_lease_is_taken_over_and_its_holder_learns_by_whom(store: Store) -> None:
    old = LeaseLock(store, "shop", elsewhere(), lease=0.5, renew=0.2)
    new = LeaseLock(store, "shop", elsewhere(77, "ci-runner-3"), lease=5, renew=1)
    assert old.try_acquire()
    began = time.monotonic()
    assert not new.try_acquire()
    until(new.try_acquire, "the first lease ends")
    assert time.monotonic() - began >= 0.4
    why = old.renew_once()
    assert why is not None and "taken over by deploy@ci-runner-3 pid 77 until" in why
    old.release()  # no longer its lease: left alone
    assert new.holder() is not None and "pid 77" in new.holder()  # type: ignore[operator]


@pytest.mark.serial  # a 1 s lease kept by renewals every 0.2 s
async def test_renewal_keeps_a_lease_past_its_first_end(store: Store) -> None:
    holder = LeaseLock(store, "shop", elsewhere(), lease=1.0, renew=0.2)
    other = LeaseLock(store, "shop", elsewhere(77, "ci-runner-3"))
    assert holder.try_acquire()
    lost: list[str] = []
    keeper = asyncio.create_task(holder.keep(lost.append))
    try:
        end = time.monotonic() + 2.5  # more than two leases
        while time.monotonic() < end:
            assert not other.try_acquire()
            await asyncio.sleep(0.05)
    finally:
        keeper.cancel()
        await asyncio.wait([keeper])
    assert lost == []
    holder.release()
    assert other.try_acquire()


async def test_keep_reports_a_lease_taken_over_while_its_renewals_stalled(store: Store) -> None:
    holder = LeaseLock(store, "shop", elsewhere(), lease=0.3, renew=0.1)
    other = LeaseLock(store, "shop", elsewhere(77, "ci-runner-3"))
    assert holder.try_acquire()
    until(other.try_acquire, "the stalled lease ends and another takes it")
    lost: list[str] = []
    await asyncio.wait_for(holder.keep(lost.append), 5)
    assert len(lost) == 1 and "taken over by deploy@ci-runner-3 pid 77 until" in lost[0]
    assert "pid 77" in (other.holder() or "")


def test_a_holder_elsewhere_is_waited_for_even_when_its_pid_is_free_here(store: Store) -> None:
    ghost = elsewhere(pid=2**22 + 17)  # no such process here: it says nothing about that machine
    assert not procs.is_running(ghost.pid, None)
    assert LeaseLock(store, "shop", ghost, lease=30, renew=10).try_acquire()
    assert not LeaseLock(store, "shop", this_process()).try_acquire()


def test_a_reused_pid_is_not_the_holder(store: Store) -> None:
    me = this_process()
    assert me.pid_start is not None
    before_me = Claimant(holder="old@here pid 1", host=me.host, pid_space=me.pid_space,
                         pid=me.pid, pid_start=me.pid_start - 1)  # my pid, another start time
    assert LeaseLock(store, "shop", before_me, lease=30, renew=10).try_acquire()
    assert LeaseLock(store, "shop", me).try_acquire()


HOLD_THEN_WAIT = """
import sys, time
from turnout.service.lock import LeaseLock, this_process
from turnout.store import Store
store = Store.open(sys.argv[1])
lock = LeaseLock(store, "shop", this_process(), lease=60, renew=20)
print("held" if lock.try_acquire() else "refused", flush=True)
sys.stdin.read()  # until the test closes our stdin or kills us
"""


def test_a_dead_holder_on_this_machine_is_replaced_at_once(store: Store, url: str) -> None:
    child = subprocess.Popen([sys.executable, "-c", HOLD_THEN_WAIT, url], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout is not None and child.stdout.readline().strip() == "held"
        mine = LeaseLock(store, "shop", this_process())
        assert not mine.try_acquire()  # alive, on this machine: held
        held = mine.holder()
        assert held is not None and f"pid {child.pid} until" in held
        child.kill()
        child.wait(timeout=10)
        assert mine.holder() is None  # its lease runs for a minute more, but nobody holds it
        assert mine.try_acquire()
    finally:
        child.kill()
        child.communicate(timeout=10)


CLAIM_AT = """
import sys, time
from turnout.service.lock import LeaseLock, this_process
from turnout.store import Store
store = Store.open(sys.argv[1])
lock = LeaseLock(store, "shop", this_process(), lease=60, renew=20)
time.sleep(max(0.0, float(sys.argv[2]) - time.time()))
print("won" if lock.try_acquire() else "lost", flush=True)
sys.stdin.read()
"""


def test_of_many_processes_claiming_at_once_exactly_one_wins(store: Store, url: str) -> None:
    at = time.time() + 3.0  # after every child has started and opened the store
    children = [subprocess.Popen([sys.executable, "-c", CLAIM_AT, url, str(at)], stdin=subprocess.PIPE,
                                 stdout=subprocess.PIPE, text=True) for _ in range(6)]
    try:
        said = [child.stdout.readline().strip() for child in children]  # type: ignore[union-attr]
        assert sorted(said) == ["lost"] * 5 + ["won"]
        winner = children[said.index("won")].pid
        lease = store.lease("shop")
        assert lease is not None and lease.who.pid == winner
    finally:
        for child in children:
            child.kill()
            child.communicate(timeout=10)
