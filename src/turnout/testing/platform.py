"""`FakePlatform`: instances as records, and `fake_http` to answer HTTP for them."""

from __future__ import annotations

import asyncio
import copy
import itertools
from collections.abc import Callable

import httpx

from turnout.errors import PlatformError
from turnout.model import Instance, Revision
from turnout.platforms.base import HostUnreachable
from turnout.spec import Spec
from turnout.statedir import StateDir
from turnout.testing.journal import Journal, named


class FakePlatform:
    """A `Platform` whose instances are records; every start gets a new port and pid.

    Like the local platform, starting a slot whose instance still runs returns that
    instance (a step run twice), and `reopen()` finds the live ones again.
    """

    @classmethod
    def build(cls, spec: Spec, state: StateDir) -> FakePlatform:
        """For `turnout.wiring` registries in tests."""
        return cls()

    def __init__(
        self, *, host: str = "127.0.0.1", first_port: int = 41_000, journal: Journal | None = None,
        per_host: int = 0,
    ) -> None:
        self.host = host
        self.per_host = per_host  # > 0: slot s is on host 127.0.0.<1 + s // per_host>
        self.lost_hosts: set[str] = set()  # every call that needs one of these raises HostUnreachable
        self.journal = journal or Journal()
        self.fail_start: set[str] = set()  # start raises PlatformError
        self.exit_on_start: set[str] = set()  # the process is gone right after start
        self.unhealthy: set[str] = set()  # the health check answers 500
        self.started: list[Instance] = []
        self.stopped: list[tuple[Instance, float]] = []  # (instance, grace)
        self.closed = False
        self._ports = itertools.count(first_port)
        self._pids = itertools.count(5_000)
        self._running: dict[str, Instance] = {}  # id -> the latest copy started
        self._dead: set[Instance] = set()

    # -- Platform ------------------------------------------------------------------
    def host_of(self, slot: int) -> str:
        return f"127.0.0.{1 + slot // self.per_host}" if self.per_host else self.host

    def _reach(self, host: str) -> None:
        if host in self.lost_hosts:
            raise HostUnreachable(f"host {host}: unreachable (told to be)", hosts=(host,))

    async def start(self, revision: Revision, *, slot: int) -> Instance:
        await asyncio.sleep(0)
        self._reach(self.host_of(slot))
        if named(self.fail_start, revision.id, revision.version, slot):
            raise PlatformError(f"cannot start {revision.id} slot {slot}: told to fail")
        existing = self._running.get(f"{revision.id}-{slot}")
        if existing is not None and self._is_alive(existing):
            return existing
        pid = next(self._pids)
        instance = Instance(
            service=revision.service, revision=revision.id, version=revision.version, slot=slot,
            host=self.host_of(slot), port=next(self._ports), pid=pid, started=float(pid),
        )
        self._running[instance.id] = instance
        self.started.append(instance)
        self.journal.started(instance)
        if named(self.exit_on_start, revision.id, revision.version, slot):
            self._dead.add(instance)
        return instance

    async def stop(self, instance: Instance, *, grace: float) -> None:
        await asyncio.sleep(0)
        self._reach(instance.host)
        self.stopped.append((instance, grace))
        self.journal.stopped(instance)
        if self._running.get(instance.id) == instance:
            del self._running[instance.id]
        self._dead.discard(instance)

    async def alive(self, instance: Instance) -> bool:
        self._reach(instance.host)
        return self._is_alive(instance)

    async def instances(self, service: str) -> list[Instance]:
        found = [i for i in self.live() if i.service == service and i.host not in self.lost_hosts]
        if self.lost_hosts:
            raise HostUnreachable("unreachable (told to be): " + ", ".join(sorted(self.lost_hosts)),
                                  hosts=tuple(sorted(self.lost_hosts)), found=found)
        return found

    async def log_tail(self, instance: Instance, *, lines: int = 20) -> str:
        return self.tail(instance, lines)

    async def aclose(self) -> None:
        self.closed = True

    def tail(self, instance: Instance, lines: int = 20) -> str:
        """What the fake instance "printed": one line saying how it ended, if it did."""
        if instance in self._dead:
            return f"fake {instance.id}: exited with status 1\n"
        return f"fake {instance.id}: listening on {instance.address}\n"

    def reopen(self) -> FakePlatform:
        """A new control plane on the same fake machine: it sees the same processes."""
        twin = copy.copy(self)  # shares the running set, the dead set, the journal, the counters
        twin.closed = False
        return twin

    # -- for tests -----------------------------------------------------------------
    def crash(self, instance: Instance) -> None:
        """The instance's process dies (alive() turns False; it is not stopped)."""
        self._dead.add(instance)

    def live(self) -> list[Instance]:
        return sorted((i for i in self._running.values() if self._is_alive(i)), key=lambda i: i.id)

    def starts(self, revision: str | None = None, slot: int | None = None) -> int:
        """How many times start() made an instance, optionally of one revision and slot."""
        return sum(
            1 for i in self.started
            if (revision is None or named({revision}, i.revision, i.version))
            and (slot is None or i.slot == slot)
        )

    def at_port(self, port: int) -> Instance | None:
        return next((i for i in self.live() if i.port == port), None)

    def health_status(self, instance: Instance) -> int:
        sick = named(self.unhealthy, instance.revision, instance.version, instance.slot)
        return 500 if sick else 200

    def _is_alive(self, instance: Instance) -> bool:
        return self._running.get(instance.id) == instance and instance not in self._dead


Responder = Callable[[httpx.Request], httpx.Response | None]


def fake_http(platform: FakePlatform, *, other: Responder | None = None) -> httpx.AsyncClient:
    """An httpx client whose requests reach the fake instances by port.

    A live instance answers with its `health_status`; `other` may answer any request first
    (say, the router's preview address); anything else is refused like a closed port.
    """

    def handle(request: httpx.Request) -> httpx.Response:
        if other is not None:
            answer = other(request)
            if answer is not None:
                return answer
        instance = platform.at_port(request.url.port or 80)
        if instance is None:
            raise httpx.ConnectError("connection refused", request=request)
        return httpx.Response(platform.health_status(instance), text=instance.id)

    return httpx.AsyncClient(transport=httpx.MockTransport(handle))
