"""The `ssh` platform: instances on hosts reached over SSH, kept running by each host's
supervisor (`platforms.supervisor`).

Slot `s` runs on host `s // instances_per_host` (so a rolling batch of that size replaces one
host). Starting an instance makes sure the release folder is on its host (see
`platforms.release`), picks a free port there, and hands the rest to the supervisor: by
default a transient systemd unit (`platforms.systemd`), so the host's own init restarts it
on a crash and keeps its output in the journal; the login `root` runs system units, any
other login its own user units, which needs lingering on (`loginctl enable-linger USER`).
`supervisor: detached` runs plain processes instead (`platforms.detached`), for hosts
without systemd.

An instance's environment is the spec's `run.env` and turnout's variables (PORT,
TURNOUT_*); nothing comes from the deployer's own environment. `instances` asks every
host's supervisor and reads each instance back from the host alone, so a restarted control
plane finds its fleet without any file of its own.
"""

from __future__ import annotations

import asyncio
import getpass
import json
import random
from pathlib import Path

from turnout.errors import PlatformError
from turnout.model import Instance, Revision
from turnout.platforms import release
from turnout.platforms.base import HostUnreachable, instance_env, placeholders
from turnout.platforms.detached import Detached
from turnout.platforms.ssh_link import HostLink, Login
from turnout.platforms.supervisor import Launch, Supervisor
from turnout.platforms.systemd import SystemdUnits
from turnout.spec import Spec
from turnout.spec.hosts import SshPlatformSpec, host_address
from turnout.statedir import StateDir

_PORTS = (20_000, 32_768)  # instance ports: below the usual ephemeral range (32768-60999)
_LISTENING_FRESH = 1.0  # seconds one `ss` listing serves the starts of a batch


class SshPlatform:
    """Start, stop and rediscover instances on the spec's hosts (see the module docstring)."""

    @classmethod
    def build(cls, spec: Spec, state: StateDir) -> SshPlatform:
        if not isinstance(spec.platform, SshPlatformSpec):
            raise PlatformError("the ssh platform needs `platform: {kind: ssh, hosts: [...]}`")
        return cls(spec.platform, spec_dir=state.spec_dir)

    def __init__(self, settings: SshPlatformSpec, *, spec_dir: Path) -> None:
        self.settings = settings
        self.spec_dir = spec_dir
        login = login_for(settings, spec_dir)
        self.links = [HostLink(entry, *host_address(entry), login) for entry in settings.hosts]
        self.supervisor: Supervisor = (
            SystemdUnits(user_manager=login.user != "root") if settings.supervisor == "systemd"
            else Detached())
        self._ready: set[tuple[str, str]] = set()  # (host, folder): the release is there
        self._bundles: dict[str, release.Bundle] = {}  # folder -> what goes there
        self._ports: dict[str, set[int]] = {}  # handed out by this command, per host
        self._listening: dict[str, tuple[float, set[int]]] = {}  # per host: (when, ports)
        self._starting = {link.name: asyncio.Lock() for link in self.links}  # port choices
        self._releasing = {link.name: asyncio.Lock() for link in self.links}

    def link_of(self, slot: int) -> HostLink:
        index = (slot // self.settings.instances_per_host) % len(self.links)
        return self.links[index]

    def _link_for(self, instance: Instance) -> HostLink:
        for link in self.links:
            if link.host == instance.host:
                return link
        raise PlatformError(f"{instance.id} runs on {instance.host}, which the spec no longer lists")

    # -- Platform --------------------------------------------------------------------
    async def start(self, revision: Revision, *, slot: int) -> Instance:
        """Start one instance of `revision` in `slot`; one already running for that slot (a
        step run again after a crash) is returned instead of a second copy."""
        link = self.link_of(slot)
        folder = await self._release(link, revision)
        port = await self._free_port(link)
        instance = Instance(service=revision.service, revision=revision.id,
                            version=revision.version, slot=slot, host=link.host, port=port)
        fill = placeholders(revision, slot=slot, port=port)
        launch = Launch(
            cwd=_join(folder, fill(revision.run.cwd)),
            env={**instance_env(revision, slot=slot, port=port), "TURNOUT_INSTANCE": _env_id(instance)},
            command=[fill(arg) for arg in revision.run.command], grace=revision.run.grace,
        )
        started = await self.supervisor.launch(link, instance, launch)
        if started is None:
            raise PlatformError(f"host {link.name}: {instance.id} stopped as soon as it started")
        return started

    async def alive(self, instance: Instance) -> bool:
        return await self.supervisor.alive(self._link_for(instance), instance)

    async def stop(self, instance: Instance, *, grace: float) -> None:
        await self.supervisor.stop(self._link_for(instance), instance, grace=grace)

    async def instances(self, service: str) -> list[Instance]:
        """Every running unit of `service` on every host, read back from the units."""
        results = await asyncio.gather(*(self.supervisor.listed(link, service) for link in self.links),
                                       return_exceptions=True)
        found: list[Instance] = []
        lost: list[HostUnreachable] = []
        for result in results:
            if isinstance(result, HostUnreachable):
                lost.append(result)
            elif isinstance(result, BaseException):
                raise result
            else:
                found += result
        found.sort(key=lambda i: (i.revision, i.slot))
        if lost:
            raise HostUnreachable("; ".join(str(e) for e in lost),
                                  hosts=tuple(h for e in lost for h in e.hosts), found=found)
        return found

    async def log_tail(self, instance: Instance, *, lines: int = 20) -> str:
        """The instance's last lines of output on its host ('' when they cannot be read)."""
        try:
            return await self.supervisor.log_tail(self._link_for(instance), instance, lines=lines)
        except PlatformError:
            return ""

    async def aclose(self) -> None:
        await asyncio.gather(*(link.aclose() for link in self.links))

    async def _free_port(self, link: HostLink) -> int:
        """A port nothing listens on (per `ss`) in 20000-32767, below the kernel's usual range
        for outgoing connections, and not handed out before by this command."""
        taken = self._ports.setdefault(link.name, set())
        async with self._starting[link.name]:
            seen = self._listening.get(link.name)
            now = asyncio.get_running_loop().time()
            if seen is None or now - seen[0] > _LISTENING_FRESH:
                text = await link.check(["ss", "-Htln"], what="list listening ports (`ss` is needed)")
                seen = (now, _ports_in(text))
                self._listening[link.name] = seen
            free = [p for p in range(*_PORTS) if p not in seen[1] and p not in taken]
            if not free:
                raise PlatformError(f"host {link.name}: no free port in {_PORTS[0]}-{_PORTS[1] - 1}")
            port = random.choice(free)
            taken.add(port)
            return port

    async def _release(self, link: HostLink, revision: Revision) -> str | None:
        """The folder instances of `revision` run in on this host, made ready once."""
        spec = self.settings.release
        if spec is None:
            return None
        folder = spec.remote_folder(revision.version)
        async with self._releasing[link.name]:
            if (link.name, folder) in self._ready:
                return folder
            if spec.upload is None:
                await release.require(link, folder)
            else:
                bundle = self._bundles.get(folder)
                if bundle is None:
                    local = _local_path(spec.upload, self.spec_dir)
                    bundle = await asyncio.to_thread(release.Bundle.of, local, folder)
                    self._bundles[folder] = bundle
                await release.ensure(link, bundle)
            self._ready.add((link.name, folder))
        return folder


def login_for(settings: SshPlatformSpec, spec_dir: Path) -> Login:
    """How to log in on the spec's hosts (paths relative to the spec's folder)."""
    return Login(
        user=settings.user or getpass.getuser(),
        identity=_local_path(settings.identity, spec_dir) if settings.identity else None,
        known_hosts=_local_path(settings.known_hosts, spec_dir),
        connect_timeout=settings.connect_timeout,
        command_timeout=settings.command_timeout,
        parallel=settings.commands_per_host,
    )


def _ports_in(ss_output: str) -> set[int]:
    """The ports of `ss -Htln` lines (the local address is the fourth column)."""
    ports = set()
    for line in ss_output.splitlines():
        parts = line.split()
        if len(parts) >= 4 and parts[3].rpartition(":")[2].isdigit():
            ports.add(int(parts[3].rpartition(":")[2]))
    return ports


def _env_id(instance: Instance) -> str:
    """TURNOUT_INSTANCE, set on hosts only: the instance id, non-ASCII and control characters
    written as JSON escapes."""
    return json.dumps(instance.id)[1:-1]


def _join(folder: str | None, cwd: str) -> str | None:
    if cwd.startswith("/"):
        return cwd
    if folder is None:
        return None if cwd in (".", "") else cwd  # wiring.check refuses a relative cwd here
    return folder if cwd in (".", "") else f"{folder.rstrip('/')}/{cwd}"


def _local_path(text: str, spec_dir: Path) -> Path:
    path = Path(text).expanduser()
    return path if path.is_absolute() else spec_dir / path

