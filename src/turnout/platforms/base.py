"""The `Platform` seam: start, stop and rediscover instances of a revision.

A platform is where instances run (`local`: processes on this machine; `ssh` later:
units on hosts). Its adapter is built by `turnout.wiring` from the spec, and the service
and the engine use it only through this protocol. Every method may do I/O, so every one
is async, the log tail included (a remote platform reads it over the network).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from turnout.errors import PlatformError
from turnout.model import Instance, Revision


class HostUnreachable(PlatformError):
    """Hosts that cannot be reached (a connect failed or a connection died under a command).

    `hosts` are the unreachable hosts as instances name them (`Instance.host`); from
    `instances`, `found` holds what the other hosts run, so the engine can go on with them.
    """

    def __init__(self, message: str, *, hosts: tuple[str, ...], found: list[Instance] | None = None) -> None:
        super().__init__(message)
        self.hosts = hosts
        self.found = found or []


def placeholders(revision: Revision, *, slot: int, port: int) -> Callable[[str], str]:
    """What fills `{port}`, `{version}` and `{slot}` in one instance's command, env and cwd."""
    values = {"{port}": str(port), "{version}": revision.version, "{slot}": str(slot)}

    def fill(text: str) -> str:
        for key, value in values.items():
            text = text.replace(key, value)
        return text

    return fill


def instance_env(revision: Revision, *, slot: int, port: int) -> dict[str, str]:
    """The variables one instance gets on every platform: the spec's `run.env` with its
    placeholders filled, then those turnout sets, which win over a `run.env` of the same name."""
    fill = placeholders(revision, slot=slot, port=port)
    env = {name: fill(value) for name, value in revision.run.env.items()}
    env.update(PORT=str(port), TURNOUT_VERSION=revision.version, TURNOUT_SLOT=str(slot),
               TURNOUT_SERVICE=revision.service)
    return env


class Platform(Protocol):
    async def start(self, revision: Revision, *, slot: int) -> Instance:
        """Start one instance; return as soon as the process runs (health is checked apart)."""
        ...

    async def stop(self, instance: Instance, *, grace: float) -> None:
        """SIGTERM, then SIGKILL after `grace` seconds; a gone instance is not an error."""
        ...

    async def alive(self, instance: Instance) -> bool:
        """True while that very process (same pid and start time) runs."""
        ...

    async def instances(self, service: str) -> list[Instance]:
        """Every live instance of the service, found again by a restarted control plane.

        Raises HostUnreachable (with what the other hosts run) when a host cannot be reached.
        """
        ...

    async def log_tail(self, instance: Instance, *, lines: int = 20) -> str:
        """The last `lines` lines of the instance's output, to show why it failed ('' if none)."""
        ...

    async def aclose(self) -> None:
        """Let go of what the adapter holds; instances keep running on purpose."""
        ...
