"""The first schema: services, revisions, deployments, events, instances.

Revision ID: 0001
Revises:
Create Date: 2025-01-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | None = None
depends_on: str | None = None

_ACTIVE = sa.text("phase IN ('progressing', 'paused')")


def upgrade() -> None:
    op.create_table(
        "services",
        sa.Column("name", sa.String(64), nullable=False),
        sa.Column("stable_revision", sa.String(200), nullable=True),
        sa.Column("updated_at", sa.Float, nullable=False),
        sa.PrimaryKeyConstraint("name", name="pk_services"),
    )
    op.create_table(
        "revisions",
        sa.Column("id", sa.String(200), nullable=False),
        sa.Column("service", sa.String(64), nullable=False),
        sa.Column("version", sa.String(200), nullable=False),
        sa.Column("hash", sa.String(64), nullable=False),
        sa.Column("data", sa.JSON, nullable=False),
        sa.Column("created_at", sa.Float, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_revisions"),
    )
    op.create_index("ix_revisions_service", "revisions", ["service"])
    op.create_table(
        "deployments",
        sa.Column("id", sa.Integer, autoincrement=True, nullable=False),
        sa.Column("service", sa.String(64), nullable=False),
        sa.Column("version", sa.String(200), nullable=False),
        sa.Column("target_revision", sa.String(200), nullable=False),
        sa.Column("previous_revision", sa.String(200), nullable=True),
        sa.Column("strategy", sa.String(32), nullable=False),
        sa.Column("plan", sa.JSON, nullable=False),
        sa.Column("plan_hash", sa.String(64), nullable=False),
        sa.Column("step", sa.Integer, nullable=False),
        sa.Column("phase", sa.String(16), nullable=False),
        sa.Column("message", sa.Text, nullable=False),
        sa.Column("abort_requested", sa.Boolean, nullable=False),
        sa.Column("promote_requested", sa.Boolean, nullable=False),
        sa.Column("owner_pid", sa.Integer, nullable=True),
        sa.Column("created_at", sa.Float, nullable=False),
        sa.Column("updated_at", sa.Float, nullable=False),
        sa.Column("finished_at", sa.Float, nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_deployments"),
    )
    op.create_index("ix_deployments_service", "deployments", ["service"])
    op.create_index(
        "uq_deployments_active_service",
        "deployments",
        ["service"],
        unique=True,
        sqlite_where=_ACTIVE,
        postgresql_where=_ACTIVE,
    )
    op.create_table(
        "events",
        sa.Column("id", sa.Integer, autoincrement=True, nullable=False),
        sa.Column("deployment_id", sa.Integer, nullable=False),
        sa.Column("at", sa.Float, nullable=False),
        sa.Column("step", sa.Integer, nullable=False),
        sa.Column("kind", sa.String(32), nullable=False),
        sa.Column("message", sa.Text, nullable=False),
        sa.ForeignKeyConstraint(
            ["deployment_id"],
            ["deployments.id"],
            name="fk_events_deployment_id_deployments",
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name="pk_events"),
    )
    op.create_index("ix_events_deployment_id", "events", ["deployment_id"])
    op.create_table(
        "instances",
        sa.Column("id", sa.String(250), nullable=False),
        sa.Column("service", sa.String(64), nullable=False),
        sa.Column("revision", sa.String(200), nullable=False),
        sa.Column("data", sa.JSON, nullable=False),
        sa.Column("state", sa.String(32), nullable=False),
        sa.Column("warm_until", sa.Float, nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_instances"),
    )
    op.create_index("ix_instances_service", "instances", ["service"])


def downgrade() -> None:
    op.drop_table("instances")
    op.drop_table("events")
    op.drop_table("deployments")
    op.drop_table("revisions")
    op.drop_table("services")
