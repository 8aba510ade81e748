"""The tables of the state database, as SQLAlchemy Core objects.

This is the shape the code reads and writes. Changes reach a database only through a new
Alembic migration in `migrations/versions/`; a unit test checks that the migrations and
these tables agree, so the two cannot drift apart unnoticed.
"""

from __future__ import annotations

import sqlalchemy as sa

ACTIVE_PHASES = ("progressing", "paused")
# "rollback-failed": the deployment went wrong and bringing the previous version back did
# too, so it may not serve (exit 1, not 3). It fits the String(16) phase column.
FINAL_PHASES = ("succeeded", "aborted", "failed", "rollback-failed")
PHASES = ACTIVE_PHASES + FINAL_PHASES

metadata = sa.MetaData(
    naming_convention={
        "ix": "ix_%(table_name)s_%(column_0_N_name)s",
        "uq": "uq_%(table_name)s_%(column_0_N_name)s",
        "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
        "pk": "pk_%(table_name)s",
    }
)

services = sa.Table(
    "services",
    metadata,
    sa.Column("name", sa.String(64), primary_key=True),
    sa.Column("stable_revision", sa.String(200), nullable=True),
    sa.Column("updated_at", sa.Float, nullable=False),
)

revisions = sa.Table(
    "revisions",
    metadata,
    sa.Column("id", sa.String(200), primary_key=True),
    sa.Column("service", sa.String(64), nullable=False, index=True),
    sa.Column("version", sa.String(200), nullable=False),
    sa.Column("hash", sa.String(64), nullable=False),
    sa.Column("data", sa.JSON, nullable=False),
    sa.Column("created_at", sa.Float, nullable=False),
)

deployments = sa.Table(
    "deployments",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("service", sa.String(64), nullable=False, index=True),
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
)

# At most one deployment in progress per service, enforced by the database itself.
_ACTIVE = sa.text("phase IN ('progressing', 'paused')")
sa.Index(
    "uq_deployments_active_service",
    deployments.c.service,
    unique=True,
    sqlite_where=_ACTIVE,
    postgresql_where=_ACTIVE,
)

events = sa.Table(
    "events",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column(
        "deployment_id",
        sa.Integer,
        sa.ForeignKey("deployments.id", ondelete="CASCADE"),
        nullable=False,
        index=True,
    ),
    sa.Column("at", sa.Float, nullable=False),
    sa.Column("step", sa.Integer, nullable=False),
    sa.Column("kind", sa.String(32), nullable=False),
    sa.Column("message", sa.Text, nullable=False),
    sa.Column("data", sa.JSON, nullable=True),  # migration 0004; null on events stored before it
)

instances = sa.Table(
    "instances",
    metadata,
    sa.Column("id", sa.String(250), primary_key=True),
    sa.Column("service", sa.String(64), nullable=False, index=True),
    sa.Column("revision", sa.String(200), nullable=False),
    sa.Column("data", sa.JSON, nullable=False),
    sa.Column("state", sa.String(32), nullable=False),
    sa.Column("warm_until", sa.Float, nullable=True),
)

# -- feature flags (migration 0002) ------------------------------------------------------

flags = sa.Table(
    "flags",
    metadata,
    sa.Column("name", sa.String(100), primary_key=True),
    sa.Column("definition", sa.JSON, nullable=False),
    sa.Column("version", sa.Integer, nullable=False),
    sa.Column("archived", sa.Boolean, nullable=False),
    sa.Column("created_at", sa.Float, nullable=False),
    sa.Column("updated_at", sa.Float, nullable=False),
)

flag_audit = sa.Table(
    "flag_audit",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("flag", sa.String(120), nullable=False, index=True),
    sa.Column("version", sa.Integer, nullable=False),
    sa.Column("at", sa.Float, nullable=False),
    sa.Column("who", sa.String(200), nullable=False),
    sa.Column("action", sa.String(32), nullable=False),
    sa.Column("change", sa.JSON, nullable=False),
)

flag_segments = sa.Table(
    "flag_segments",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("name", sa.String(200), nullable=False),
    sa.Column("definition", sa.JSON, nullable=False),
    sa.Column("version", sa.Integer, nullable=False),
    sa.Column("updated_at", sa.Float, nullable=False),
)

tokens = sa.Table(
    "tokens",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("name", sa.String(100), nullable=False),
    sa.Column("kind", sa.String(16), nullable=False),
    sa.Column("secret_sha256", sa.String(64), nullable=False, unique=True),
    sa.Column("created_at", sa.Float, nullable=False),
    sa.Column("revoked_at", sa.Float, nullable=True),  # migration 0003; revoked tokens stay listed
)

# One row (id 1): the revision counter every flag or segment change increments.
flag_meta = sa.Table(
    "flag_meta",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("revision", sa.Integer, nullable=False),
)

# -- deployment locks (migration 0005) ---------------------------------------------------

# One row per service while a control plane holds its deployment lock: a lease that its
# holder renews, and that another may take once it has expired (see `turnout.store.lease`).
deploy_locks = sa.Table(
    "deploy_locks",
    metadata,
    sa.Column("service", sa.String(64), primary_key=True),
    sa.Column("token", sa.String(64), nullable=False),  # new for every acquisition
    sa.Column("holder", sa.String(300), nullable=False),  # for people: user@host pid N
    sa.Column("host", sa.String(255), nullable=False),
    sa.Column("pid_space", sa.String(128), nullable=False),  # boot id and pid namespace
    sa.Column("pid", sa.Integer, nullable=False),
    sa.Column("pid_start", sa.BigInteger, nullable=True),  # clock ticks after boot
    sa.Column("acquired_at", sa.Float, nullable=False),
    sa.Column("expires_at", sa.Float, nullable=False),
)
