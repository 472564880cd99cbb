"""Model activations: which classifier version the service serves, one row per switch.

Written by hand to match records/schema.py (tests/records/test_records.py compares the two).
Self-contained on purpose: later changes to schema.py must not change what this revision creates.

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-07
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "model_activations",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("user_id", sa.Integer(), nullable=False),
        sa.Column("action", sa.String(16), nullable=False),
        sa.Column("model_id", sa.String(128), nullable=False),
        sa.Column("model_name", sa.String(128), nullable=False),
        sa.Column("weights_sha256", sa.String(64), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_model_activations"),
        sa.ForeignKeyConstraint(
            ["user_id"], ["users.id"], name="fk_model_activations_user_id_users"
        ),
        sa.CheckConstraint(
            "action IN ('activate', 'rollback')", name="ck_model_activations_action"
        ),
    )


def downgrade() -> None:
    op.drop_table("model_activations")
