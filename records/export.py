"""Reviewed cells for a training-set exporter (python -m training import-slides), and the cells of
their slides that they were drawn from."""

from __future__ import annotations

from collections.abc import Iterator

from sqlalchemy import (
    ColumnElement,
    select,
)
from sqlalchemy.orm import aliased

from records import schema as db
from records.database import Store
from records.entities import ExportCell, margin_of


def reviewed_cells(
    store: Store, reviewed_only: bool = True, *, signed_off_only: bool = False
) -> Iterator[ExportCell]:
    """Red cells for a training-set exporter, field by field (each field's image read once, in a
    short transaction of its own: no transaction stays open while the caller works).
    `reviewed_only`: only cells a technologist reviewed (label = final label); else every red cell
    (label = final if reviewed, else proposed). `signed_off_only`: only signed-off slides."""
    c, f, s = db.Cell, db.Field, db.Slide
    where: list[ColumnElement[bool]] = [c.kind == "red_cell"]
    if reviewed_only:
        where.append(c.reviewed_at.is_not(None))
    if signed_off_only:
        where.append(s.status == "signed_off")
    with store.reading() as session:
        field_ids = list(
            session.scalars(
                select(f.id)
                .join(s, s.id == f.slide_id)
                .where(f.id.in_(select(c.field_id).join(s, s.id == c.slide_id).where(*where)))
                .order_by(f.slide_id, f.ordinal)
            )
        )
    reviewer = aliased(db.User)
    for field_id in field_ids:
        with store.reading() as session:
            head = session.execute(
                select(
                    s.id,
                    s.sample_id,
                    s.status,
                    f.ordinal,
                    f.filename,
                    f.media_type,
                    f.image,
                    f.microns_per_pixel,
                    f.classifier_name,
                )
                .join(s, s.id == f.slide_id)
                .where(f.id == field_id)
            ).one_or_none()
            if head is None:  # removed since
                continue
            rows = session.execute(
                select(c, reviewer.name)
                .join(s, s.id == c.slide_id)
                .outerjoin(reviewer, reviewer.id == c.reviewed_by)
                .where(c.field_id == field_id, *where)
                .order_by(c.id)
            ).all()
        image = bytes(head.image)
        for cell, name in rows:
            yield ExportCell(
                slide_id=head.id,
                sample_id=head.sample_id,
                slide_status=head.status,
                field_id=field_id,
                field_ordinal=head.ordinal,
                filename=head.filename,
                media_type=head.media_type,
                image=image,
                microns_per_pixel=head.microns_per_pixel,
                classifier_name=head.classifier_name,
                cell_id=cell.id,
                box=(cell.x0, cell.y0, cell.x1, cell.y1),
                at_border=cell.at_border,
                counted=cell.counted,
                proposed_label=cell.proposed_label,
                final_label=cell.final_label,
                label=cell.final_label if cell.final_label is not None else cell.proposed_label,
                reviewed_by=name,
                reviewed_at=cell.reviewed_at,
            )


def slide_population(store: Store, slide_ids: set[int]) -> list[dict[str, object]]:
    """Every red cell of the slides `slide_ids`, reviewed or not: its slide, field, what the
    analysis proposed and its margin (records.entities.margin_of). What a technologist's reviews
    were drawn from (adapt weighs the reviewed cells to stand for it, training/adapt/judging.py).
    One short read; the probabilities of 100,000 cells are a few megabytes."""
    c = db.Cell
    if not slide_ids:
        return []
    with store.reading() as session:
        rows = session.execute(
            select(c.id, c.slide_id, c.field_id, c.proposed_label, c.probabilities, c.reviewed_at)
            .where(c.kind == "red_cell", c.slide_id.in_(sorted(slide_ids)))
            .order_by(c.id)
        ).all()
    return [
        {
            "cell_id": r.id,
            "slide_id": r.slide_id,
            "field_id": r.field_id,
            "proposed_label": r.proposed_label,
            "margin": margin_of(r.probabilities),
            "reviewed": r.reviewed_at is not None,
        }
        for r in rows
    ]
