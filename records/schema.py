"""The laboratory's records as SQLAlchemy 2 typed ORM models (one `DeclarativeBase`).

Tables: `users`, `slides`, `fields` (one uploaded image of a slide, with its bytes), `cells` (what
the analysis of a field found), `audit` (every change, kept when slides go) and
`model_activations` (which classifier version the service serves, one row per switch) and
`teach_jobs` (the service's "teach the model" jobs: `python -m training adapt` run by a
service instance, records/teaching.py). Closed
sets of values (roles, statuses, kinds, actions) are strings with CHECK constraints, so that
SQLite and PostgreSQL hold the same thing and a new value is one migration. Every timestamp is
stored and returned as a timezone-aware UTC `datetime`, SQLite included (`UTCDateTime`).

`records/migrations/versions/` is written by hand to match this module; a test compares them.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, ClassVar

from sqlalchemy import (
    JSON,
    Boolean,
    CheckConstraint,
    DateTime,
    Dialect,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

ROLES = ("viewer", "reviewer", "admin")
SLIDE_STATUSES = ("open", "signed_off")
CELL_KINDS = ("red_cell", "white_cell", "platelet")
AUDIT_ACTIONS = (
    "create_slide",
    "update_slide",
    "delete_slide",
    "add_field",
    "remove_field",
    "relabel",
    "confirm",
    "sign_off",
    "reopen",
)
MODEL_ACTIONS = ("activate", "rollback")
TEACH_STATES = ("queued", "running", "done", "failed")

# Deterministic constraint names, the same on every database (Alembic needs names to alter them).
NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


def utcnow() -> datetime:
    """The current time, timezone-aware, in UTC."""
    return datetime.now(UTC)


def _in(column: str, values: tuple[str, ...]) -> str:
    return f"{column} IN ({', '.join(repr(v) for v in values)})"


class UTCDateTime(TypeDecorator[datetime]):
    """`DateTime(timezone=True)` that accepts only aware datetimes and always returns aware UTC
    ones (SQLite keeps no zone: what it returns is read as UTC)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime: records stores timezone-aware UTC times only")
        value = value.astimezone(UTC)
        # SQLite stores the text as given: keep it zone-free so that it sorts and compares.
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value.astimezone(UTC)


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)
    type_annotation_map: ClassVar[dict[Any, Any]] = {
        datetime: UTCDateTime(),
        dict[str, Any]: JSON(),
    }


class User(Base):
    __tablename__ = "users"
    __table_args__ = (CheckConstraint(_in("role", ROLES), name="role"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    role: Mapped[str] = mapped_column(String(16))
    token_sha256: Mapped[str] = mapped_column(String(64), unique=True)  # hex; never the token
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    active: Mapped[bool] = mapped_column(Boolean, default=True)


class Slide(Base):
    __tablename__ = "slides"
    __table_args__ = (
        CheckConstraint(_in("status", SLIDE_STATUSES), name="status"),
        CheckConstraint("version >= 1", name="version"),
        Index("ix_slides_sample_id", "sample_id"),
        Index("ix_slides_status_created_at", "status", "created_at"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    sample_id: Mapped[str] = mapped_column(String(128))  # the lab's own id; no patient data
    microns_per_pixel: Mapped[float | None] = mapped_column(Float)
    notes: Mapped[str] = mapped_column(Text, default="")
    status: Mapped[str] = mapped_column(String(16), default="open")
    created_by: Mapped[int] = mapped_column(ForeignKey("users.id"))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    signed_off_by: Mapped[int | None] = mapped_column(ForeignKey("users.id"))
    signed_off_at: Mapped[datetime | None] = mapped_column()
    # Goes up by one with every change to the slide or anything on it (fields, reviews).
    version: Mapped[int] = mapped_column(Integer, default=1)


class Field(Base):
    __tablename__ = "fields"
    __table_args__ = (
        UniqueConstraint("slide_id", "ordinal", name="uq_fields_slide_id_ordinal"),
        CheckConstraint("width > 0 AND height > 0", name="size"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    slide_id: Mapped[int] = mapped_column(ForeignKey("slides.id", ondelete="CASCADE"))
    ordinal: Mapped[int] = mapped_column(Integer)  # 1, 2, ... within the slide, upload order
    filename: Mapped[str] = mapped_column(String(255))
    image: Mapped[bytes] = mapped_column(LargeBinary)  # the uploaded bytes, as uploaded
    media_type: Mapped[str] = mapped_column(String(64))
    width: Mapped[int] = mapped_column(Integer)
    height: Mapped[int] = mapped_column(Integer)
    microns_per_pixel: Mapped[float | None] = mapped_column(Float)  # the scale the analysis used
    scale_estimated: Mapped[bool] = mapped_column(Boolean, default=False)
    classifier_name: Mapped[str] = mapped_column(String(128))
    classifier_sha256: Mapped[str] = mapped_column(String(64))
    detector_name: Mapped[str] = mapped_column(String(128))
    detector_sha256: Mapped[str | None] = mapped_column(String(64))  # None: classical detector
    summary: Mapped[dict[str, Any]] = mapped_column(JSON)
    created_by: Mapped[int] = mapped_column(ForeignKey("users.id"))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class Cell(Base):
    __tablename__ = "cells"
    __table_args__ = (
        CheckConstraint(_in("kind", CELL_KINDS), name="kind"),
        CheckConstraint(
            "(kind = 'red_cell' AND proposed_label IS NOT NULL)"
            " OR (kind <> 'red_cell' AND proposed_label IS NULL AND final_label IS NULL)",
            name="label_by_kind",
        ),
        CheckConstraint("x0 <= x1 AND y0 <= y1", name="box"),
        CheckConstraint("confidence IS NULL OR (confidence >= 0 AND confidence <= 1)", name="p"),
        CheckConstraint("version >= 1", name="version"),
        # Listing: a slide's cells of one kind, least confident first.
        Index("ix_cells_slide_id_kind_confidence", "slide_id", "kind", "confidence"),
        Index("ix_cells_field_id", "field_id"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    slide_id: Mapped[int] = mapped_column(ForeignKey("slides.id", ondelete="CASCADE"))
    field_id: Mapped[int] = mapped_column(ForeignKey("fields.id", ondelete="CASCADE"))
    kind: Mapped[str] = mapped_column(String(16))
    x: Mapped[float] = mapped_column(Float)  # centre, in the uploaded image's pixels
    y: Mapped[float] = mapped_column(Float)
    x0: Mapped[int] = mapped_column(Integer)  # box, in the uploaded image's pixels
    y0: Mapped[int] = mapped_column(Integer)
    x1: Mapped[int] = mapped_column(Integer)
    y1: Mapped[int] = mapped_column(Integer)
    at_border: Mapped[bool] = mapped_column(Boolean, default=False)
    counted: Mapped[bool] = mapped_column(Boolean, default=True)
    proposed_label: Mapped[str | None] = mapped_column(String(64))  # None for non-red cells
    confidence: Mapped[float | None] = mapped_column(Float)
    probabilities: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    needs_review: Mapped[bool] = mapped_column(Boolean, default=False)  # flagged by the analysis
    final_label: Mapped[str | None] = mapped_column(String(64))  # None until reviewed
    reviewed_by: Mapped[int | None] = mapped_column(ForeignKey("users.id"))
    reviewed_at: Mapped[datetime | None] = mapped_column()
    version: Mapped[int] = mapped_column(Integer, default=1)


class Audit(Base):
    """One change. `slide_id` and `cell_id` are plain integers, not foreign keys: the trail
    outlives the slides, fields and cells it names."""

    __tablename__ = "audit"
    __table_args__ = (
        CheckConstraint(_in("action", AUDIT_ACTIONS), name="action"),
        Index("ix_audit_slide_id_id", "slide_id", "id"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    at: Mapped[datetime] = mapped_column(default=utcnow)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"))
    slide_id: Mapped[int] = mapped_column(Integer)
    cell_id: Mapped[int | None] = mapped_column(Integer)
    action: Mapped[str] = mapped_column(String(32))
    from_value: Mapped[str | None] = mapped_column(Text)
    to_value: Mapped[str | None] = mapped_column(Text)
    detail: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)


class ModelActivation(Base):
    """One switch of the classifier the service serves (app/models.py): the newest row is what
    every instance serves. Rows are only ever added: the table is the switches' trail."""

    __tablename__ = "model_activations"
    __table_args__ = (CheckConstraint(_in("action", MODEL_ACTIONS), name="action"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    at: Mapped[datetime] = mapped_column(default=utcnow)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"))
    action: Mapped[str] = mapped_column(String(16))
    model_id: Mapped[str] = mapped_column(String(128))  # the version's folder name
    model_name: Mapped[str] = mapped_column(String(128))  # its card's name
    weights_sha256: Mapped[str] = mapped_column(String(64))  # the state file it served


class TeachJob(Base):
    """One "teach the model" job (records/teaching.py): `python -m training adapt` into a new
    model version, run by one service instance at a time. `runner` names the instance that
    claimed it; `heartbeat_at` is its last sign of life (a stale one is taken back)."""

    __tablename__ = "teach_jobs"
    __table_args__ = (
        CheckConstraint(_in("state", TEACH_STATES), name="state"),
        CheckConstraint("progress >= 0 AND progress <= 1", name="progress"),
        Index("ix_teach_jobs_state_id", "state", "id"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(128))  # the new version's folder name
    state: Mapped[str] = mapped_column(String(16), default="queued")
    stage: Mapped[str] = mapped_column(String(200), default="")
    progress: Mapped[float] = mapped_column(Float, default=0.0)
    message: Mapped[str | None] = mapped_column(Text)  # why it failed, or a note
    version_id: Mapped[str | None] = mapped_column(String(128))  # when done
    attempts: Mapped[int] = mapped_column(Integer, default=0)  # runs started
    runner: Mapped[str | None] = mapped_column(String(200))  # the instance running it
    requested_by: Mapped[int] = mapped_column(ForeignKey("users.id"))
    requested_at: Mapped[datetime] = mapped_column(default=utcnow)
    started_at: Mapped[datetime | None] = mapped_column()
    heartbeat_at: Mapped[datetime | None] = mapped_column()
    finished_at: Mapped[datetime | None] = mapped_column()
