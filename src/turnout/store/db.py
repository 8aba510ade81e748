"""The state store: revisions, the stable pointer, deployments, events and instances.

A synchronous API over SQLAlchemy Core. Every write is its own committed transaction, so a
control plane killed between two calls loses nothing; `Store.open` brings the schema to
the newest packaged Alembic migration. SQLite (the default) is tuned in `engine` so a
deploying CLI and a `turnout status` can share it; any other SQLAlchemy URL (PostgreSQL)
runs through the same queries. Database errors leave this module only as `StoreError`,
and a second active deployment of a service as `ConflictError`.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import EllipsisType
from typing import Any, Literal

import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError

from turnout.errors import ConflictError, StoreError
from turnout.model import Instance, Revision
from turnout.store import queries as q
from turnout.store import schema as t
from turnout.store.base import converted
from turnout.store.lease import LeaseStore
from turnout.store.records import DeploymentRecord, Event, InstanceRecord

__all__ = ["DeploymentRecord", "Event", "InstanceRecord", "Store"]


class Store(LeaseStore):
    """The state of every service (see the module docstring). Build it with `Store.open`.

    The per-service deployment lock's lease row is read and written by the methods it
    inherits from `turnout.store.lease.LeaseStore`."""

    # -- revisions and the stable pointer ------------------------------------------------
    @converted
    def save_revision(self, revision: Revision) -> None:
        """Keep a revision for history and rollback; saving it again changes nothing."""
        with self._write() as conn:
            owner = conn.scalar(
                sa.select(t.revisions.c.service).where(t.revisions.c.id == revision.id)
            )
            if owner == revision.service:
                return
            if owner is not None:
                raise StoreError(
                    f"revision id {revision.id} of {revision.service} is already taken by"
                    f" service {owner} (same version and run settings); deploy another version"
                )
            latest = conn.scalar(
                sa.select(sa.func.max(t.revisions.c.created_at)).where(
                    t.revisions.c.service == revision.service
                )
            )
            # Strictly increasing per service, so "newest first" holds within one tick too.
            created = self._now() if latest is None else max(self._now(), latest + 1e-6)
            conn.execute(
                t.revisions.insert().values(
                    id=revision.id,
                    service=revision.service,
                    version=revision.version,
                    hash=revision.hash,
                    data=revision.model_dump(mode="json"),
                    created_at=created,
                )
            )

    @converted
    def revision(self, revision_id: str) -> Revision | None:
        with self._read() as conn:
            data = conn.scalar(sa.select(t.revisions.c.data).where(t.revisions.c.id == revision_id))
        return None if data is None else Revision.model_validate(data)

    @converted
    def revisions(self, service: str) -> list[Revision]:
        """Every saved revision of `service`, newest first."""
        query = (
            sa.select(t.revisions.c.data)
            .where(t.revisions.c.service == service)
            .order_by(t.revisions.c.created_at.desc())
        )
        with self._read() as conn:
            return [Revision.model_validate(data) for data in conn.scalars(query)]

    @converted
    def stable(self, service: str) -> str | None:
        query = sa.select(t.services.c.stable_revision).where(t.services.c.name == service)
        with self._read() as conn:
            return conn.scalar(query)

    @converted
    def set_stable(self, service: str, revision_id: str | None) -> None:
        values = {"stable_revision": revision_id, "updated_at": self._now()}
        with self._write() as conn:
            q.upsert(conn, t.services, t.services.c.name, service, values)

    # -- deployments ---------------------------------------------------------------------
    @converted
    def create_deployment(
        self,
        *,
        service: str,
        version: str,
        target_revision: str,
        previous_revision: str | None,
        strategy: str,
        plan: list[dict[str, Any]],
        plan_hash: str,
        owner_pid: int | None,
    ) -> DeploymentRecord:
        """Record a new deployment, progressing at step 0.

        Raises ConflictError when another deployment of the service is still active.
        """
        now = self._now()
        try:
            with self._write() as conn:
                active = q.active_deployment(conn, service)
                if active is not None:
                    raise q.conflict(active)
                inserted = conn.execute(
                    t.deployments.insert().values(
                        service=service, version=version, target_revision=target_revision,
                        previous_revision=previous_revision, strategy=strategy, plan=plan,
                        plan_hash=plan_hash, step=0, phase="progressing", message="",
                        abort_requested=False, promote_requested=False, owner_pid=owner_pid,
                        created_at=now, updated_at=now, finished_at=None,
                    )
                )
                key = inserted.inserted_primary_key
                assert key is not None
                return q.deployment(conn, int(key[0]))
        except IntegrityError as exc:  # lost a race the index caught
            raise ConflictError(f"another deployment of {service} is in progress") from exc

    @converted
    def deployment(self, deployment_id: int) -> DeploymentRecord | None:
        with self._read() as conn:
            return q.find_deployment(conn, deployment_id)

    @converted
    def active_deployment(self, service: str) -> DeploymentRecord | None:
        with self._read() as conn:
            return q.active_deployment(conn, service)

    @converted
    def update_deployment(
        self,
        deployment_id: int,
        *,
        step: int | None = None,
        phase: str | None = None,
        message: str | None = None,
        owner_pid: int | EllipsisType | None = ...,
        plan: list[dict[str, Any]] | None = None,
        plan_hash: str | None = None,
    ) -> DeploymentRecord:
        """Change the given fields; a final phase sets `finished_at`. Returns the new record."""
        now = self._now()
        values: dict[str, Any] = {"updated_at": now}
        given = {"step": step, "message": message, "plan": plan, "plan_hash": plan_hash}
        values.update({name: value for name, value in given.items() if value is not None})
        if owner_pid is not ...:
            values["owner_pid"] = owner_pid
        if phase is not None:
            if phase not in t.PHASES:
                raise ValueError(f"unknown phase {phase!r}; expected one of {t.PHASES}")
            values["phase"] = phase
            values["finished_at"] = now if phase in t.FINAL_PHASES else None
        with self._write() as conn:
            q.update_one(conn, deployment_id, values)
            return q.deployment(conn, deployment_id)

    @converted
    def request(self, deployment_id: int, action: Literal["abort", "promote"]) -> None:
        """Ask the process running the deployment to abort or promote it."""
        with self._write() as conn:
            q.update_one(conn, deployment_id, {q.request_column(action): True, "updated_at": self._now()})

    @converted
    def clear_request(self, deployment_id: int, action: Literal["abort", "promote"]) -> None:
        with self._write() as conn:
            q.update_one(conn, deployment_id, {q.request_column(action): False, "updated_at": self._now()})

    @converted
    def history(self, service: str, limit: int = 20) -> list[DeploymentRecord]:
        """The latest `limit` deployments of `service`, newest first."""
        query = (
            sa.select(t.deployments)
            .where(t.deployments.c.service == service)
            .order_by(t.deployments.c.id.desc())
            .limit(limit)
        )
        with self._read() as conn:
            return [q.deployment_record(row) for row in conn.execute(query)]

    @converted
    def add_event(
        self, deployment_id: int, *, step: int, kind: str, message: str,
        data: Mapping[str, Any] | None = None,
    ) -> None:
        """Store one event of the deployment with its data, in one committed write.

        `data` is kept as JSON: tuples become lists, keys strings, enums their value, models
        and dataclasses their fields, a non-finite float its text ("inf"), anything else its
        `str`, so no data is refused.
        """
        with self._write() as conn:
            conn.execute(
                t.events.insert().values(
                    deployment_id=deployment_id, at=self._now(), step=step, kind=kind,
                    message=message, data=q.plain_json(dict(data or {})),
                )
            )

    @converted
    def events(self, deployment_id: int, *, kind: str | None = None) -> list[Event]:
        """The deployment's events (only those of `kind`, if given) in the order they were added."""
        query = q.events_query(deployment_id, kind).order_by(t.events.c.id)
        with self._read() as conn:
            return [q.event_record(row) for row in conn.execute(query)]

    @converted
    def last_event(self, deployment_id: int, kind: str) -> Event | None:
        """The deployment's latest event of `kind` (say, its latest gate decision)."""
        query = q.events_query(deployment_id, kind).order_by(t.events.c.id.desc()).limit(1)
        with self._read() as conn:
            row = conn.execute(query).first()
        return None if row is None else q.event_record(row)

    # -- instances -----------------------------------------------------------------------
    @converted
    def put_instance(
        self, instance: Instance, *, state: str, warm_until: float | None = None
    ) -> None:
        """Insert or replace the instance with this id."""
        values = {
            "service": instance.service,
            "revision": instance.revision,
            "data": instance.to_json(),
            "state": state,
            "warm_until": warm_until,
        }
        with self._write() as conn:
            q.upsert(conn, t.instances, t.instances.c.id, instance.id, values)

    @converted
    def set_instance_state(
        self, instance_id: str, state: str, *, warm_until: float | None = None
    ) -> None:
        """Set the state (and `warm_until`, cleared unless given) of a known instance."""
        with self._write() as conn:
            done = conn.execute(
                t.instances.update()
                .where(t.instances.c.id == instance_id)
                .values(state=state, warm_until=warm_until)
            )
            if done.rowcount == 0:
                raise StoreError(f"no instance {instance_id!r} in {self.name}")

    @converted
    def remove_instance(self, instance_id: str) -> None:
        """Forget an instance; forgetting an unknown one is not an error."""
        with self._write() as conn:
            conn.execute(t.instances.delete().where(t.instances.c.id == instance_id))

    @converted
    def instances(self, service: str) -> list[InstanceRecord]:
        query = (
            sa.select(t.instances.c.data, t.instances.c.state, t.instances.c.warm_until)
            .where(t.instances.c.service == service)
            .order_by(t.instances.c.id)
        )
        with self._read() as conn:
            return [
                InstanceRecord(Instance.from_json(r.data), state=r.state, warm_until=r.warm_until)
                for r in conn.execute(query)
            ]
