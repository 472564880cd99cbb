"""The initial schema: users, slides, fields, cells, audit.

Written by hand to match records/schema.py (tests/records/test_records.py compares the two).
Self-contained on purpose: later changes to schema.py must not change what this revision creates.

Revision ID: 0001
Revises:
Create Date: 2025-01-01
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _when() -> sa.DateTime:
    return sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "users",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(64), nullable=False),
        sa.Column("role", sa.String(16), nullable=False),
        sa.Column("token_sha256", sa.String(64), nullable=False),
        sa.Column("created_at", _when(), nullable=False),
        sa.Column("active", sa.Boolean(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_users"),
        sa.UniqueConstraint("name", name="uq_users_name"),
        sa.UniqueConstraint("token_sha256", name="uq_users_token_sha256"),
        sa.CheckConstraint("role IN ('viewer', 'reviewer', 'admin')", name="ck_users_role"),
    )
    op.create_table(
        "slides",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("sample_id", sa.String(128), nullable=False),
        sa.Column("microns_per_pixel", sa.Float(), nullable=True),
        sa.Column("notes", sa.Text(), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("created_by", sa.Integer(), nullable=False),
        sa.Column("created_at", _when(), nullable=False),
        sa.Column("signed_off_by", sa.Integer(), nullable=True),
        sa.Column("signed_off_at", _when(), nullable=True),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_slides"),
        sa.ForeignKeyConstraint(["created_by"], ["users.id"], name="fk_slides_created_by_users"),
        sa.ForeignKeyConstraint(
            ["signed_off_by"], ["users.id"], name="fk_slides_signed_off_by_users"
        ),
        sa.CheckConstraint("status IN ('open', 'signed_off')", name="ck_slides_status"),
        sa.CheckConstraint("version >= 1", name="ck_slides_version"),
    )
    op.create_index("ix_slides_sample_id", "slides", ["sample_id"])
    op.create_index("ix_slides_status_created_at", "slides", ["status", "created_at"])
    op.create_table(
        "fields",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("slide_id", sa.Integer(), nullable=False),
        sa.Column("ordinal", sa.Integer(), nullable=False),
        sa.Column("filename", sa.String(255), nullable=False),
        sa.Column("image", sa.LargeBinary(), nullable=False),
        sa.Column("media_type", sa.String(64), nullable=False),
        sa.Column("width", sa.Integer(), nullable=False),
        sa.Column("height", sa.Integer(), nullable=False),
        sa.Column("microns_per_pixel", sa.Float(), nullable=True),
        sa.Column("scale_estimated", sa.Boolean(), nullable=False),
        sa.Column("classifier_name", sa.String(128), nullable=False),
        sa.Column("classifier_sha256", sa.String(64), nullable=False),
        sa.Column("detector_name", sa.String(128), nullable=False),
        sa.Column("detector_sha256", sa.String(64), nullable=True),
        sa.Column("summary", sa.JSON(), nullable=False),
        sa.Column("created_by", sa.Integer(), nullable=False),
        sa.Column("created_at", _when(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_fields"),
        sa.ForeignKeyConstraint(
            ["slide_id"], ["slides.id"], name="fk_fields_slide_id_slides", ondelete="CASCADE"
        ),
        sa.ForeignKeyConstraint(["created_by"], ["users.id"], name="fk_fields_created_by_users"),
        sa.UniqueConstraint("slide_id", "ordinal", name="uq_fields_slide_id_ordinal"),
        sa.CheckConstraint("width > 0 AND height > 0", name="ck_fields_size"),
    )
    op.create_table(
        "cells",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("slide_id", sa.Integer(), nullable=False),
        sa.Column("field_id", sa.Integer(), nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("x", sa.Float(), nullable=False),
        sa.Column("y", sa.Float(), nullable=False),
        sa.Column("x0", sa.Integer(), nullable=False),
        sa.Column("y0", sa.Integer(), nullable=False),
        sa.Column("x1", sa.Integer(), nullable=False),
        sa.Column("y1", sa.Integer(), nullable=False),
        sa.Column("at_border", sa.Boolean(), nullable=False),
        sa.Column("counted", sa.Boolean(), nullable=False),
        sa.Column("proposed_label", sa.String(64), nullable=True),
        sa.Column("confidence", sa.Float(), nullable=True),
        sa.Column("probabilities", sa.JSON(), nullable=True),
        sa.Column("needs_review", sa.Boolean(), nullable=False),
        sa.Column("final_label", sa.String(64), nullable=True),
        sa.Column("reviewed_by", sa.Integer(), nullable=True),
        sa.Column("reviewed_at", _when(), nullable=True),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_cells"),
        sa.ForeignKeyConstraint(
            ["slide_id"], ["slides.id"], name="fk_cells_slide_id_slides", ondelete="CASCADE"
        ),
        sa.ForeignKeyConstraint(
            ["field_id"], ["fields.id"], name="fk_cells_field_id_fields", ondelete="CASCADE"
        ),
        sa.ForeignKeyConstraint(["reviewed_by"], ["users.id"], name="fk_cells_reviewed_by_users"),
        sa.CheckConstraint("kind IN ('red_cell', 'white_cell', 'platelet')", name="ck_cells_kind"),
        sa.CheckConstraint(
            "(kind = 'red_cell' AND proposed_label IS NOT NULL)"
            " OR (kind <> 'red_cell' AND proposed_label IS NULL AND final_label IS NULL)",
            name="ck_cells_label_by_kind",
        ),
        sa.CheckConstraint("x0 <= x1 AND y0 <= y1", name="ck_cells_box"),
        sa.CheckConstraint(
            "confidence IS NULL OR (confidence >= 0 AND confidence <= 1)", name="ck_cells_p"
        ),
        sa.CheckConstraint("version >= 1", name="ck_cells_version"),
    )
    op.create_index(
        "ix_cells_slide_id_kind_confidence", "cells", ["slide_id", "kind", "confidence"]
    )
    op.create_index("ix_cells_field_id", "cells", ["field_id"])
    op.create_table(
        "audit",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("at", _when(), nullable=False),
        sa.Column("user_id", sa.Integer(), nullable=False),
        sa.Column("slide_id", sa.Integer(), nullable=False),
        sa.Column("cell_id", sa.Integer(), nullable=True),
        sa.Column("action", sa.String(32), nullable=False),
        sa.Column("from_value", sa.Text(), nullable=True),
        sa.Column("to_value", sa.Text(), nullable=True),
        sa.Column("detail", sa.JSON(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_audit"),
        sa.ForeignKeyConstraint(["user_id"], ["users.id"], name="fk_audit_user_id_users"),
        sa.CheckConstraint(
            "action IN ('create_slide', 'update_slide', 'delete_slide', 'add_field',"
            " 'remove_field', 'relabel', 'confirm', 'sign_off', 'reopen')",
            name="ck_audit_action",
        ),
    )
    op.create_index("ix_audit_slide_id_id", "audit", ["slide_id", "id"])


def downgrade() -> None:
    op.drop_table("audit")
    op.drop_table("cells")
    op.drop_table("fields")
    op.drop_table("slides")
    op.drop_table("users")
