"""What `turnout status` reports, as typed values: the CLI renders them and `--json` dumps them.

`Session.status` gathers the facts (store, router, platform); this module only gives them a
shape and builds the parts that come from stored records. The JSON of a `Status`
(`model_dump(mode="json")`) is the contract scripts and tests read, so fields keep their
names and order; the latest gate decision comes from the deployment's stored events, so
any process reading the same database shows the same one.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from turnout.routers.base import RouterStats
from turnout.routers.table import RoutingTable
from turnout.store.records import DeploymentRecord, Event


class _Part(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class Stable(_Part):
    revision: str | None
    version: str | None


class GateDecision(_Part):
    """The judge's latest decision on a deployment, as stored with its evidence."""

    at: float
    step: int
    verdict: str | None  # Successful, Failed, Inconclusive, Error
    reason: str
    subject: str | None = None
    baseline: str | None = None
    evidence: dict[str, Any] = Field(default_factory=dict)

    @classmethod
    def of(cls, event: Event) -> GateDecision:
        data = event.data

        def text(key: str) -> str | None:
            value = data.get(key)
            return None if value is None else str(value)

        evidence = data.get("evidence")
        return cls(at=event.at, step=event.step, verdict=text("verdict"),
                   reason=text("reason") or event.message, subject=text("subject"),
                   baseline=text("baseline"), evidence=evidence if isinstance(evidence, dict) else {})


class DeploymentStatus(_Part):
    id: int
    version: str
    strategy: str
    phase: str
    step: int
    steps: int
    interrupted: bool  # no process holds the deployment lock: `turnout deploy` resumes it
    message: str
    current: str | None  # the step in progress, described; None once every step ran
    gate: GateDecision | None = None

    @classmethod
    def of(cls, record: DeploymentRecord, *, interrupted: bool, current: str | None,
           gate: Event | None) -> DeploymentStatus:
        return cls(id=record.id, version=record.version, strategy=record.strategy,
                   phase=record.phase, step=record.step, steps=len(record.plan),
                   interrupted=interrupted, message=record.message, current=current,
                   gate=None if gate is None else GateDecision.of(gate))


class RollbackFailed(_Part):
    id: int
    version: str
    message: str


class RouterStatus(_Part):
    running: bool
    where: dict[str, str] = Field(default_factory=dict)  # the router's own: host, pid, admin, log
    traffic: dict[str, float] = Field(default_factory=dict)  # version -> share in percent
    # answers the router made itself: per version (or "unrouted"), status code -> count
    answered: dict[str, dict[str, int]] = Field(default_factory=dict)


class InstanceStatus(_Part):
    id: str
    version: str
    revision: str
    host: str
    address: str
    pid: int | None
    state: str
    healthy: bool
    problem: str | None
    in_flight: int


class Status(_Part):
    """The stable revision, the deployment in progress, the router and the instances."""

    service: str
    listen: str
    stable: Stable
    deployment: DeploymentStatus | None
    rollback_failed: RollbackFailed | None
    router: RouterStatus
    instances: list[InstanceStatus]


def rollback_failed(latest: DeploymentRecord | None) -> RollbackFailed | None:
    """An alert when the latest deployment could not bring the previous version back."""
    if latest is None or latest.phase != "rollback-failed":
        return None
    return RollbackFailed(id=latest.id, version=latest.version, message=latest.message)


def router_status(table: RoutingTable | None, stats: RouterStats | None,
                  where: dict[str, str] | None = None) -> RouterStatus:
    """Where the router is, its traffic split by version and the answers it made itself
    (no table: stopped)."""
    where = where or {}
    if table is None:
        return RouterStatus(running=False, where=where)
    traffic = {p.version: round(table.share(p.revision), 1) for p in table.pools}
    answered: dict[str, dict[str, int]] = {}
    if stats is not None:
        for revision, counters in stats.revisions.items():
            if counters.router_responses:
                pool = table.pool(revision)
                answered[pool.version if pool is not None else revision] = counters.router_responses
        if stats.unrouted.router_responses:
            answered["unrouted"] = stats.unrouted.router_responses
    return RouterStatus(running=True, where=where, traffic=traffic, answered=answered)
