"""The steps every write shares inside its transaction: the acting user read again, the slide's
version bumped (which refuses a signed-off slide and takes its row lock), the audit row, and the
rows turned into records."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any, Final

from sqlalchemy import (
    ColumnElement,
    and_,
    case,
    func,
    insert,
    select,
    update,
)
from sqlalchemy.orm import Session, aliased

from records import schema as db
from records.entities import CellRecord, FieldRecord, SlideDetail, SlideRecord, User
from records.errors import (
    Forbidden,
    NotFound,
    SlideSignedOff,
    StaleVersion,
)
from records.schema import utcnow

WRITERS: Final = ("reviewer", "admin")


ADMINS: Final = ("admin",)


def acting_user(session: Session, user: User, roles: Sequence[str], what: str) -> db.User:
    """The acting user as the database has them now; Forbidden unless active with a role in
    `roles`."""
    row = session.get(db.User, user.id)
    if row is None or not row.active:
        raise Forbidden(f"user {user.name!r} is unknown or inactive")
    if row.role not in roles:
        raise Forbidden(f"user {row.name!r} ({row.role}) may not {what}")
    return row


def why_not_open(session: Session, slide_id: int) -> None:
    """After a guarded slide UPDATE matched nothing: NotFound or SlideSignedOff (else return:
    the version was stale)."""
    status = session.scalar(select(db.Slide.status).where(db.Slide.id == slide_id))
    if status is None:
        raise NotFound(f"no slide {slide_id}")
    if status == "signed_off":
        raise SlideSignedOff(f"slide {slide_id} is signed off: reopen it first")


def check_open_slide(session: Session, slide_id: int, version: int) -> None:
    """What `touch_open_slide` checks, without the bump: the slide exists (NotFound), is open
    (SlideSignedOff) and at `version` (StaleVersion); its row stays locked until commit (on
    PostgreSQL; SQLite's write transaction holds the database). For a write that may turn out
    to change nothing."""
    found = session.execute(
        select(db.Slide.status, db.Slide.version).where(db.Slide.id == slide_id).with_for_update()
    ).one_or_none()
    if found is None:
        raise NotFound(f"no slide {slide_id}")
    if found.status == "signed_off":
        raise SlideSignedOff(f"slide {slide_id} is signed off: reopen it first")
    if found.version != version:
        raise StaleVersion(f"slide {slide_id} changed since version {version}: read it again")


def touch_open_slide(session: Session, slide_id: int, version: int | None = None) -> int:
    """`version = version + 1` on an open slide (and at `version`, when given): refuses a signed-off
    slide and locks its row until commit. Returns the new version."""
    where = [db.Slide.id == slide_id, db.Slide.status == "open"]
    if version is not None:
        where.append(db.Slide.version == version)
    new = session.execute(
        update(db.Slide)
        .where(*where)
        .values(version=db.Slide.version + 1)
        .returning(db.Slide.version)
        .execution_options(synchronize_session=False)
    ).scalar_one_or_none()
    if new is None:
        why_not_open(session, slide_id)
        raise StaleVersion(f"slide {slide_id} changed since version {version}: read it again")
    return int(new)


def write_audit(
    session: Session,
    user_id: int,
    slide_id: int,
    action: str,
    *,
    cell_id: int | None = None,
    from_value: str | None = None,
    to_value: str | None = None,
    detail: Mapping[str, Any] | None = None,
    at: datetime | None = None,
) -> None:
    session.execute(
        insert(db.Audit).values(
            at=at or utcnow(),
            user_id=user_id,
            slide_id=slide_id,
            cell_id=cell_id,
            action=action,
            from_value=from_value,
            to_value=to_value,
            detail=dict(detail or {}),
        )
    )


def slide_records(session: Session, *where: ColumnElement[bool]) -> list[SlideRecord]:
    creator, signer = aliased(db.User), aliased(db.User)
    field_count = (
        select(func.count(db.Field.id))
        .where(db.Field.slide_id == db.Slide.id)
        .correlate(db.Slide)
        .scalar_subquery()
    )
    rows = session.execute(
        select(db.Slide, creator.name, signer.name, field_count)
        .join(creator, creator.id == db.Slide.created_by)
        .outerjoin(signer, signer.id == db.Slide.signed_off_by)
        .where(*where)
        .order_by(db.Slide.created_at.desc(), db.Slide.id.desc())
    ).all()
    return [
        SlideRecord(
            id=s.id,
            sample_id=s.sample_id,
            microns_per_pixel=s.microns_per_pixel,
            notes=s.notes,
            status=s.status,
            created_by=created_by,
            created_at=s.created_at,
            signed_off_by=signed_off_by,
            signed_off_at=s.signed_off_at,
            version=s.version,
            field_count=int(n),
        )
        for s, created_by, signed_off_by, n in rows
    ]


def slide_record(session: Session, slide_id: int) -> SlideRecord:
    found = slide_records(session, db.Slide.id == slide_id)
    if not found:
        raise NotFound(f"no slide {slide_id}")
    return found[0]


def slide_detail(session: Session, slide_id: int) -> SlideDetail:
    """A slide and its fields (without image bytes), in upload order. NotFound if none."""
    slide = slide_record(session, slide_id)
    fields = field_records(session, db.Field.slide_id == slide_id)
    return SlideDetail(**vars(slide), fields=tuple(fields))


def user_record(row: db.User) -> User:
    return User(row.id, row.name, row.role, row.active, row.created_at)


def field_records(session: Session, *where: ColumnElement[bool]) -> list[FieldRecord]:
    creator = aliased(db.User)
    cell_count = (
        select(func.count(db.Cell.id))
        .where(db.Cell.field_id == db.Field.id)
        .correlate(db.Field)
        .scalar_subquery()
    )
    f = db.Field
    rows = session.execute(
        select(
            f.id,
            f.slide_id,
            f.ordinal,
            f.filename,
            f.media_type,
            func.length(f.image),
            f.width,
            f.height,
            f.microns_per_pixel,
            f.scale_estimated,
            f.classifier_name,
            f.classifier_sha256,
            f.detector_name,
            f.detector_sha256,
            f.summary,
            creator.name,
            f.created_at,
            cell_count,
        )
        .join(creator, creator.id == f.created_by)
        .where(*where)
        .order_by(f.slide_id, f.ordinal)
    ).all()
    return [
        FieldRecord(
            id=r[0],
            slide_id=r[1],
            ordinal=r[2],
            filename=r[3],
            media_type=r[4],
            image_bytes=int(r[5]),
            width=r[6],
            height=r[7],
            microns_per_pixel=r[8],
            scale_estimated=bool(r[9]),
            classifier_name=r[10],
            classifier_sha256=r[11],
            detector_name=r[12],
            detector_sha256=r[13],
            summary=dict(r[14] or {}),
            created_by=r[15],
            created_at=r[16],
            cell_count=int(r[17]),
        )
        for r in rows
    ]


CURRENT_LABEL = func.coalesce(db.Cell.final_label, db.Cell.proposed_label)


AWAITING_REVIEW = and_(db.Cell.needs_review.is_(True), db.Cell.reviewed_at.is_(None))


def cell_record(c: db.Cell, reviewer: str | None) -> CellRecord:
    return CellRecord(
        id=c.id,
        slide_id=c.slide_id,
        field_id=c.field_id,
        kind=c.kind,
        x=c.x,
        y=c.y,
        box=(c.x0, c.y0, c.x1, c.y1),
        at_border=c.at_border,
        counted=c.counted,
        proposed_label=c.proposed_label,
        confidence=c.confidence,
        probabilities=dict(c.probabilities) if c.probabilities is not None else None,
        needs_review=c.needs_review,
        final_label=c.final_label,
        reviewed_by=reviewer,
        reviewed_at=c.reviewed_at,
        version=c.version,
    )


def cell_rows(
    session: Session, *where: ColumnElement[bool], offset: int = 0, limit: int | None = None
) -> list[CellRecord]:
    """Cells, least confident first (then by id; no confidence last), with their reviewer."""
    reviewer = aliased(db.User)
    c = db.Cell
    query = (
        select(c, reviewer.name)
        .outerjoin(reviewer, reviewer.id == c.reviewed_by)
        .where(*where)
        .order_by(case((c.confidence.is_(None), 1), else_=0), c.confidence, c.id)
        .offset(offset)
    )
    if limit is not None:
        query = query.limit(limit)
    return [cell_record(cell, name) for cell, name in session.execute(query).all()]


def check_slide_exists(session: Session, slide_id: int) -> None:
    if session.scalar(select(db.Slide.id).where(db.Slide.id == slide_id)) is None:
        raise NotFound(f"no slide {slide_id}")
