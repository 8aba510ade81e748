"""What every command of a `Session` shares: its collaborators and how they are opened,
the per-service deployment lock, the flag store, the executor, running a new plan or
resuming a stored one to its end, tidying, and ending rollback windows on time.

`turnout.service.session` builds the commands on this base; nothing here decides what a
command does, only how a session holds and runs what it is given.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Self

import httpx

from turnout import reaper, wiring
from turnout.clock import Clock, SystemClock
from turnout.engine.events import Emit, Event, ignore
from turnout.engine.executor import Executor
from turnout.errors import ConflictError, StoreError, TurnoutError
from turnout.flags.store import FlagStore
from turnout.model import Instance, Revision
from turnout.plan import Step, dump_plan, plan_hash
from turnout.platforms.base import Platform
from turnout.routers.base import Router
from turnout.service import lock as locks
from turnout.spec import Spec
from turnout.statedir import StateDir
from turnout.store.db import DeploymentRecord, Store

LOCK_WAIT = 60.0  # how long a command waits for a short one (not a deployment) to release the lock


@dataclass
class SessionBase:
    """One service's spec and the collaborators built from it, held for one command."""

    spec: Spec
    spec_dir: Path
    state: StateDir
    store: Store
    platform: Platform
    router: Router
    http: httpx.AsyncClient
    clock: Clock = field(default_factory=SystemClock)
    emit: Emit = ignore
    executor: Executor | None = None
    _flags: FlagStore | None = None
    spec_path: Path | None = None  # what the reaper reads again, with the same overrides
    overrides: tuple[str, ...] = ()
    _lock: locks.DeployLock | None = None
    _lock_lost: str | None = None  # why the held lock slipped away, once it did

    @classmethod
    @contextlib.asynccontextmanager
    async def open(
        cls, spec_path: Path, overrides: tuple[str, ...] = (), *, emit: Emit = ignore
    ) -> AsyncIterator[Self]:
        spec = wiring.load_spec(spec_path, overrides)
        state = StateDir.for_spec(spec_path).create()
        spec_dir = state.spec_dir
        store = Store.open(state.database_url)
        platform = wiring.build_platform(spec, state)
        router = wiring.build_router(spec, state)
        async with httpx.AsyncClient(trust_env=False) as http:
            session = cls(spec, spec_dir, state, store, platform, router, http, emit=emit,
                          spec_path=spec_dir / spec_path.name, overrides=overrides)
            try:
                yield session
            finally:
                await router.aclose()
                await platform.aclose()
                if session._flags is not None:
                    session._flags.close()
                store.close()

    # -- locking ------------------------------------------------------------------

    @property
    def deploy_lock(self) -> locks.DeployLock:
        """The service's lock: an flock beside the local SQLite file, else a lease in the
        shared database (see `turnout.service.lock`)."""
        if self._lock is None:
            self._lock = locks.for_state(self.state, self.store, self.spec.service)
        return self._lock

    @contextlib.asynccontextmanager
    async def lock(self, *, wait: float = LOCK_WAIT) -> AsyncIterator[None]:
        """Hold the service's deployment lock or raise ConflictError naming its holder.

        A deployment in progress is refused at once. A holder without one is a short command
        (a status-like check, the reaper stopping a warm fleet): it is waited for up to `wait`.
        If the lock slips away while held (a lease taken over), the running deployment stops
        before its next step and this raises ConflictError.
        """
        lock = self.deploy_lock
        deadline = time.monotonic() + wait
        told = False
        while not lock.try_acquire():
            active = self.store.active_deployment(self.spec.service)
            if active is not None or time.monotonic() >= deadline:
                what = f"deployment #{active.id} of {active.version}" if active else "another command"
                holder = lock.holder()
                raise ConflictError(
                    f"{what} is in progress for {self.spec.service}"
                    f"{f', held by {holder}' if holder else ''}; "
                    "watch it with `turnout status`, or use `turnout promote` / `turnout abort`"
                )
            if not told:
                self.emit(Event("info", "waiting for another turnout command to finish"))
                told = True
            await asyncio.sleep(0.1)
        self._lock_lost = None
        keeper = asyncio.create_task(lock.keep(self._lost))
        try:
            yield
        finally:
            keeper.cancel()
            await asyncio.wait([keeper])
            self._release(lock)
        if self._lock_lost is not None:
            raise ConflictError(self._lock_lost)

    def _lost(self, why: str) -> None:
        """The held lock slipped away: say so loudly, and stop the deployment at its next step."""
        self._lock_lost = (f"lost the deployment lock of {self.spec.service}: {why}; stopped before "
                           "the next step, undoing nothing (`turnout status` shows where it stands)")
        self.emit(Event("warning", self._lock_lost))
        if self.executor is not None:
            self.executor.halt(self._lock_lost)

    def _release(self, lock: locks.DeployLock) -> None:
        try:
            lock.release()
        except StoreError as exc:
            self.emit(Event("warning", f"could not release the deployment lock ({exc}): it frees "
                                       f"itself when its lease ends, within {locks.LEASE:.0f}s"))

    def locked(self) -> bool:
        """True while some process holds the deployment lock."""
        return self.deploy_lock.holder() is not None

    @property
    def flags(self) -> FlagStore:
        """The flag store, in the same database, opened on first use."""
        if self._flags is None:
            self._flags = FlagStore.open(self.state.database_url)
        return self._flags

    def uses_flags(self) -> bool:
        return bool(self.spec.routing.flags) or self.spec.strategy.kind == "feature-toggle"

    async def sync_flags(self) -> None:
        """Give the router the current flags and the names it evaluates for each request
        (none when the app evaluates the toggle's flag and the router evaluates no other)."""
        evaluate = self.spec.router_flags()
        if not evaluate:
            return
        header = self.spec.routing.flags_header
        state = self.flags.state()  # its meta.revision is read in the same transaction
        await self.router.set_flags(state, evaluate=evaluate, header=header,
                                    revision=state["meta"]["revision"])

    def new_executor(self) -> Executor:
        source, judge = wiring.analysis(self.spec, self.router)
        self.executor = Executor(
            spec=self.spec, store=self.store, platform=self.platform, router=self.router,
            clock=self.clock, emit=self.emit, http=self.http, source=source, judge=judge,
            flags=self.flags if self.uses_flags() else None,
        )
        if self._lock_lost is not None:
            self.executor.halt(self._lock_lost)
        return self.executor

    def request_abort(self) -> None:
        if self.executor is not None:
            self.executor.request_abort()

    # -- running a plan, tidying -------------------------------------------------

    async def _run_new(
        self, revision: Revision, previous: str | None, kind: str, plan: list[Step]
    ) -> DeploymentRecord:
        record = self.store.create_deployment(
            service=self.spec.service, version=revision.version, target_revision=revision.id,
            previous_revision=previous, strategy=kind, plan=dump_plan(plan),
            plan_hash=plan_hash(plan), owner_pid=os.getpid(),
        )
        self.emit(Event("info", f"deployment #{record.id}: {revision.version} with {kind}, {len(plan)} steps",
                        data={"deployment": record.id}))
        assert self.executor is not None
        done = await self.executor.run(record)
        self._reap_warm_later()
        return done

    async def _resume(self, record: DeploymentRecord) -> DeploymentRecord:
        record = self.store.update_deployment(record.id, owner_pid=os.getpid(), phase="progressing")
        assert self.executor is not None
        done = await self.executor.run(record)
        self._reap_warm_later()
        return done

    async def tidy(self) -> None:
        """Stop what nothing needs: warm fleets past their window and orphaned instances."""
        stable = self.store.stable(self.spec.service)
        now = self.clock.wall()
        table = await self.router.table() if (await self.router.describe()).running else None
        routed = table.backend_ids() if table else set()
        records = {r.instance.id: r for r in self.store.instances(self.spec.service)}

        async def stop(instance: Instance) -> None:
            self.emit(Event("info", f"stopping {instance.id}: no longer needed"))
            revision = self.store.revision(instance.revision)
            await self.platform.stop(instance, grace=revision.run.grace if revision else 5.0)
            self.store.remove_instance(instance.id)

        leaving = []
        for instance in await self.platform.instances(self.spec.service):
            record = records.get(instance.id)
            if record is None and self.store.revision(instance.revision) is None:
                self.emit(Event("warning", f"{instance.id} runs on {instance.address} but the store "
                                "does not know its revision: left running"))
                continue
            warm = record is not None and record.state == "warm" and (record.warm_until or 0) > now
            if not (instance.revision == stable or instance.id in routed or warm):
                leaving.append(instance)
        await asyncio.gather(*(stop(i) for i in leaving))  # at once: the lock is held meanwhile

    # -- the end of rollback windows ---------------------------------------------

    def _warm_until(self, *, after: float) -> float | None:
        """The earliest end of a rollback window later than `after`, if a fleet is warm."""
        ends = [r.warm_until for r in self.store.instances(self.spec.service)
                if r.state == "warm" and r.warm_until is not None and r.warm_until > after]
        return min(ends, default=None)

    def _reap_warm_later(self) -> None:
        """Holding the lock: if a fleet is warm, have a reaper end its window on time."""
        if self.spec_path is None:
            return
        if self._warm_until(after=float("-inf")) is None:
            reaper.stop(self.state)  # nothing left for it to do (say, a rollback flipped back)
            return
        try:
            pid = reaper.start(self.state, self.spec_path, self.overrides)
        except OSError as exc:
            self.emit(Event("warning", f"cannot start the reaper ({exc}): the next turnout command "
                                       "stops the warm fleet"))
            return
        self.emit(Event("info", f"the warm fleet is stopped when its window ends (reaper pid {pid})"))

    async def reap_warm(self, *, retry: float = 2.0, patience: float = 600.0) -> None:
        """Sleep until each rollback window ends, then tidy as the next command would.

        A deployment in progress (the lock held, or an interrupted one in the store) is
        waited for, retrying every `retry` seconds for at most `patience` seconds.
        """
        due = self._warm_until(after=float("-inf"))
        while due is not None:
            await self.clock.sleep(max(0.0, due - self.clock.wall()) + 0.1)
            if not await self._tidy_when_free(retry, patience):
                return
            due = self._warm_until(after=self.clock.wall())

    async def _tidy_when_free(self, retry: float, patience: float) -> bool:
        deadline = self.clock.now() + patience
        while True:
            try:
                async with self.lock(wait=0):
                    if self.store.active_deployment(self.spec.service) is None:
                        await self.tidy()
                        return True
                    problem = "a deployment is in progress"
            except ConflictError:
                problem = "another command holds the deployment lock"
            except TurnoutError as exc:
                problem = str(exc)
            if self.clock.now() >= deadline:
                self.emit(Event("warning", f"gave up waiting: {problem}; the next command tidies"))
                return False
            await self.clock.sleep(retry)
