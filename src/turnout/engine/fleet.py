"""The fleet as it really is: which instances run, per revision and slot, and what acts on them.

Steps name instances by revision and slot; `RunningFleet` keeps the instances that really
run (re-read from the store and the platform by `refresh`, so a resumed plan acts on the
world, not on memory) and does the work of the steps that start, check, route to, drain
and stop them. A routing table is built here from a `Route` step and the instances that
run, with the spec's limits and timeouts, and applied through the `Router` seam.

Instances die between steps (a crash after some requests), and health is checked only
when they start: so before a deployment's `Route` and before its `Promote`, what runs is
read again (`refresh`, one listing of the platform for the whole fleet, never a call per
instance), and once more before the deployment is said to have succeeded. Instances of
the deployment's target the step needs that are gone fail it, named, with the end of
one's log; gone instances of another revision are left out of the table with a warning
(a weighted pool left with none fails the step too).
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import httpx

from turnout.clock import Clock
from turnout.engine import health
from turnout.engine.control import Control, StepFailed, together
from turnout.engine.events import Event, Record
from turnout.errors import PlatformError, RouterError, TurnoutError
from turnout.model import Instance, Revision
from turnout.plan import Route, RunTests
from turnout.platforms.base import HostUnreachable, Platform
from turnout.routers.base import Router
from turnout.routers.table import Backend, MatchRule, Pool, RoutingTable, UserKey
from turnout.spec import Spec
from turnout.store.db import Store


class RunningFleet:
    def __init__(
        self, *, spec: Spec, store: Store, platform: Platform, router: Router, http: httpx.AsyncClient,
        clock: Clock, record: Record,
    ) -> None:
        self.spec, self.store, self.platform, self.router = spec, store, platform, router
        self.http, self.clock, self.record = http, clock, record
        self.running: dict[str, dict[int, Instance]] = {}
        self.lost: dict[str, str] = {}  # unreachable host -> why
        self.excused: set[tuple[str, int]] = set()  # (revision, slot) that stays empty: host lost
        self.gone: dict[tuple[str, int], Instance] = {}  # (revision, slot) -> the instance found gone
        self.left_out: set[str] = set()  # gone instances already warned about when routing
        self.lenient = False  # going back: carry on without lost hosts whatever the spec allows

    # --- lost hosts
    def lose(self, exc: HostUnreachable) -> None:
        """Note the hosts `exc` names as lost; StepFailed if that is more than the spec allows."""
        for host in exc.hosts:
            if host not in self.lost:
                self.lost[host] = str(exc)
                self.record(Event("warning", f"host {host} lost: {exc}; its instances get no traffic"))
        allowed = self.spec.platform.max_unavailable_hosts
        if not self.lenient and len(self.lost) > allowed:
            raise StepFailed(f"{exc} ({len(self.lost)} host(s) lost; platform.max_unavailable_hosts "
                             f"is {allowed})")

    # --- what runs
    async def refresh(self) -> None:
        """Reconcile the store with what the platform finds running (on every host).

        A record whose instance is gone is forgotten. An instance the store does not know is
        adopted when it is of one of this service's revisions in its slot's place (started
        just before a crash, before it was recorded); anything else is reported and left
        running, never stopped unasked.
        """
        try:
            found = {i.id: i for i in await self.platform.instances(self.spec.service)}
        except HostUnreachable as exc:
            found = {i.id: i for i in exc.found}
            self.lose(exc)
        except PlatformError as exc:
            raise StepFailed(f"cannot tell what runs: {exc}") from exc
        self.running = {}
        for record in self.store.instances(self.spec.service):
            instance = found.pop(record.instance.id, None)
            if instance is None and record.instance.host in self.lost:
                self.excused.add((record.instance.revision, record.instance.slot))  # kept: it may be back
            elif instance is None:
                self.store.remove_instance(record.instance.id)
                self.gone[(record.instance.revision, record.instance.slot)] = record.instance
            else:
                self.running.setdefault(instance.revision, {})[instance.slot] = record.instance
        for instance in found.values():
            slots = self.running.setdefault(instance.revision, {})
            if self.store.revision(instance.revision) is None or instance.slot in slots:
                self.record(Event("warning", f"{instance.id} runs on {instance.host} "
                                  f"({instance.address}) but the store does not know it: left running"))
                continue
            self.store.put_instance(instance, state="starting")
            slots[instance.slot] = instance
            self.record(Event("info", f"found {instance.id} on {instance.address}, started before "
                              "an interruption: taken back"))

    def slots(self, revision: str) -> tuple[int, ...]:
        return tuple(sorted(self.running.get(revision, {})))

    def missing(self, revision: str, slots: tuple[int, ...]) -> list[int]:
        """The slots that do not run, leaving out those whose host was lost (see `lose`)."""
        running = self.running.get(revision, {})
        return [slot for slot in slots if slot not in running and (revision, slot) not in self.excused]

    def exactly(self, revision: str, slots: tuple[int, ...]) -> list[Instance]:
        """The instances of these slots; StepFailed if one does not run, unless its host was
        lost and that is allowed (see `lose`): then it is left out."""
        if missing := self.missing(revision, slots):
            raise StepFailed(f"{revision} slots {missing} are not running{self._named(revision, missing)}")
        running = self.running.get(revision, {})
        return [running[slot] for slot in slots if slot in running]

    def _named(self, revision: str, slots: list[int]) -> str:
        gone = [self.gone[(revision, s)] for s in slots if (revision, s) in self.gone]
        return (": " + ", ".join(f"{i.id} (pid {i.pid}) is gone" for i in gone)) if gone else ""

    async def still_running(self, revision: str, slots: tuple[int, ...], when: str) -> None:
        """StepFailed, naming them with the end of one's log, if instances of these slots are
        gone as of the last `refresh` (`when` says what the step was about to do)."""
        if not (missing := self.missing(revision, slots)):
            return
        gone = [self.gone[(revision, s)] for s in missing if (revision, s) in self.gone]
        names = ", ".join(f"{i.id} (pid {i.pid})" for i in gone) or f"slots {missing}"
        tail = ""
        with contextlib.suppress(PlatformError):  # the log is a help, not a need
            tail = (await self.platform.log_tail(gone[0], lines=3)).strip() if gone else ""
        log = f"\n  log of {gone[0].id}: {tail}" if tail else ""
        raise StepFailed(f"{len(missing)} instance(s) of {revision} no longer run {when}: {names}{log}")

    async def whole(self, revision: str, when: str) -> None:
        """`revision`'s whole fleet (slots 0 to instances - 1) still runs, read again (one
        listing), else StepFailed naming what is gone: before it becomes the stable one, and
        before its deployment is said to have succeeded."""
        await self.refresh()
        await self.still_running(revision, tuple(range(self.spec.instances)), when)

    def present(self, revision: str, slots: tuple[int, ...]) -> list[Instance]:
        """The instances of these slots that run (a resumed stop finds fewer)."""
        running = self.running.get(revision, {})
        return [running[slot] for slot in slots if slot in running]

    def revision(self, revision_id: str) -> Revision:
        revision = self.store.revision(revision_id)
        if revision is None:
            raise StepFailed(f"revision {revision_id} is not in the store")
        return revision

    # --- starting and checking
    async def start(self, revision_id: str, slots: tuple[int, ...]) -> None:
        revision = self.revision(revision_id)
        running = self.running.setdefault(revision_id, {})

        async def start(slot: int) -> None:
            try:
                instance = await self.platform.start(revision, slot=slot)
            except HostUnreachable as exc:
                self.lose(exc)
                self.excused.add((revision_id, slot))
                self.record(Event("warning", f"{revision_id} slot {slot} not started: its host is lost"))
                return
            except PlatformError as exc:
                raise StepFailed(str(exc)) from exc
            self.store.put_instance(instance, state="starting")
            running[slot] = instance
            self.record(Event("info", f"started {instance.id} on {instance.address} (pid {instance.pid})"))

        # A batch starts at once (on many hosts, in parallel); a slot started before an
        # interruption that still runs is kept.
        await together(start(slot) for slot in slots if slot not in running)

    async def wait_healthy(self, revision_id: str, slots: tuple[int, ...]) -> None:
        """Every instance of the batch healthy; the first to fail fails the batch at once."""
        revision = self.revision(revision_id)
        instances = self.exactly(revision_id, slots)

        async def check(instance: Instance) -> None:
            try:
                await health.wait_healthy(self.http, self.platform, instance, revision.health, self.clock)
            except health.CheckFailed as exc:
                tail = (await self.platform.log_tail(instance, lines=5)).strip()
                raise StepFailed(str(exc) + (f"\n  log: {tail}" if tail else "")) from exc

        await together(check(i) for i in instances)
        for instance in instances:
            self.store.set_instance_state(instance.id, "ready")

    async def sick(self, instances: list[Instance]) -> dict[str, str]:
        """Those of `instances` that fail one probe of their health check (all probed at once),
        by id, with what went wrong."""
        async def probe(instance: Instance) -> tuple[str, str | None]:
            check = self.revision(instance.revision).health
            return instance.id, await health.probe(self.http, instance, check)

        return {i: why for i, why in await asyncio.gather(*(probe(i) for i in instances)) if why}

    async def run_tests(self, step: RunTests) -> None:
        """The blue-green tests, against the spec's preview address."""
        preview = f"http://{self.spec.reachable(self.spec.preview_listen())}"
        revision = self.revision(step.revision)
        for test in step.tests:
            await health.run_test(self.http, test, preview, revision=revision)
            self.record(Event("info", f"test passed: {test.model_dump(exclude_defaults=True)}"))

    # --- routing
    def table_settings(self) -> dict[str, Any]:
        """What every table carries from the spec besides pools: limits, timeouts, forwarding."""
        routing = self.spec.routing
        return {"limits": routing.limits, "timeouts": routing.timeouts,
                "buffer_requests": routing.buffer_requests, "trust_forwarded": routing.trust_forwarded}

    def table_for(self, step: Route, generation: int) -> RoutingTable:
        pools = [
            Pool(revision=p.revision, version=self.revision(p.revision).version, weight=p.weight,
                 backends=_backends(self.exactly(p.revision, p.slots)))
            for p in step.pools
        ]
        listed = {p.revision for p in pools}
        extra = [m.revision for m in step.match] + ([step.preview] if step.preview else [])
        for revision in dict.fromkeys(r for r in extra if r not in listed):
            running = [i for _, i in sorted(self.running.get(revision, {}).items())]
            pools.append(Pool(revision=revision, version=self.revision(revision).version, weight=0,
                              backends=_backends(running)))
        rules = tuple(MatchRule(**m.model_dump()) for m in step.match)
        key = self.spec.routing.user_key
        return RoutingTable(
            generation=generation, pools=tuple(pools), rules=rules,
            user_key=UserKey(header=key.header, cookie=key.cookie), preview=step.preview,
            **self.table_settings(),
        )

    async def next_generation(self) -> int:
        current = await self.router.table()
        return (current.generation if current else 0) + 1

    async def route(self, step: Route, *, target: str | None = None) -> None:
        """Apply the table `step` describes, built from the instances that really run. With
        `target` (the deployment's new revision), what runs is read again first: see the
        module's docstring."""
        if target is not None:
            step = await self._rechecked(step, target)
        table = self.table_for(step, await self.next_generation())
        try:
            await self.router.apply(table)
        except RouterError as exc:
            raise StepFailed(f"router: {exc}") from exc
        split = ", ".join(f"{p.version} {table.share(p.revision):.0f}%" for p in table.pools if p.weight)
        self.record(Event("traffic", f"traffic: {split or 'none'}",
                          data={"generation": table.generation, "weights": table.weights(),
                                "shares": {p.version: round(table.share(p.revision), 1)
                                           for p in table.pools if p.weight}}))

    async def _rechecked(self, step: Route, target: str) -> Route:
        """`step` for what runs now (one listing): StepFailed if instances of `target` in its
        pools are gone; gone ones of other revisions left out, with a warning once each."""
        await self.refresh()
        pools = []
        for pool in step.pools:
            missing = self.missing(pool.revision, pool.slots)
            if pool.revision == target:
                await self.still_running(target, pool.slots, "before the traffic change")
            if pool.revision == target or not missing or (pool.weight and len(missing) == len(pool.slots)):
                pools.append(pool)  # a weighted pool with nothing left fails in `exactly`, naming them
                continue
            pools.append(pool.model_copy(update={"slots": tuple(s for s in pool.slots if s not in missing)}))
            names = [self.gone[(pool.revision, s)].id if (pool.revision, s) in self.gone
                     else f"{pool.revision} slot {s}" for s in missing]
            if fresh := [name for name in names if name not in self.left_out]:
                self.left_out.update(fresh)
                self.record(Event("warning", f"{', '.join(fresh)} no longer run: left out of the table"))
        return step.model_copy(update={"pools": tuple(pools)})

    async def route_nowhere(self) -> None:
        """A table that sends no traffic anywhere (a first release went back)."""
        table = RoutingTable(generation=await self.next_generation(), **self.table_settings())
        await self.router.apply(table)
        self.record(Event("traffic", "traffic: none", data={"weights": {}, "shares": {}}))

    async def serving(self) -> str:
        """What the router's table sends traffic to now, and how much of it runs: for humans."""
        try:
            table = await self.router.table()
            await self.refresh()
        except TurnoutError as exc:
            return f"what serves now is unknown: {exc}"
        pools = [p for p in table.pools if p.weight] if table is not None else []
        if table is None or not pools:
            return "now serving: nothing (the router's table sends no traffic anywhere)"
        parts = []
        for pool in pools:
            ids = {i.id for i in self.running.get(pool.revision, {}).values()}
            alive = sum(1 for b in pool.backends if b.id in ids)
            parts.append(f"{pool.version} {table.share(pool.revision):.0f}% "
                         f"({alive} of {len(pool.backends)} instances running)")
        return "now serving: " + ", ".join(parts)

    # --- retiring
    async def drain(self, instances: list[Instance], control: Control | None = None) -> None:
        """Wait until the router has no request in flight to each (at most the drain timeout; the
        whole of it for a router that cannot tell)."""
        deadline = self.clock.now() + self.spec.routing.drain_timeout
        for instance in instances:
            self.store.set_instance_state(instance.id, "draining")
            while (drained := await self.router.drained(instance.id)) is not True:
                if self.clock.now() >= deadline:
                    if drained is False:
                        self.record(Event("warning", f"{instance.id} still busy after the drain timeout"))
                    return
                if control is not None:
                    control.check()
                await self.clock.sleep(0.05)

    async def stop(self, instances: list[Instance]) -> None:
        async def stop_one(instance: Instance) -> None:
            revision = self.store.revision(instance.revision)
            grace = revision.run.grace if revision else 10.0
            try:
                await self.platform.stop(instance, grace=grace)
            except HostUnreachable as exc:
                self.lose(exc)  # its record stays: stopped when the host is back (`tidy`)
                self.running.get(instance.revision, {}).pop(instance.slot, None)
                self.record(Event("warning", f"{instance.id} left on {instance.host}: host lost"))
                return
            self.store.remove_instance(instance.id)
            self.running.get(instance.revision, {}).pop(instance.slot, None)

        await together(stop_one(i) for i in instances)


def _backends(instances: list[Instance]) -> tuple[Backend, ...]:
    return tuple(Backend(id=i.id, address=i.address) for i in instances)
