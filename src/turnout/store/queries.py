"""The queries and conversions behind `turnout.store.db.Store`, one function each.

The queries take an open connection, inside the transaction the caller began, and return
plain records (`turnout.store.records`); the conversions turn rows and event data into plain
values. `Store` itself stays a list of short methods, each one transaction.
"""

from __future__ import annotations

import dataclasses
import enum
import math
from collections.abc import Mapping
from typing import Any

import sqlalchemy as sa
from pydantic import BaseModel

from turnout.errors import ConflictError, StoreError
from turnout.store import schema as t
from turnout.store.records import DeploymentRecord, Event


def upsert(
    conn: sa.Connection, table: sa.Table, key: sa.Column[Any], key_value: str,
    values: dict[str, Any],
) -> None:
    done = conn.execute(table.update().where(key == key_value).values(**values))
    if done.rowcount == 0:
        conn.execute(table.insert().values({key.name: key_value, **values}))


def events_query(deployment_id: int, kind: str | None) -> sa.Select[Any]:
    e = t.events.c
    query = sa.select(e.id, e.at, e.step, e.kind, e.message, e.data).where(
        e.deployment_id == deployment_id
    )
    return query if kind is None else query.where(e.kind == kind)


def event_record(row: sa.Row[Any]) -> Event:
    data = row.data if isinstance(row.data, dict) else {}  # null: stored before migration 0004
    return Event(id=row.id, at=row.at, step=row.step, kind=row.kind, message=row.message, data=data)


def plain_json(value: Any) -> Any:
    """`value` as plain JSON (see `Store.add_event`)."""
    if value is None or isinstance(value, (str, bool, int)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    if isinstance(value, Mapping):
        return {str(key): plain_json(item) for key, item in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [plain_json(item) for item in value]
    if isinstance(value, enum.Enum):
        return plain_json(value.value)
    if isinstance(value, BaseModel):
        return plain_json(value.model_dump(mode="json"))
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return plain_json(dataclasses.asdict(value))
    return str(value)


def deployment_record(row: sa.Row[Any]) -> DeploymentRecord:
    data = dict(row._mapping)
    data["abort_requested"] = bool(data["abort_requested"])
    data["promote_requested"] = bool(data["promote_requested"])
    return DeploymentRecord(**data)


def find_deployment(conn: sa.Connection, deployment_id: int) -> DeploymentRecord | None:
    row = conn.execute(
        sa.select(t.deployments).where(t.deployments.c.id == deployment_id)
    ).first()
    return None if row is None else deployment_record(row)


def deployment(conn: sa.Connection, deployment_id: int) -> DeploymentRecord:
    found = find_deployment(conn, deployment_id)
    if found is None:
        raise StoreError(f"no deployment {deployment_id}")
    return found


def active_deployment(conn: sa.Connection, service: str) -> DeploymentRecord | None:
    row = conn.execute(
        sa.select(t.deployments)
        .where(t.deployments.c.service == service, t.deployments.c.phase.in_(t.ACTIVE_PHASES))
        .order_by(t.deployments.c.id.desc())
    ).first()
    return None if row is None else deployment_record(row)


def update_one(conn: sa.Connection, deployment_id: int, values: dict[str, Any]) -> None:
    done = conn.execute(
        t.deployments.update().where(t.deployments.c.id == deployment_id).values(**values)
    )
    if done.rowcount == 0:
        raise StoreError(f"no deployment {deployment_id}")


def request_column(action: str) -> str:
    if action not in ("abort", "promote"):
        raise ValueError(f"unknown request {action!r}; expected 'abort' or 'promote'")
    return f"{action}_requested"


def conflict(active: DeploymentRecord) -> ConflictError:
    owner = f" (pid {active.owner_pid})" if active.owner_pid else ""
    return ConflictError(
        f"deployment {active.id} of {active.service} to {active.version} is {active.phase}"
        f"{owner}; run `turnout abort` or wait for it to finish"
    )
