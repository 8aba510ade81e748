"""What keeps an instance running on a host: the seam between the ssh platform and the
host's supervisor (`platforms.systemd.SystemdUnits`, or `platforms.detached.Detached`
for hosts without systemd).

The ssh platform decides where an instance goes, its port, folder and environment (a
`Launch`); a supervisor starts it under a stable name, tells whether it runs, stops it,
finds every instance of a service again and reads its output. Each method is given the
host's `HostLink` and runs only argv commands through it.

Both supervisors keep on the host what an instance is (`instance_meta`: its service,
revision, version, slot and port), the systemd unit in its description and a detached
process in its record, and rebuild it from there with `instance_from_meta`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from turnout.model import Instance
from turnout.platforms.ssh_link import HostLink


@dataclass(frozen=True, slots=True)
class Launch:
    """One instance as the host must run it."""

    cwd: str | None  # None: the login's home
    env: Mapping[str, str]
    command: list[str]
    grace: float  # SIGTERM, then SIGKILL after this long


def instance_meta(instance: Instance) -> dict[str, object]:
    """What a supervisor keeps on the host to know the instance again (as JSON)."""
    return {"service": instance.service, "revision": instance.revision, "version": instance.version,
            "slot": instance.slot, "port": instance.port}


def instance_from_meta(meta: Any, *, host: str, pid: int | None,
                       started: float | None) -> Instance | None:
    """The instance `instance_meta` described, running on `host` as `pid` since `started`;
    None if `meta` is not such a description (another program's unit, a damaged record)."""
    try:
        return Instance(service=str(meta["service"]), revision=str(meta["revision"]),
                        version=str(meta["version"]), slot=int(meta["slot"]), host=host,
                        port=int(meta["port"]), pid=pid, started=started)
    except (ValueError, KeyError, TypeError):
        return None


class Supervisor(Protocol):
    async def launch(self, link: HostLink, instance: Instance, launch: Launch) -> Instance | None:
        """Start `instance`; return it as it runs (with pid and start time), or the instance
        already running under its name (an earlier start, its own port), or None if it
        ended at once."""
        ...

    async def alive(self, link: HostLink, instance: Instance) -> bool: ...

    async def stop(self, link: HostLink, instance: Instance, *, grace: float) -> None:
        """Stop it (SIGTERM, SIGKILL after `grace`); one already gone is not an error."""
        ...

    async def listed(self, link: HostLink, service: str) -> list[Instance]:
        """Every running instance of `service` on the host, read back from the host alone."""
        ...

    async def log_tail(self, link: HostLink, instance: Instance, *, lines: int) -> str: ...
