"""What the store hands back: frozen records of deployments, events and instances.

They are plain values, detached from any database session, so the engine, the CLI and
the API can keep and compare them freely.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from turnout.model import Instance
from turnout.store.schema import ACTIVE_PHASES


@dataclass(frozen=True)
class DeploymentRecord:
    """One deployment: its plan, where it stands, and what a human asked of it."""

    id: int
    service: str
    version: str
    target_revision: str
    previous_revision: str | None
    strategy: str
    plan: list[dict[str, Any]]
    plan_hash: str
    step: int
    phase: str
    message: str
    abort_requested: bool
    promote_requested: bool
    owner_pid: int | None
    created_at: float
    updated_at: float
    finished_at: float | None

    @property
    def active(self) -> bool:
        """True while the deployment is progressing or paused."""
        return self.phase in ACTIVE_PHASES


@dataclass(frozen=True)
class Event:
    """One line of a deployment's story as stored: what the engine said, and its data
    (traffic shares, a gate's verdict and evidence, a phase); `{}` when it had none.

    `id` grows with every event of any deployment, so "events after id N" is a stable cursor.
    `step` is the plan step it belongs to (-1 before the first).
    """

    id: int
    at: float
    step: int
    kind: str
    message: str
    data: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class InstanceRecord:
    """An instance as the engine last saw it: its state and, if kept warm, until when."""

    instance: Instance
    state: str
    warm_until: float | None
