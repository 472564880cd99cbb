"""What the slide views need, each read in one transaction that sees one state of the slide
(records.database.Store.snapshot): a slide with its counts and the warnings a reader of its
figures must have, every cell for the sheet, a field's cells. The grading warnings are the
laboratory's rules, so they live here, not in the routes."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from records import schema as db
from records.counts import counts_in
from records.database import Store
from records.entities import CellRecord, FieldRecord, SlideDetail
from records.schema import CELL_KINDS
from records.steps import cell_rows, slide_detail

# Grades are read as grades from this many counted red cells (docs/slides.md, "How many
# cells"): at 500 cells the 95 % interval of a 11 % share is about +-2.7 points, narrower than a
# grade's band; at 100 cells it is +-6 points, most of the 1+ band. ICSH asks for 1,000 cells for
# schistocytes.
MIN_CELLS_FOR_GRADING = 500
MIN_CELLS_FOR_SCHISTOCYTES = 1000


@dataclass(frozen=True)
class SlideView:
    """A slide with its fields, its counts (records.counts.slide_counts) and its warnings."""

    slide: SlideDetail
    counts: dict[str, Any]
    warnings: list[str]


def slide_view(store: Store, slide_id: int, classes: Sequence[str] | None = None) -> SlideView:
    """The slide, its counts and warnings as of one state. NotFound if there is no such slide."""
    with store.snapshot() as session:
        slide = slide_detail(session, slide_id)
        counts = counts_in(session, slide_id, classes)
    return SlideView(slide, counts, grading_warnings(counts, slide.fields))


def slide_sheet(store: Store, slide_id: int) -> tuple[SlideDetail, list[CellRecord]]:
    """The slide and every cell of it for a sheet: field by field (upload order), red cells,
    then white cells and platelets, each by id. NotFound if there is no such slide."""
    with store.snapshot() as session:
        slide = slide_detail(session, slide_id)
        cells = cell_rows(session, db.Cell.slide_id == slide_id)
    ordinal = {f.id: f.ordinal for f in slide.fields}
    # A field's cells were stored red cells first, then white cells, then platelets: by id.
    cells.sort(key=lambda c: (ordinal.get(c.field_id, 0), c.id))
    return slide, cells


def field_cells(store: Store, slide_id: int, field_id: int) -> dict[str, list[CellRecord]]:
    """A field's cells by kind (every kind present), least confident first."""
    with store.snapshot() as session:
        cells = cell_rows(session, db.Cell.slide_id == slide_id, db.Cell.field_id == field_id)
    return {k: [c for c in cells if c.kind == k] for k in CELL_KINDS}


def grading_warnings(counts: dict[str, Any], fields: Sequence[FieldRecord]) -> list[str]:
    """What a reader of a slide's figures must know, in plain words."""
    n = int(counts["cells_counted"])
    warnings: list[str] = []
    if n == 0:
        warnings.append("no red cells counted yet: add the slide's fields")
    elif n < MIN_CELLS_FOR_GRADING:
        warnings.append(
            f"grades rest on {n} red cells; at least {MIN_CELLS_FOR_GRADING} are needed "
            "(ICSH grading wants several hundred to 1,000): add fields"
        )
    if 0 < n < MIN_CELLS_FOR_SCHISTOCYTES and "schistocyte" in counts["grades"]:
        warnings.append(
            f"the schistocyte grade rests on {n} red cells; ICSH asks for at least "
            f"{MIN_CELLS_FOR_SCHISTOCYTES:,}"
        )
    remaining = int(counts["needs_review_remaining"])
    if remaining:
        warnings.append(f"{remaining} cells flagged for review have not been reviewed")
    unfamiliar = [str(f.ordinal) for f in fields if f.unfamiliar]
    if unfamiliar:
        warnings.append(
            f"field{'s' if len(unfamiliar) > 1 else ''} {', '.join(unfamiliar)}: unlike the "
            "images the model learnt from (another stain, camera or preparation); review every "
            "cell of it"
        )
    estimated = [str(f.ordinal) for f in fields if f.scale_estimated]
    if estimated:
        warnings.append(
            f"field{'s' if len(estimated) > 1 else ''} {', '.join(estimated)}: the scale was "
            "estimated from the field's own red cells, so size classes (macrocyte, microcyte) "
            "are relative to them; give the slide's microns_per_pixel"
        )
    return warnings
