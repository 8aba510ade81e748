"""The state store: what turnout remembers between runs (see `turnout.store.db`)."""

from __future__ import annotations

from turnout.store.db import Store
from turnout.store.records import DeploymentRecord, Event, InstanceRecord
from turnout.store.schema import ACTIVE_PHASES, FINAL_PHASES, PHASES

__all__ = [
    "ACTIVE_PHASES",
    "FINAL_PHASES",
    "PHASES",
    "DeploymentRecord",
    "Event",
    "InstanceRecord",
    "Store",
]
