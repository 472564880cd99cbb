"""A slide's counts, percentages and ICSH grades over its counted red cells, by current class."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import (
    and_,
    case,
    func,
    select,
)
from sqlalchemy.orm import Session

from core.smear.counting import count_labels, grades, percentages
from records import schema as db
from records.database import Store
from records.steps import AWAITING_REVIEW, CURRENT_LABEL, check_slide_exists


def slide_classes(session: Session, slide_id: int) -> list[str]:
    """The classes of the classifier(s) that analysed the slide: the probabilities' keys of the
    first red cell of each field, in their order."""
    firsts = (
        select(func.min(db.Cell.id))
        .where(db.Cell.slide_id == slide_id, db.Cell.kind == "red_cell")
        .group_by(db.Cell.field_id)
    )
    classes: list[str] = []
    for probabilities in session.scalars(
        select(db.Cell.probabilities).where(db.Cell.id.in_(firsts)).order_by(db.Cell.id)
    ):
        for name in probabilities or {}:
            if name not in classes:
                classes.append(name)
    return classes


def counts_in(
    session: Session,
    slide_id: int,
    classes: Sequence[str] | None,
    extra_labels: Sequence[str] = (),
) -> dict[str, Any]:
    c = db.Cell
    red = and_(c.slide_id == slide_id, c.kind == "red_cell")
    per_label = {
        str(label): int(n)
        for label, n in session.execute(
            select(CURRENT_LABEL, func.count(c.id))
            .where(red, c.counted.is_(True))
            .group_by(CURRENT_LABEL)
        ).all()
    }
    names = list(classes) if classes is not None else slide_classes(session, slide_id)
    names += [label for label in extra_labels if label not in names]
    names += sorted(label for label in per_label if label not in names)
    counts = count_labels((), names)
    counts.update(per_label)
    shares = percentages(counts)
    red_cells, reviewed, relabelled, remaining = session.execute(
        select(
            func.count(c.id),
            func.count(c.reviewed_at),
            func.count(
                case((and_(c.reviewed_at.is_not(None), c.final_label != c.proposed_label), 1))
            ),
            func.count(case((AWAITING_REVIEW, 1))),
        ).where(red)
    ).one()
    by_kind = dict(
        session.execute(
            select(c.kind, func.count(c.id)).where(c.slide_id == slide_id).group_by(c.kind)
        ).all()
    )
    n_fields = session.scalar(select(func.count(db.Field.id)).where(db.Field.slide_id == slide_id))
    return {
        "slide_id": slide_id,
        "classes": names,
        "counts": counts,
        "percentages": shares,
        "grades": grades(shares),
        "cells_counted": sum(counts.values()),
        "red_cells": int(red_cells),
        "white_cells": int(by_kind.get("white_cell", 0)),
        "platelets": int(by_kind.get("platelet", 0)),
        "fields": int(n_fields or 0),
        "reviewed": int(reviewed),
        "relabelled": int(relabelled),
        "needs_review_remaining": int(remaining),
    }


def slide_counts(
    store: Store, slide_id: int, classes: Sequence[str] | None = None
) -> dict[str, Any]:
    """The slide's counts over the counted red cells of all its fields, by current label
    (reviewed, else proposed): `counts`, `percentages`, ICSH `grades` (core.smear.grading),
    `cells_counted`; and `red_cells` (counted or not), `white_cells`, `platelets` (all found),
    `fields`, `reviewed`, `relabelled`, `needs_review_remaining` (flagged, not yet reviewed),
    `classes`. Every class of `classes` (default: the classifier's, from the cells'
    probabilities) is present, 0 when none; a label outside them is added, never dropped.
    NotFound if there is no such slide."""
    with store.reading() as session:
        check_slide_exists(session, slide_id)
        return counts_in(session, slide_id, classes)
