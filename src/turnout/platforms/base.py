"""The `Platform` seam: start, stop and rediscover instances of a revision."""

from __future__ import annotations

from typing import Protocol

from turnout.model import Instance, Revision


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
        """Every live instance of the service, found again after a crash."""
        ...

    async def aclose(self) -> None: ...
