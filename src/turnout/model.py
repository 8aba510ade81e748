"""Revisions and instances: the nouns every layer shares.

A revision is immutable (version + resolved run settings + a hash); an instance is one
running copy of a revision with an address. Both serialise to JSON for the store.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass

from pydantic import BaseModel, ConfigDict

from turnout.addresses import join_host_port
from turnout.spec import Health, Run, Spec


class Revision(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    service: str
    version: str
    run: Run
    health: Health
    hash: str

    @property
    def id(self) -> str:
        return f"{self.version}-{self.hash[:8]}"

    @classmethod
    def of(cls, spec: Spec, version: str) -> Revision:
        settings = {
            "service": spec.service,
            "version": version,
            "run": spec.run.model_dump(mode="json"),
            "health": spec.health.model_dump(mode="json"),
        }
        digest = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()
        return cls(service=spec.service, version=version, run=spec.run, health=spec.health, hash=digest)


@dataclass(frozen=True, slots=True)
class Instance:
    """One running copy of a revision. `started` is the process start time (pid-reuse guard)."""

    service: str
    revision: str  # Revision.id
    version: str
    slot: int
    host: str
    port: int
    pid: int | None = None
    started: float | None = None

    @property
    def address(self) -> str:
        return join_host_port(self.host, self.port)

    @property
    def id(self) -> str:
        return f"{self.revision}-{self.slot}"

    def to_json(self) -> dict[str, object]:
        return {
            "service": self.service,
            "revision": self.revision,
            "version": self.version,
            "slot": self.slot,
            "host": self.host,
            "port": self.port,
            "pid": self.pid,
            "started": self.started,
        }

    @classmethod
    def from_json(cls, data: dict[str, object]) -> Instance:
        return cls(**data)  # type: ignore[arg-type]
