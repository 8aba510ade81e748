"""One suite for every platform: what the service and the engine rely on through `Platform`.

`ALL_PLATFORMS` lists a rig per platform (in the manner of kopf's parametrised storages):
the platform adapter, another adapter over the same machine (a restarted control plane),
a revision whose instances run, one that cannot start, and a way to kill an instance
behind the platform's back. The local platform runs real processes, the ssh platform real
systemd units (or detached processes) on a test host; the fake is the one unit tests use,
and it must pass the same suite. A platform joins by adding its rig.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Protocol

import pytest
from tests.hosts.harness import HostFleet

from turnout import procs
from turnout.errors import PlatformError
from turnout.model import Instance, Revision
from turnout.platforms.base import Platform
from turnout.platforms.local import LocalPlatform
from turnout.platforms.ssh import SshPlatform
from turnout.platforms.systemd import unit_name
from turnout.spec import Health, Run
from turnout.spec.hosts import SshPlatformSpec
from turnout.statedir import StateDir
from turnout.testing import FakePlatform

SERVICE = "shop"
# Says it is up, then waits to be stopped (SIGTERM ends it at once).
SLEEPER = "import time; print('up', flush=True); time.sleep(60)"


def revision(command: list[str], *, version: str = "v1", service: str = SERVICE) -> Revision:
    return Revision(service=service, version=version, run=Run(command=command, grace=5),
                    health=Health(), hash=f"{version}{service}".ljust(64, "0")[:64])


class Rig(Protocol):
    platform: Platform

    def reopen(self) -> Platform:
        """Another adapter over the same machine, as a restarted control plane builds it."""
        ...

    def runs(self, version: str = "v1", service: str = SERVICE) -> Revision:
        """A revision whose instances start and keep running."""
        ...

    def broken(self) -> Revision:
        """A revision whose instances cannot start."""
        ...

    async def kill(self, instance: Instance) -> None:
        """The instance's process dies without the platform's doing."""
        ...


class LocalRig:
    def __init__(self, folder: Path) -> None:
        self.state = StateDir.beside(folder).create()
        self.platform: Platform = LocalPlatform(state=self.state)

    def reopen(self) -> Platform:
        return LocalPlatform(state=self.state)

    def runs(self, version: str = "v1", service: str = SERVICE) -> Revision:
        return revision([sys.executable, "-c", SLEEPER], version=version, service=service)

    def broken(self) -> Revision:
        return revision(["turnout-contract-no-such-program"], version="broken")

    async def kill(self, instance: Instance) -> None:
        assert instance.pid is not None
        os.kill(instance.pid, signal.SIGKILL)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 5
        while procs.is_running(instance.pid, instance.started):
            assert loop.time() < deadline, "a killed process did not go away"
            await asyncio.sleep(0.02)


class FakeRig:
    def __init__(self, folder: Path) -> None:
        self.fake = FakePlatform()
        self.fake.fail_start.add("broken")
        self.platform: Platform = self.fake

    def reopen(self) -> Platform:
        return self.fake.reopen()

    def runs(self, version: str = "v1", service: str = SERVICE) -> Revision:
        return revision(["app"], version=version, service=service)

    def broken(self) -> Revision:
        return revision(["app"], version="broken")

    async def kill(self, instance: Instance) -> None:
        self.fake.crash(instance)


class SshRig:
    """The first test host (systemd and sshd in a container), with systemd units or plain
    detached processes; killing an instance ends it behind the platform's back (a unit is
    stopped: a mere crash would be restarted by systemd, as it should)."""

    def __init__(self, fleet: HostFleet, supervisor: str) -> None:
        self.fleet, self.host = fleet, fleet.hosts[0]
        self.settings = SshPlatformSpec.model_validate({
            "hosts": [self.host.address], "user": fleet.user, "identity": str(fleet.identity),
            "known_hosts": str(fleet.known_hosts), "instances_per_host": 2, "supervisor": supervisor,
        })
        self.platform: Platform = self.reopen()

    def reopen(self) -> Platform:
        return SshPlatform(self.settings, spec_dir=Path.cwd())

    def runs(self, version: str = "v1", service: str = SERVICE) -> Revision:
        return revision(["python3", "-c", SLEEPER], version=version, service=service)

    def broken(self) -> Revision:
        return revision(["turnout-contract-no-such-program"], version="broken")

    async def kill(self, instance: Instance) -> None:
        if self.settings.supervisor == "systemd":
            argv = ["systemctl", "--user", "stop", unit_name(instance)]
        else:
            argv = ["kill", "-9", str(instance.pid)]
        done = await asyncio.to_thread(self.fleet.exec, self.host, argv, user="deploy")
        assert done.returncode == 0, done.stderr


def ssh_rig(supervisor: str) -> Callable[[pytest.FixtureRequest, Path], Rig]:
    return lambda request, folder: SshRig(request.getfixturevalue("hosts"), supervisor)


ALL_PLATFORMS: dict[str, Callable[[pytest.FixtureRequest, Path], Rig]] = {
    "fake": lambda _, folder: FakeRig(folder),
    "local": lambda _, folder: LocalRig(folder),
    "ssh-systemd": ssh_rig("systemd"),
    "ssh-detached": ssh_rig("detached"),
}


# The ssh rigs run on the test hosts: in the serial pass, last (tests/hosts/fixtures.py).
ON_HOSTS = [pytest.mark.serial, pytest.mark.hosts]


@pytest.fixture(params=[pytest.param(name, marks=ON_HOSTS if name.startswith("ssh") else ())
                        for name in ALL_PLATFORMS])
async def rig(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Rig]:
    made = ALL_PLATFORMS[request.param](request, tmp_path)
    try:
        yield made
    finally:
        for service in (SERVICE, "cart"):
            for instance in await made.platform.instances(service):
                await made.platform.stop(instance, grace=1)
        await made.platform.aclose()


async def test_a_started_instance_runs_with_an_address_and_is_listed(rig: Rig) -> None:
    v1 = rig.runs()
    first = await rig.platform.start(v1, slot=0)
    second = await rig.platform.start(v1, slot=1)
    assert (first.service, first.revision, first.version, first.slot) == (SERVICE, v1.id, "v1", 0)
    assert first.port != second.port and first.address.endswith(f":{first.port}")
    assert await rig.platform.alive(first) and await rig.platform.alive(second)
    assert sorted(i.id for i in await rig.platform.instances(SERVICE)) == [first.id, second.id]
    assert await rig.platform.instances("cart") == []


async def test_starting_a_running_slot_again_returns_that_instance(rig: Rig) -> None:
    v1 = rig.runs()
    first = await rig.platform.start(v1, slot=0)
    assert await rig.platform.start(v1, slot=0) == first  # a step run twice
    assert [i.id for i in await rig.platform.instances(SERVICE)] == [first.id]


async def test_a_stopped_instance_is_gone_and_stopping_it_again_is_no_error(rig: Rig) -> None:
    instance = await rig.platform.start(rig.runs(), slot=0)
    await rig.platform.stop(instance, grace=2)
    assert not await rig.platform.alive(instance)
    assert await rig.platform.instances(SERVICE) == []
    await rig.platform.stop(instance, grace=2)


async def test_a_restarted_control_plane_finds_the_fleet_and_can_stop_it(rig: Rig) -> None:
    v1, v2 = rig.runs(), rig.runs("v2")
    kept = [await rig.platform.start(v1, slot=0), await rig.platform.start(v2, slot=0)]
    other = await rig.platform.start(rig.runs(service="cart"), slot=0)
    await rig.platform.aclose()  # the control plane goes; the instances stay
    again = rig.reopen()
    found = await again.instances(SERVICE)
    assert sorted(found, key=lambda i: i.id) == sorted(kept, key=lambda i: i.id)
    assert all([await again.alive(i) for i in found])
    assert await again.instances("cart") == [other]
    await again.stop(found[0], grace=2)
    assert [i.id for i in await again.instances(SERVICE)] == [found[1].id]
    await again.aclose()


async def test_an_instance_that_died_is_not_alive_and_not_listed(rig: Rig) -> None:
    v1 = rig.runs()
    dead, living = await rig.platform.start(v1, slot=0), await rig.platform.start(v1, slot=1)
    await rig.kill(dead)
    assert not await rig.platform.alive(dead)
    assert [i.id for i in await rig.platform.instances(SERVICE)] == [living.id]
    replaced = await rig.platform.start(v1, slot=0)  # its slot starts a new one
    assert replaced != dead and await rig.platform.alive(replaced)


async def test_a_revision_that_cannot_start_raises_platform_error_and_leaves_nothing(
    rig: Rig,
) -> None:
    with pytest.raises(PlatformError):
        await rig.platform.start(rig.broken(), slot=0)
    assert await rig.platform.instances(SERVICE) == []


async def test_the_log_tail_shows_what_an_instance_wrote_and_outlives_it(rig: Rig) -> None:
    instance = await rig.platform.start(rig.runs(), slot=0)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 5
    while not (tail := await rig.platform.log_tail(instance, lines=5)).strip():
        assert loop.time() < deadline, "the instance's output never showed"
        await asyncio.sleep(0.02)
    assert len(tail.strip().splitlines()) <= 5
    await rig.platform.stop(instance, grace=2)
    assert (await rig.platform.log_tail(instance, lines=5)).strip()  # why it ended stays readable
