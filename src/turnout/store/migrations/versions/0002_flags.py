"""Feature flags: flags, their audit trail, segments, API tokens and the revision counter.

Revision ID: 0002
Revises: 0001
Create Date: 2025-02-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    op.create_table(
        "flags",
        sa.Column("name", sa.String(100), nullable=False),
        sa.Column("definition", sa.JSON, nullable=False),
        sa.Column("version", sa.Integer, nullable=False),
        sa.Column("archived", sa.Boolean, nullable=False),
        sa.Column("created_at", sa.Float, nullable=False),
        sa.Column("updated_at", sa.Float, nullable=False),
        sa.PrimaryKeyConstraint("name", name="pk_flags"),
    )
    op.create_table(
        "flag_audit",
        sa.Column("id", sa.Integer, autoincrement=True, nullable=False),
        sa.Column("flag", sa.String(120), nullable=False),
        sa.Column("version", sa.Integer, nullable=False),
        sa.Column("at", sa.Float, nullable=False),
        sa.Column("who", sa.String(200), nullable=False),
        sa.Column("action", sa.String(32), nullable=False),
        sa.Column("change", sa.JSON, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_flag_audit"),
    )
    op.create_index("ix_flag_audit_flag", "flag_audit", ["flag"])
    op.create_table(
        "flag_segments",
        sa.Column("id", sa.Integer, autoincrement=False, nullable=False),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("definition", sa.JSON, nullable=False),
        sa.Column("version", sa.Integer, nullable=False),
        sa.Column("updated_at", sa.Float, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_flag_segments"),
    )
    op.create_table(
        "tokens",
        sa.Column("id", sa.Integer, autoincrement=True, nullable=False),
        sa.Column("name", sa.String(100), nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("secret_sha256", sa.String(64), nullable=False),
        sa.Column("created_at", sa.Float, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_tokens"),
        sa.UniqueConstraint("secret_sha256", name="uq_tokens_secret_sha256"),
    )
    meta = op.create_table(
        "flag_meta",
        sa.Column("id", sa.Integer, autoincrement=False, nullable=False),
        sa.Column("revision", sa.Integer, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_flag_meta"),
    )
    op.bulk_insert(meta, [{"id": 1, "revision": 0}])


def downgrade() -> None:
    op.drop_table("flag_meta")
    op.drop_table("tokens")
    op.drop_table("flag_segments")
    op.drop_index("ix_flag_audit_flag", table_name="flag_audit")
    op.drop_table("flag_audit")
    op.drop_table("flags")
