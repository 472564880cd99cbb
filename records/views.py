"""What the slide views need, each read in one transaction that sees one state of the slide
(records.database.Store.snapshot): a slide with its counts and the warnings a reader of its
figures must have, every cell for the sheet, a field's cells, the review queue. The grading
warnings and the queue's order are the laboratory's rules, so they live here, not in the
routes."""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Final

from records import schema as db
from records.counts import counts_in
from records.database import Store
from records.entities import CellRecord, FieldRecord, QueuedCell, SlideDetail
from records.schema import CELL_KINDS
from records.steps import cell_rows, check_slide_exists, slide_detail
from records.validation import check_page

# Grades are read as grades from this many counted red cells (docs/slides.md, "How many
# cells"): at 500 cells the 95 % interval of a 11 % share is about +-2.7 points, narrower than a
# grade's band; at 100 cells it is +-6 points, most of the 1+ band. ICSH asks for 1,000 cells for
# schistocytes.
MIN_CELLS_FOR_GRADING = 500
MIN_CELLS_FOR_SCHISTOCYTES = 1000

# The review queue gives every tenth place to a cell drawn at random (one cell in ten of the
# queue, at least one), so that confident proposals are checked too, not only doubtful ones.
SPOT_CHECK_EVERY: Final = 10


@dataclass(frozen=True)
class SlideView:
    """A slide with its fields, its counts (records.counts.slide_counts) and its warnings."""

    slide: SlideDetail
    counts: dict[str, Any]
    warnings: list[str]


def slide_view(
    store: Store,
    slide_id: int,
    classes: Sequence[str] | None = None,
    extra_labels: Sequence[str] = (),
) -> SlideView:
    """The slide, its counts and warnings as of one state; `extra_labels` (the laboratory's own
    classes) are listed after the classifier's, 0 when no cell has them. NotFound if there is
    no such slide."""
    with store.snapshot() as session:
        slide = slide_detail(session, slide_id)
        counts = counts_in(session, slide_id, classes, extra_labels)
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


def review_queue(
    store: Store, slide_id: int, offset: int = 0, limit: int = 200
) -> tuple[list[QueuedCell], int]:
    """The slide's red cells that nobody has reviewed yet, those whose review teaches the
    classifier most first (`teaching_order`), and how many there are. NotFound if there is no
    such slide."""
    check_page(offset, limit)
    with store.snapshot() as session:
        check_slide_exists(session, slide_id)
        cells = cell_rows(
            session,
            db.Cell.slide_id == slide_id,
            db.Cell.kind == "red_cell",
            db.Cell.reviewed_at.is_(None),
        )
    queue = teaching_order(cells, slide_id)
    return queue[offset : offset + limit], len(queue)


def _draw(slide_id: int, cell_id: int) -> float:
    """A number in [0, 1) that depends on the slide and the cell only: the same on every call,
    machine and Python (not Python's salted hash)."""
    digest = hashlib.sha256(f"review-queue:{slide_id}:{cell_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def _least_margin(cell: CellRecord) -> tuple[bool, float, float, int]:
    """Least margin first; a cell without probabilities (no margin known) after every cell with
    one, then by confidence; then by id."""
    margin = cell.margin
    confidence = cell.confidence if cell.confidence is not None else 1.0
    return (margin is None, margin if margin is not None else 0.0, confidence, cell.id)


def teaching_order(cells: Sequence[CellRecord], slide_id: int) -> list[QueuedCell]:
    """Unreviewed red cells in the order whose review teaches most.

    One cell in ten (`SPOT_CHECK_EVERY`; at least one) is drawn at random, seeded by the slide
    and the cell's id, so the order is the same on every call; these take every tenth place.
    The others go class by class (proposed class), round-robin: each round takes, from every
    class that has cells left, the one with the least margin (top-1 minus top-2 probability),
    and puts the round's cells least margin first. So every proposed class appears in the first
    round, and within a class the doubtful cells come first. Cells without a margin come last
    within their class."""
    drawn = sorted(cells, key=lambda c: (_draw(slide_id, c.id), c.id))
    n_spot = math.ceil(len(drawn) / SPOT_CHECK_EVERY)
    spot, rest = drawn[:n_spot], drawn[n_spot:]
    by_class: dict[str, list[CellRecord]] = {}
    for cell in sorted(rest, key=_least_margin):
        by_class.setdefault(cell.proposed_label or "", []).append(cell)
    rounds = max((len(group) for group in by_class.values()), default=0)
    main: list[CellRecord] = []
    for r in range(rounds):
        heads = [group[r] for group in by_class.values() if r < len(group)]
        main += sorted(heads, key=lambda c: (_least_margin(c), c.proposed_label or ""))
    queue: list[QueuedCell] = []
    i = j = 0
    while i < len(main) or j < len(spot):
        tenth = len(queue) % SPOT_CHECK_EVERY == SPOT_CHECK_EVERY - 1
        if j < len(spot) and (tenth or i == len(main)):
            queue.append(QueuedCell(spot[j], spot_check=True))
            j += 1
        else:
            queue.append(QueuedCell(main[i], spot_check=False))
            i += 1
    return queue
