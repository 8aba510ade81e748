"""The `ssh` platform: instances are transient systemd units on hosts reached over SSH.

Slot `s` runs on host `s // instances_per_host` (so a rolling batch of that size replaces one
host). Starting an instance makes sure the release folder is on its host (see
`platforms.release`), asks the host for a free port, and starts a unit with `systemd-run`
(see `platforms.systemd`): the host's own init then restarts it on a crash and keeps its
output in the journal, which `log_tail` reads. The login `root` runs system units; any
other login its own user units, which needs lingering on (`loginctl enable-linger USER`).

An instance's environment is the spec's `run.env` and turnout's variables (PORT,
TURNOUT_*); nothing comes from the deployer's own environment. `instances` lists the units
on every host and reads each instance back from its unit, so a restarted control plane
finds its fleet without any file of its own.
"""

from __future__ import annotations

import asyncio
import getpass
import json
import random
from pathlib import Path

from turnout.errors import PlatformError
from turnout.model import Instance, Revision
from turnout.platforms import release, systemd
from turnout.platforms.base import HostUnreachable, placeholders
from turnout.platforms.ssh_link import HostLink, Login
from turnout.spec import Spec
from turnout.spec.hosts import SshPlatformSpec, host_address
from turnout.statedir import StateDir

_PORTS = (20_000, 32_768)  # instance ports: below the usual ephemeral range (32768-60999)
_LISTENING_FRESH = 1.0  # seconds one `ss` listing serves the starts of a batch
_STOP_MARGIN = 15.0  # beyond the grace, for systemd to confirm the stop


class SshPlatform:
    """Start, stop and rediscover instances as systemd units on the spec's hosts."""

    @classmethod
    def build(cls, spec: Spec, state: StateDir) -> SshPlatform:
        if not isinstance(spec.platform, SshPlatformSpec):
            raise PlatformError("the ssh platform needs `platform: {kind: ssh, hosts: [...]}`")
        return cls(spec.platform, spec_dir=state.spec_dir)

    def __init__(self, settings: SshPlatformSpec, *, spec_dir: Path) -> None:
        self.settings = settings
        self.spec_dir = spec_dir
        login = Login(
            user=settings.user or getpass.getuser(),
            identity=_local_path(settings.identity, spec_dir) if settings.identity else None,
            known_hosts=_local_path(settings.known_hosts, spec_dir),
            connect_timeout=settings.connect_timeout,
            command_timeout=settings.command_timeout,
            parallel=settings.commands_per_host,
        )
        self.user_manager = login.user != "root"
        self.links = [HostLink(entry, *host_address(entry), login) for entry in settings.hosts]
        self._uid: dict[str, str] = {}
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
        """Start one instance of `revision` in `slot` as a unit; a unit already running for
        that slot (a step run again after a crash) is returned instead of a second copy."""
        link = self.link_of(slot)
        folder = await self._release(link, revision)
        port = await self._free_port(link)
        instance = Instance(service=revision.service, revision=revision.id,
                            version=revision.version, slot=slot, host=link.host, port=port)
        fill = placeholders(revision, slot=slot, port=port)
        settings = systemd.UnitSettings(
            name=systemd.unit_name(instance), description=systemd.describe(instance),
            cwd=_join(folder, fill(revision.run.cwd)),
            env={**{k: fill(v) for k, v in revision.run.env.items()}, **_turnout_env(instance)},
            grace=revision.run.grace, user_manager=self.user_manager,
        )
        command = [fill(arg) for arg in revision.run.command]
        out = await link.run(await self._as_login(link, systemd.run_argv(settings, command)))
        if not out.ok and "already" not in out.reason():  # "Unit ... already exists"
            raise PlatformError(f"host {link.name}: cannot start {instance.id} ({command[0]!r}): "
                                f"{out.reason()}")
        states = await self._units(link, [settings.name])
        started = states[0].instance(link.host) if states and states[0].present else None
        if started is None:
            raise PlatformError(f"host {link.name}: {instance.id} stopped as soon as it started")
        return started  # from an earlier start, its own port

    async def alive(self, instance: Instance) -> bool:
        link = self._link_for(instance)
        states = await self._units(link, [systemd.unit_name(instance)])
        return bool(states) and states[0].running

    async def stop(self, instance: Instance, *, grace: float) -> None:
        """`systemctl stop`: SIGTERM, then SIGKILL after the unit's TimeoutStopSec (the grace)."""
        link = self._link_for(instance)
        argv = systemd.systemctl(self.user_manager, "stop", "--", systemd.unit_name(instance))
        out = await link.run(await self._as_login(link, argv), limit=grace + _STOP_MARGIN)
        if not out.ok and "not loaded" not in out.reason():
            raise PlatformError(f"host {link.name}: cannot stop {instance.id}: {out.reason()}")

    async def instances(self, service: str) -> list[Instance]:
        """Every running unit of `service` on every host, read back from the units."""
        results = await asyncio.gather(*(self._service_units(link, service) for link in self.links),
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
        """The unit's last lines from the host's journal ('' when it cannot be read)."""
        link = self._link_for(instance)
        which = "--user-unit" if self.user_manager else "--unit"
        argv = ["journalctl", f"{which}={systemd.unit_name(instance)}", f"--lines={lines}",
                "--no-pager", "--output=cat", "--quiet"]
        try:
            out = await link.run(argv)
        except PlatformError:
            return ""
        return out.stdout if out.ok else ""

    async def aclose(self) -> None:
        await asyncio.gather(*(link.aclose() for link in self.links))

    # -- what runs on one host ---------------------------------------------------------
    async def _service_units(self, link: HostLink, service: str) -> list[Instance]:
        argv = systemd.systemctl(self.user_manager, "list-units", "--all", "--plain", "--no-legend",
                                 "--type=service", "--", systemd.service_pattern(service))
        names = systemd.parse_list(await link.check(await self._as_login(link, argv),
                                                    what="list the units"))
        found = []
        for state in await self._units(link, names):
            instance = state.instance(link.host)
            if instance is not None and instance.service == service and state.present:
                found.append(instance)
        return found

    async def _units(self, link: HostLink, names: list[str]) -> list[systemd.UnitState]:
        if not names:
            return []
        argv = await self._as_login(link, systemd.show_argv(self.user_manager, names))
        states = systemd.parse_show(await link.check(argv, what="read the units' state"))
        return [s for s in states if s.active not in ("inactive", "") or s.description]

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

    async def _as_login(self, link: HostLink, argv: list[str]) -> list[str]:
        """`argv` for the login's systemd: user units need the login's runtime folder."""
        if not self.user_manager:
            return argv
        uid = self._uid.get(link.name)
        if uid is None:
            uid = (await link.check(["id", "-u"], what="read the login's user id")).strip()
            await self._check_systemd(link, uid)
            self._uid[link.name] = uid
        return ["env", f"XDG_RUNTIME_DIR=/run/user/{uid}", *argv]

    async def _check_systemd(self, link: HostLink, uid: str) -> None:
        out = await link.run(["env", f"XDG_RUNTIME_DIR=/run/user/{uid}", "systemctl", "--user",
                              "is-system-running"])
        state = out.stdout.strip()
        if state not in ("running", "degraded", "starting", "initializing"):
            raise PlatformError(
                f"host {link.name}: no systemd manager for {link.login.user} ({out.reason()}); "
                f"turnout runs instances as systemd units: enable lingering there "
                f"(`loginctl enable-linger {link.login.user}`) or log in as root"
            )

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


def _ports_in(ss_output: str) -> set[int]:
    """The ports of `ss -Htln` lines (the local address is the fourth column)."""
    ports = set()
    for line in ss_output.splitlines():
        parts = line.split()
        if len(parts) >= 4 and parts[3].rpartition(":")[2].isdigit():
            ports.add(int(parts[3].rpartition(":")[2]))
    return ports


def _turnout_env(instance: Instance) -> dict[str, str]:
    return {"PORT": str(instance.port), "TURNOUT_VERSION": instance.version,
            "TURNOUT_SLOT": str(instance.slot), "TURNOUT_SERVICE": instance.service,
            "TURNOUT_INSTANCE": json.dumps(instance.id)[1:-1]}


def _join(folder: str | None, cwd: str) -> str | None:
    if cwd.startswith("/"):
        return cwd
    if folder is None:
        return None if cwd in (".", "") else cwd  # wiring.check refuses a relative cwd here
    return folder if cwd in (".", "") else f"{folder.rstrip('/')}/{cwd}"


def _local_path(text: str, spec_dir: Path) -> Path:
    path = Path(text).expanduser()
    return path if path.is_absolute() else spec_dir / path

