"""Progress flows out of the engine as events; the CLI, API and dashboard render them, and the
store keeps every one of a deployment (with its data: traffic shares, a gate's evidence) so
that `turnout status`, `history` and any later API read the same record."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from turnout.store.db import DeploymentRecord, Store


@dataclass(frozen=True)
class Event:
    kind: str  # step, done, gate, paused, rollback, info, warning, failed, succeeded
    message: str
    step: int | None = None
    total: int | None = None
    data: dict[str, Any] = field(default_factory=dict)


Emit = Callable[[Event], None]


def ignore(event: Event) -> None:
    """An `Emit` that drops every event."""


Record = Callable[[Event], None]  # what the engine calls: shows and stores an event


class Recorder:
    """Every event of the deployment in progress, shown (`emit`) and stored with it.

    Events outside a deployment (a restore run on its own) are only shown. A step event sets
    the step the following ones are stored under. Phase changes go through `phase`, which
    updates the deployment and stores a `phase` event (not shown: the events around it say
    what happened in words). Each of `taps` sees every event stored with a deployment, once
    stored (the webhooks take theirs there).
    """

    def __init__(self, store: Store, emit: Emit) -> None:
        self.store = store
        self.emit = emit
        self.deployment_id: int | None = None
        self.step = -1
        self.taps: list[Record] = []

    def __call__(self, event: Event) -> None:
        if event.kind == "step" and event.step is not None:
            self.step = event.step - 1
        if event.kind != "phase":
            self.emit(event)
        if self.deployment_id is not None:
            self.store.add_event(self.deployment_id, step=self.step, kind=event.kind, message=event.message,
                                 data=event.data)
            for tap in self.taps:
                tap(event)

    def phase(self, deployment_id: int, phase: str, message: str = "") -> DeploymentRecord:
        """Put the deployment in `phase` (with `message`) and record that."""
        record = self.store.update_deployment(deployment_id, phase=phase, message=message)
        self(Event("phase", f"{phase}: {message}" if message else phase,
                   data={"phase": phase, "message": message}))
        return record
