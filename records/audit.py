"""A slide's audit trail, kept after the slide is deleted."""

from __future__ import annotations

from sqlalchemy import (
    select,
)
from sqlalchemy.orm import aliased

from records import schema as db
from records.database import Store
from records.entities import AuditEntry
from records.errors import (
    NotFound,
    SlideDeleted,
)
from records.steps import check_slide_exists


def audit_trail(store: Store, slide_id: int, *, deleted: bool = True) -> list[AuditEntry]:
    """Everything done to a slide, oldest first; kept after the slide is deleted, and returned
    for a deleted slide too unless `deleted` is False (then SlideDeleted). NotFound if neither
    the slide nor any entry exists."""
    who = aliased(db.User)
    a = db.Audit
    with store.reading() as session:
        rows = session.execute(
            select(a, who.name)
            .join(who, who.id == a.user_id)
            .where(a.slide_id == slide_id)
            .order_by(a.id)
        ).all()
        if not rows or not deleted:
            try:
                check_slide_exists(session, slide_id)
            except NotFound:
                if rows:
                    raise SlideDeleted(f"slide {slide_id} was deleted") from None
                raise
        return [
            AuditEntry(
                id=e.id,
                at=e.at,
                user=name,
                user_id=e.user_id,
                slide_id=e.slide_id,
                cell_id=e.cell_id,
                action=e.action,
                from_value=e.from_value,
                to_value=e.to_value,
                detail=dict(e.detail or {}),
            )
            for e, name in rows
        ]
