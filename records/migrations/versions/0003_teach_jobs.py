"""Teach jobs: the service's "teach the model" jobs (`python -m training adapt` run by an instance).

Written by hand to match records/schema.py (tests/records/test_records.py compares the two).
Self-contained on purpose: later changes to schema.py must not change what this revision creates.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-14
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "teach_jobs",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(128), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("stage", sa.String(200), nullable=False),
        sa.Column("progress", sa.Float(), nullable=False),
        sa.Column("message", sa.Text(), nullable=True),
        sa.Column("version_id", sa.String(128), nullable=True),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("runner", sa.String(200), nullable=True),
        sa.Column("requested_by", sa.Integer(), nullable=False),
        sa.Column("requested_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("heartbeat_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_teach_jobs"),
        sa.ForeignKeyConstraint(
            ["requested_by"], ["users.id"], name="fk_teach_jobs_requested_by_users"
        ),
        sa.CheckConstraint(
            "state IN ('queued', 'running', 'done', 'failed')", name="ck_teach_jobs_state"
        ),
        sa.CheckConstraint("progress >= 0 AND progress <= 1", name="ck_teach_jobs_progress"),
    )
    op.create_index("ix_teach_jobs_state_id", "teach_jobs", ["state", "id"])


def downgrade() -> None:
    op.drop_index("ix_teach_jobs_state_id", table_name="teach_jobs")
    op.drop_table("teach_jobs")
