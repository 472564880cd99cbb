"""The slide aggregate: slides, their fields and cells, reviews, sign-off and reopening. Each
function is one transaction (records/database.py) and follows the rules of records/store.py."""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import (
    ColumnElement,
    delete,
    func,
    insert,
    not_,
    select,
    update,
)
from sqlalchemy.orm import aliased

from records import schema as db
from records.counts import counts_in
from records.database import Store
from records.entities import (
    UNSET,
    CellRecord,
    FieldInput,
    FieldRecord,
    ProposalsAccepted,
    SlideDetail,
    SlideRecord,
    User,
    _Unset,
)
from records.errors import (
    InvalidInput,
    InvalidLabel,
    NotFound,
    SlideNotSignedOff,
    StaleVersion,
)
from records.schema import CELL_KINDS, utcnow
from records.steps import (
    ADMINS,
    AWAITING_REVIEW,
    CURRENT_LABEL,
    WRITERS,
    acting_user,
    cell_record,
    cell_rows,
    check_open_slide,
    check_slide_exists,
    field_records,
    slide_detail,
    slide_record,
    slide_records,
    touch_open_slide,
    why_not_open,
    write_audit,
)
from records.validation import (
    cell_row,
    check_page,
    checked_scale,
    checked_text,
    field_values,
)


def create_slide(
    store: Store,
    user: User,
    sample_id: str,
    microns_per_pixel: float | None = None,
    notes: str = "",
) -> SlideRecord:
    """A new open slide (reviewer or admin). `sample_id` is the laboratory's own id of the sample:
    required, free text, no patient data."""
    sample_id = checked_text(sample_id, "sample_id", 128)
    scale = checked_scale(microns_per_pixel)
    notes = checked_text(notes, "notes", 10_000, empty=True)
    with store.writing() as session:
        actor = acting_user(session, user, WRITERS, "create slides")
        now = utcnow()
        row = db.Slide(
            sample_id=sample_id,
            microns_per_pixel=scale,
            notes=notes,
            status="open",
            created_by=actor.id,
            created_at=now,
            version=1,
        )
        session.add(row)
        session.flush()
        write_audit(session, actor.id, row.id, "create_slide", to_value=sample_id, at=now)
        return slide_record(session, row.id)


def update_slide(
    store: Store,
    user: User,
    slide_id: int,
    version: int,
    *,
    sample_id: str | None = None,
    notes: str | None = None,
    microns_per_pixel: float | _Unset | None = UNSET,
) -> SlideRecord:
    """Change a slide's sample_id, notes or scale (None for the scale clears it). Optimistic:
    `version` must be the slide's current one (else StaleVersion). Audited with the old and new
    values as JSON."""
    changes: dict[str, Any] = {}
    if sample_id is not None:
        changes["sample_id"] = checked_text(sample_id, "sample_id", 128)
    if notes is not None:
        changes["notes"] = checked_text(notes, "notes", 10_000, empty=True)
    if not isinstance(microns_per_pixel, _Unset):
        changes["microns_per_pixel"] = checked_scale(microns_per_pixel)
    if not changes:
        raise InvalidInput("nothing to change: give sample_id, notes or microns_per_pixel")
    with store.writing() as session:
        actor = acting_user(session, user, WRITERS, "change slides")
        touch_open_slide(session, slide_id, version)
        row = session.get(db.Slide, slide_id)
        assert row is not None
        before = {k: getattr(row, k) for k in changes}
        for k, v in changes.items():
            setattr(row, k, v)
        session.flush()
        write_audit(
            session,
            actor.id,
            slide_id,
            "update_slide",
            from_value=json.dumps(before, sort_keys=True),
            to_value=json.dumps(changes, sort_keys=True),
        )
        return slide_record(session, slide_id)


def list_slides(
    store: Store,
    status: str | None = None,
    sample_id: str | None = None,
    offset: int = 0,
    limit: int = 50,
) -> tuple[list[SlideRecord], int]:
    """Slides, newest first, and how many match in all. `status`: 'open' or 'signed_off';
    `sample_id`: exact match."""
    check_page(offset, limit)
    where: list[ColumnElement[bool]] = []
    if status is not None:
        if status not in db.SLIDE_STATUSES:
            raise InvalidInput(f"status {status!r} is not one of {', '.join(db.SLIDE_STATUSES)}")
        where.append(db.Slide.status == status)
    if sample_id is not None:
        where.append(db.Slide.sample_id == sample_id.strip())
    with store.reading() as session:
        total = int(session.scalar(select(func.count(db.Slide.id)).where(*where)) or 0)
        ids = list(
            session.scalars(
                select(db.Slide.id)
                .where(*where)
                .order_by(db.Slide.created_at.desc(), db.Slide.id.desc())
                .offset(offset)
                .limit(limit)
            )
        )
        items = slide_records(session, db.Slide.id.in_(ids)) if ids else []
    return items, total


def get_slide(store: Store, slide_id: int) -> SlideDetail:
    """A slide and its fields (without image bytes), in upload order, as of one state. NotFound
    if none."""
    with store.snapshot() as session:
        return slide_detail(session, slide_id)


def delete_slide(store: Store, user: User, slide_id: int) -> None:
    """Delete a slide with its fields and cells (admin only; an open slide: reopen a signed-off
    one first). The audit trail stays, with a 'delete_slide' entry."""
    with store.writing() as session:
        actor = acting_user(session, user, ADMINS, "delete slides")
        touch_open_slide(session, slide_id)
        slide = session.get(db.Slide, slide_id)
        assert slide is not None
        n_fields = session.scalar(
            select(func.count(db.Field.id)).where(db.Field.slide_id == slide_id)
        )
        n_cells = session.scalar(select(func.count(db.Cell.id)).where(db.Cell.slide_id == slide_id))
        write_audit(
            session,
            actor.id,
            slide_id,
            "delete_slide",
            from_value=slide.sample_id,
            detail={"sample_id": slide.sample_id, "fields": n_fields, "cells": n_cells},
        )
        session.expunge(slide)
        session.execute(
            delete(db.Slide)
            .where(db.Slide.id == slide_id)
            .execution_options(synchronize_session=False)
        )


def add_field(store: Store, user: User, slide_id: int, field_in: FieldInput) -> FieldRecord:
    """Store an analysed field with all its cells (reviewer or admin), in ONE transaction with
    its audit row: all of it is there, or none of it. Refused on a signed-off slide
    (SlideSignedOff); InvalidInput for a malformed field or cell (before anything is written)."""
    values = field_values(field_in)
    cells = [cell_row(i, c) for i, c in enumerate(field_in.cells)]

    with store.writing() as session:
        actor = acting_user(session, user, WRITERS, "add fields")
        touch_open_slide(session, slide_id)
        ordinal = 1 + int(
            session.scalar(
                select(func.coalesce(func.max(db.Field.ordinal), 0)).where(
                    db.Field.slide_id == slide_id
                )
            )
            or 0
        )
        now = utcnow()
        row = db.Field(
            **values, slide_id=slide_id, ordinal=ordinal, created_by=actor.id, created_at=now
        )
        session.add(row)
        session.flush()
        field_id = row.id
        session.expunge(row)  # the image bytes need not stay in the session
        if cells:
            session.execute(
                insert(db.Cell), [{**c, "slide_id": slide_id, "field_id": field_id} for c in cells]
            )
        store.fault_point("add_field:cells_added", session)
        n_red = sum(c["kind"] == "red_cell" for c in cells)
        write_audit(
            session,
            actor.id,
            slide_id,
            "add_field",
            to_value=str(field_id),
            detail={
                "field_id": field_id,
                "ordinal": ordinal,
                "filename": values["filename"],
                "image_bytes": len(field_in.image),
                "cells": len(cells),
                "red_cells": n_red,
                "classifier": values["classifier_name"],
                "classifier_sha256": values["classifier_sha256"],
                "detector": values["detector_name"],
                "detector_sha256": values["detector_sha256"],
            },
            at=now,
        )
        return field_records(session, db.Field.id == field_id)[0]


def remove_field(store: Store, user: User, slide_id: int, field_id: int) -> None:
    """Remove a field and its cells from an open slide (reviewer or admin), audited with what
    went (cells, reviewed cells). NotFound if the field is not on that slide."""
    with store.writing() as session:
        actor = acting_user(session, user, WRITERS, "remove fields")
        touch_open_slide(session, slide_id)
        found = session.execute(
            select(db.Field.ordinal, db.Field.filename).where(
                db.Field.id == field_id, db.Field.slide_id == slide_id
            )
        ).one_or_none()
        if found is None:
            raise NotFound(f"no field {field_id} on slide {slide_id}")
        n_cells, n_reviewed = session.execute(
            select(func.count(db.Cell.id), func.count(db.Cell.reviewed_at)).where(
                db.Cell.field_id == field_id
            )
        ).one()
        session.execute(
            delete(db.Field)
            .where(db.Field.id == field_id)
            .execution_options(synchronize_session=False)
        )
        store.fault_point("remove_field:deleted", session)
        write_audit(
            session,
            actor.id,
            slide_id,
            "remove_field",
            from_value=str(field_id),
            detail={
                "field_id": field_id,
                "ordinal": found.ordinal,
                "filename": found.filename,
                "cells": int(n_cells),
                "reviewed_cells": int(n_reviewed),
            },
        )


def field_image(store: Store, slide_id: int, field_id: int) -> tuple[bytes, str]:
    """The field's uploaded bytes and media type. NotFound if not on that slide."""
    with store.reading() as session:
        found = session.execute(
            select(db.Field.image, db.Field.media_type).where(
                db.Field.id == field_id, db.Field.slide_id == slide_id
            )
        ).one_or_none()
    if found is None:
        raise NotFound(f"no field {field_id} on slide {slide_id}")
    return bytes(found[0]), str(found[1])


def list_cells(
    store: Store,
    slide_id: int,
    label: str | None = None,
    needs_review: bool | None = None,
    kind: str = "red_cell",
    offset: int = 0,
    limit: int = 200,
    *,
    reviewed: bool | None = None,
    field_id: int | None = None,
) -> tuple[list[CellRecord], int]:
    """A slide's cells of one `kind`, least confident first (then by id; no confidence last),
    and how many match in all.

    `label` filters on the current label (the reviewed one, else the proposed one);
    `needs_review=True` keeps the cells the analysis flagged that nobody has reviewed yet (False:
    all the others); `reviewed` keeps reviewed (True) or unreviewed (False) cells; `field_id` one
    field's. NotFound if there is no such slide.
    """
    if kind not in CELL_KINDS:
        raise InvalidInput(f"kind {kind!r} is not one of {', '.join(CELL_KINDS)}")
    check_page(offset, limit)
    c = db.Cell
    where: list[ColumnElement[bool]] = [c.slide_id == slide_id, c.kind == kind]
    if label is not None:
        where.append(CURRENT_LABEL == label)  # noqa: SIM300 (typed: a SQL expression)
    if needs_review is not None:
        where.append(AWAITING_REVIEW if needs_review else not_(AWAITING_REVIEW))
    if reviewed is not None:
        where.append(c.reviewed_at.is_not(None) if reviewed else c.reviewed_at.is_(None))
    if field_id is not None:
        where.append(c.field_id == field_id)
    with store.snapshot() as session:
        check_slide_exists(session, slide_id)
        total = int(session.scalar(select(func.count(c.id)).where(*where)) or 0)
        return cell_rows(session, *where, offset=offset, limit=limit), total


def get_cell(store: Store, slide_id: int, cell_id: int) -> CellRecord:
    """One cell of a slide. NotFound if not on that slide."""
    reviewer = aliased(db.User)
    with store.reading() as session:
        found = session.execute(
            select(db.Cell, reviewer.name)
            .outerjoin(reviewer, reviewer.id == db.Cell.reviewed_by)
            .where(db.Cell.id == cell_id, db.Cell.slide_id == slide_id)
        ).one_or_none()
        if found is None:
            raise NotFound(f"no cell {cell_id} on slide {slide_id}")
        return cell_record(found[0], found[1])


def review_cell(
    store: Store,
    user: User,
    slide_id: int,
    cell_id: int,
    version: int,
    label: str | None = None,
    classes: Sequence[str] | None = None,
    extra_labels: Sequence[str] = (),
) -> CellRecord:
    """Review a red cell (reviewer or admin): `label=None` confirms its current label, a label
    reclassifies it ('relabel'; the same label as now counts as 'confirm').

    `version` is the cell's version as the reviewer saw it: `UPDATE cells ... WHERE id = ? AND
    version = ?` and `version + 1`; if it changed meanwhile, StaleVersion and nothing changes.
    Allowed labels: `classes` if given, else the keys of the cell's probabilities, and
    `extra_labels` (the laboratory's own classes) either way (InvalidLabel otherwise).
    SlideSignedOff on a signed-off slide, Forbidden for viewers, NotFound if the cell is not on
    that slide, InvalidInput for a white cell or platelet.
    """
    with store.writing() as session:
        actor = acting_user(session, user, WRITERS, "review cells")
        touch_open_slide(session, slide_id)
        found = session.execute(
            select(
                db.Cell.kind, db.Cell.proposed_label, db.Cell.final_label, db.Cell.probabilities
            ).where(db.Cell.id == cell_id, db.Cell.slide_id == slide_id)
        ).one_or_none()
        if found is None:
            raise NotFound(f"no cell {cell_id} on slide {slide_id}")
        kind, proposed, final, probabilities = found
        if kind != "red_cell":
            raise InvalidInput(f"cell {cell_id} is a {kind}: only red cells are reviewed")
        current = final if final is not None else proposed
        if label is None:
            new, action = current, "confirm"
        else:
            allowed = list(classes) if classes is not None else list(probabilities or {})
            allowed += [extra for extra in extra_labels if extra not in allowed]
            if label not in allowed:
                raise InvalidLabel(
                    f"label {label!r} is not one of this slide's classes: {', '.join(allowed)}"
                )
            new, action = label, ("confirm" if label == current else "relabel")
        now = utcnow()
        updated = session.execute(
            update(db.Cell)
            .where(db.Cell.id == cell_id, db.Cell.version == version)
            .values(
                final_label=new,
                reviewed_by=actor.id,
                reviewed_at=now,
                version=db.Cell.version + 1,
            )
            .returning(db.Cell.version)
            .execution_options(synchronize_session=False)
        ).scalar_one_or_none()
        if updated is None:
            raise StaleVersion(f"cell {cell_id} changed since version {version}: read it again")
        store.fault_point("review_cell:updated", session)
        write_audit(
            session,
            actor.id,
            slide_id,
            action,
            cell_id=cell_id,
            from_value=current,
            to_value=new,
            detail={"proposed": proposed, "version": int(updated)},
            at=now,
        )
        reviewed = session.get_one(db.Cell, cell_id)
        return cell_record(reviewed, actor.name)


def accept_proposals(
    store: Store, user: User, slide_id: int, field_id: int, version: int
) -> ProposalsAccepted:
    """Accept every red cell of one field that nobody has reviewed yet at its proposed class
    (reviewer or admin): "the rest of this field is right". One transaction: all of them are
    reviewed, each with its own 'confirm' audit row as a single review has (its detail says
    `via: accept_proposals`), or none is. Cells already reviewed keep their review.

    `version` is the slide's version as the reviewer saw it: any change since (a review, a field
    added) gives StaleVersion and nothing changes, as for a sign-off. NotFound if the field is
    not on that slide (whatever the version), SlideSignedOff on a signed-off slide, Forbidden for
    viewers. With nothing left to accept, nothing changes (the slide keeps its version).
    """
    with store.writing() as session:
        actor = acting_user(session, user, WRITERS, "review cells")
        on_slide = select(db.Field.id).where(db.Field.id == field_id, db.Field.slide_id == slide_id)
        if session.scalar(on_slide) is None:
            check_slide_exists(session, slide_id)
            raise NotFound(f"no field {field_id} on slide {slide_id}")
        check_open_slide(session, slide_id, version)
        now = utcnow()
        c = db.Cell
        accepted = session.execute(
            update(c)
            .where(
                c.field_id == field_id,
                c.slide_id == slide_id,
                c.kind == "red_cell",
                c.reviewed_at.is_(None),
            )
            .values(
                final_label=c.proposed_label,
                reviewed_by=actor.id,
                reviewed_at=now,
                version=c.version + 1,
            )
            .returning(c.id, c.proposed_label, c.version)
            .execution_options(synchronize_session=False)
        ).all()
        if accepted:
            touch_open_slide(session, slide_id, version)
            store.fault_point("accept_proposals:updated", session)
            session.execute(
                insert(db.Audit),
                [
                    {
                        "at": now,
                        "user_id": actor.id,
                        "slide_id": slide_id,
                        "cell_id": cell_id,
                        "action": "confirm",
                        "from_value": proposed,
                        "to_value": proposed,
                        "detail": {
                            "proposed": proposed,
                            "version": int(new_version),
                            "via": "accept_proposals",
                            "field_id": field_id,
                        },
                    }
                    for cell_id, proposed, new_version in sorted(accepted)
                ],
            )
        ids = [row[0] for row in accepted]
        cells = cell_rows(session, c.id.in_(ids)) if ids else []
        return ProposalsAccepted(slide_record(session, slide_id), field_id, tuple(cells))


def sign_off(store: Store, user: User, slide_id: int, version: int) -> SlideRecord:
    """Sign off a slide (reviewer or admin): from then on every write to it is refused until it is
    reopened. `version` is the slide's version as the signer saw it (any change since, a review
    included, gives StaleVersion). SlideSignedOff if it already is. Audited with the counts at
    sign-off."""
    with store.writing() as session:
        actor = acting_user(session, user, WRITERS, "sign off slides")
        now = utcnow()
        done = session.execute(
            update(db.Slide)
            .where(db.Slide.id == slide_id, db.Slide.status == "open", db.Slide.version == version)
            .values(
                status="signed_off",
                signed_off_by=actor.id,
                signed_off_at=now,
                version=db.Slide.version + 1,
            )
            .returning(db.Slide.id)
            .execution_options(synchronize_session=False)
        ).scalar_one_or_none()
        if done is None:
            why_not_open(session, slide_id)
            raise StaleVersion(f"slide {slide_id} changed since version {version}: read it again")
        store.fault_point("sign_off:updated", session)
        counts = counts_in(session, slide_id, None)
        write_audit(
            session,
            actor.id,
            slide_id,
            "sign_off",
            from_value="open",
            to_value="signed_off",
            detail={
                "cells_counted": counts["cells_counted"],
                "counts": counts["counts"],
                "needs_review_remaining": counts["needs_review_remaining"],
            },
            at=now,
        )
        return slide_record(session, slide_id)


def reopen(store: Store, user: User, slide_id: int, reason: str) -> SlideRecord:
    """Reopen a signed-off slide (reviewer or admin) for changes; `reason` is required and goes
    into the audit trail with who had signed it off and when. SlideNotSignedOff if it is open."""
    reason = checked_text(reason, "reason", 2000)
    with store.writing() as session:
        actor = acting_user(session, user, WRITERS, "reopen slides")
        before = session.execute(
            select(db.Slide.signed_off_by, db.Slide.signed_off_at).where(
                db.Slide.id == slide_id, db.Slide.status == "signed_off"
            )
        ).one_or_none()
        done = session.execute(
            update(db.Slide)
            .where(db.Slide.id == slide_id, db.Slide.status == "signed_off")
            .values(
                status="open", signed_off_by=None, signed_off_at=None, version=db.Slide.version + 1
            )
            .returning(db.Slide.id)
            .execution_options(synchronize_session=False)
        ).scalar_one_or_none()
        if done is None or before is None:
            check_slide_exists(session, slide_id)
            raise SlideNotSignedOff(f"slide {slide_id} is open")
        signer = session.get(db.User, before.signed_off_by) if before.signed_off_by else None
        write_audit(
            session,
            actor.id,
            slide_id,
            "reopen",
            from_value="signed_off",
            to_value="open",
            detail={
                "reason": reason,
                "signed_off_by": signer.name if signer else None,
                "signed_off_at": before.signed_off_at.isoformat() if before.signed_off_at else None,
            },
        )
        return slide_record(session, slide_id)


def slides_created_before(
    store: Store, before: datetime, status: str | None = None
) -> list[SlideRecord]:
    """Every slide created before `before` (an aware datetime), oldest first; `status`: only
    'open' or only 'signed_off' ones."""
    if before.tzinfo is None:
        raise InvalidInput("before must be timezone-aware")
    where: list[ColumnElement[bool]] = [db.Slide.created_at < before]
    if status is not None:
        if status not in db.SLIDE_STATUSES:
            raise InvalidInput(f"status {status!r} is not one of {', '.join(db.SLIDE_STATUSES)}")
        where.append(db.Slide.status == status)
    with store.reading() as session:
        records = slide_records(session, *where)
    return sorted(records, key=lambda r: (r.created_at, r.id))
