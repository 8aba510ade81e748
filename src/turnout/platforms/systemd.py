"""Instances as transient systemd units (`SystemdUnits`, a `platforms.supervisor.Supervisor`):
their names, the `systemd-run` that starts one, and what `systemctl show` says of them.

A unit is `turnout-<service>-<instance id>.service` (characters systemd does not allow in a
unit name are written `_xx`), started with `Restart=on-failure`, `TimeoutStopSec=` the
spec's grace and `--collect`, so a stopped or failed unit leaves nothing behind. Its
description carries the instance as JSON after `turnout `; that is what a restarted control
plane reads to find its fleet again, whatever the unit's name says.

systemd expands `$NAME` and `${NAME}` in the command line of a unit made by `systemd-run`
(systemd 252 leaves `%` specifiers alone there; a unit file on disk would expand them
too): every `$` of an argument is doubled, so the service gets exactly the spec's text.
Environment values are passed as they are (systemd does not expand them).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from turnout.errors import PlatformError
from turnout.model import Instance
from turnout.platforms.ssh_link import HostLink, Output
from turnout.platforms.supervisor import Launch, instance_from_meta, instance_meta

PREFIX = "turnout-"
DESCRIPTION = "turnout "
_UNIT_CHAR = re.compile(r"[^A-Za-z0-9.-]")
_STOP_MARGIN = 15.0  # beyond the grace, for systemd to confirm a stop
_MANAGER_UP = ("running", "degraded", "starting", "initializing")
SHOWN = ("Id", "Description", "ActiveState", "SubState", "MainPID", "ExecMainStartTimestampMonotonic")


def unit_name(instance: Instance) -> str:
    """The unit of one instance: the same name for the same service, revision and slot."""
    raw = f"{instance.service}-{instance.id}"
    safe = _UNIT_CHAR.sub(lambda m: "".join(f"_{b:02x}" for b in m.group().encode()), raw)
    return f"{PREFIX}{safe[:230]}.service"


def service_pattern(service: str) -> str:
    """A `systemctl list-units` pattern matching every unit of `service` (and a few more:
    the description tells them apart)."""
    safe = _UNIT_CHAR.sub("?", service)
    return f"{PREFIX}{safe}-*.service"


def describe(instance: Instance) -> str:
    """The unit's description: the instance's `instance_meta` as compact JSON, keys sorted."""
    return DESCRIPTION + json.dumps(instance_meta(instance), separators=(",", ":"), sort_keys=True)


def escape_exec(arg: str) -> str:
    """One argument of a `systemd-run` command line, safe from systemd's `$` expansion."""
    return arg.replace("$", "$$")


@dataclass(frozen=True, slots=True)
class UnitSettings:
    """What `systemd-run` needs besides the command."""

    name: str
    description: str
    cwd: str | None  # None: the manager's default (the user's home, or /)
    env: Mapping[str, str]
    grace: float
    user_manager: bool  # --user: the login's own manager (it must linger)


def run_argv(settings: UnitSettings, command: Sequence[str]) -> list[str]:
    """`systemd-run` for one instance; the command's arguments escaped for systemd."""
    argv = ["systemd-run"]
    if settings.user_manager:
        argv.append("--user")
    argv += [
        f"--unit={settings.name}",
        f"--description={settings.description}",
        "--collect",
        "--quiet",
        "--property=Restart=on-failure",
        "--property=RestartSec=1",
        f"--property=TimeoutStopSec={max(1, round(settings.grace * 1000))}ms",
    ]
    if settings.cwd is not None:
        argv.append(f"--working-directory={settings.cwd}")
    for name, value in settings.env.items():
        argv.append(f"--setenv={name}={value}")
    return [*argv, "--", *(escape_exec(arg) for arg in command)]


def systemctl(user_manager: bool, *args: str) -> list[str]:
    return ["systemctl", *(["--user"] if user_manager else []), *args]


def show_argv(user_manager: bool, names: Iterable[str]) -> list[str]:
    return systemctl(user_manager, "show", f"--property={','.join(SHOWN)}", "--", *names)


@dataclass(frozen=True, slots=True)
class UnitState:
    """What systemd says of one unit."""

    name: str
    description: str
    active: str  # ActiveState: active, activating, deactivating, failed, inactive
    sub: str  # SubState: running, auto-restart, exited, dead, ...
    pid: int  # MainPID, 0 when no process runs
    started: float  # ExecMainStartTimestampMonotonic (microseconds), 0 when never started

    @property
    def running(self) -> bool:
        return self.active == "active" and self.sub == "running" and self.pid > 0

    @property
    def present(self) -> bool:
        """Loaded and not finished: running, starting, restarting or stopping."""
        return self.active in ("active", "activating", "deactivating", "reloading")

    def instance(self, host: str) -> Instance | None:
        """The instance this unit runs, read from its description; None if it is not ours."""
        if not self.description.startswith(DESCRIPTION):
            return None
        try:
            data = json.loads(self.description[len(DESCRIPTION):])
        except ValueError:
            return None
        return instance_from_meta(data, host=host, pid=self.pid or None, started=self.started or None)


def parse_show(text: str) -> list[UnitState]:
    """The units in `systemctl show` output (blocks of KEY=VALUE separated by blank lines)."""
    states: list[UnitState] = []
    for block in re.split(r"\n\s*\n", text.strip()):
        fields: dict[str, str] = {}
        for line in block.splitlines():
            key, sep, value = line.partition("=")
            if sep:
                fields[key] = value
        if "Id" not in fields:
            continue
        states.append(UnitState(
            name=fields["Id"], description=fields.get("Description", ""),
            active=fields.get("ActiveState", ""), sub=fields.get("SubState", ""),
            pid=_int(fields.get("MainPID")),
            started=float(_int(fields.get("ExecMainStartTimestampMonotonic"))),
        ))
    return states


def parse_list(text: str) -> list[str]:
    """Unit names from `systemctl list-units --plain --no-legend` (the first column)."""
    names = []
    for line in text.splitlines():
        parts = line.split()[:2]  # a failed unit may come after a bullet
        names += [part for part in parts if part.startswith(PREFIX)][:1]
    return names


def _int(value: str | None) -> int:
    try:
        return int(value or 0)
    except ValueError:
        return 0


class SystemdUnits:
    """Instances as transient units of the login's systemd: the system manager for root,
    the login's own user manager for anyone else (it must linger to run without a session)."""

    def __init__(self, *, user_manager: bool) -> None:
        self.user_manager = user_manager
        self._prefix: dict[str, list[str]] = {}  # per host: what goes before systemctl & co

    async def launch(self, link: HostLink, instance: Instance, launch: Launch) -> Instance | None:
        settings = UnitSettings(name=unit_name(instance), description=describe(instance),
                                cwd=launch.cwd, env=launch.env, grace=launch.grace,
                                user_manager=self.user_manager)
        out = await link.run(await self._as_login(link, run_argv(settings, launch.command)))
        if not out.ok and "already" not in out.reason():  # "Unit ... already exists": ours
            raise PlatformError(f"host {link.name}: cannot start {instance.id} "
                                f"({launch.command[0]!r}): {out.reason()}")
        states = await self._units(link, [settings.name])
        return states[0].instance(link.host) if states and states[0].present else None

    async def alive(self, link: HostLink, instance: Instance) -> bool:
        states = await self._units(link, [unit_name(instance)])
        return bool(states) and states[0].running

    async def stop(self, link: HostLink, instance: Instance, *, grace: float) -> None:
        """`systemctl stop`: SIGTERM, then SIGKILL after the unit's TimeoutStopSec (the grace)."""
        argv = systemctl(self.user_manager, "stop", "--", unit_name(instance))
        out = await link.run(await self._as_login(link, argv), limit=grace + _STOP_MARGIN)
        if not out.ok and "not loaded" not in out.reason():
            raise PlatformError(f"host {link.name}: cannot stop {instance.id}: {out.reason()}")

    async def listed(self, link: HostLink, service: str) -> list[Instance]:
        argv = systemctl(self.user_manager, "list-units", "--all", "--plain", "--no-legend",
                         "--type=service", "--", service_pattern(service))
        names = parse_list(await link.check(await self._as_login(link, argv), what="list the units"))
        found = []
        for state in await self._units(link, names):
            instance = state.instance(link.host)
            if instance is not None and instance.service == service and state.present:
                found.append(instance)
        return found

    async def log_tail(self, link: HostLink, instance: Instance, *, lines: int) -> str:
        """The unit's last lines from the host's journal."""
        which = "--user-unit" if self.user_manager else "--unit"
        out = await link.run(["journalctl", f"{which}={unit_name(instance)}", f"--lines={lines}",
                              "--no-pager", "--output=cat", "--quiet"])
        return out.stdout if out.ok else ""

    async def _units(self, link: HostLink, names: list[str]) -> list[UnitState]:
        if not names:
            return []
        argv = await self._as_login(link, show_argv(self.user_manager, names))
        states = parse_show(await link.check(argv, what="read the units' state"))
        return [s for s in states if s.active not in ("inactive", "") or s.description]

    async def _as_login(self, link: HostLink, argv: list[str]) -> list[str]:
        """`argv` for the login's systemd (user units need the login's runtime folder); the
        first time on a host, its manager is checked to be there."""
        prefix = self._prefix.get(link.name)
        if prefix is None:
            prefix = []
            if self.user_manager:
                uid = (await link.check(["id", "-u"], what="read the login's user id")).strip()
                prefix = ["env", f"XDG_RUNTIME_DIR=/run/user/{uid}"]
            await self._check_manager(link, prefix)
            self._prefix[link.name] = prefix
        return [*prefix, *argv]

    async def _check_manager(self, link: HostLink, prefix: list[str]) -> None:
        """The login's manager runs, and a user manager lingers (else it would end, and every
        unit with it, as soon as turnout's SSH session does)."""
        out = await link.run([*prefix, *systemctl(self.user_manager, "is-system-running")])
        user = link.login.user
        if out.stdout.strip() in _MANAGER_UP and self.user_manager:
            linger = await link.run(["loginctl", "show-user", "--property=Linger", "--", user])
            if linger.stdout.strip() == "Linger=yes":
                return
            out = Output(status=1, stdout="", stderr=f"lingering is off for {user}")
        elif out.stdout.strip() in _MANAGER_UP:
            return
        if self.user_manager:
            fix = f"enable lingering there (`loginctl enable-linger {user}`) or log in as root"
        else:
            fix = "systemd is not running there as init"
        raise PlatformError(
            f"host {link.name}: no systemd manager for {user} ({out.reason()}); turnout runs "
            f"instances as systemd units: {fix}, or set `platform.supervisor: detached`"
        )
