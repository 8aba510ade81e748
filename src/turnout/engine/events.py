"""Progress flows out of the engine as events; the CLI, API and dashboard render them."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any


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
