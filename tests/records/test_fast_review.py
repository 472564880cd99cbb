"""Reviewing fast enough to teach (issue 27): accepting the rest of a field's proposals in one
transaction, and the review queue that puts first the cells that teach most, on SQLite and
PostgreSQL (the fixtures of tests/records/conftest.py). No mocks: a failure half-way is raised
inside the real transaction, and what a refused write must not change is compared with the
database as it was."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import replace

import pytest
from sqlalchemy import text
from sqlalchemy.orm import Session

from records.errors import Forbidden, InvalidInput, NotFound, SlideSignedOff, StaleVersion
from records.store import (
    SPOT_CHECK_EVERY,
    CellInput,
    CellRecord,
    QueuedCell,
    Store,
    User,
    accept_proposals,
    add_field,
    audit_trail,
    create_slide,
    create_user,
    get_cell,
    get_slide,
    list_cells,
    reopen,
    review_cell,
    review_queue,
    sign_off,
    slide_counts,
    teaching_order,
)
from tests.records.test_records import CLASSES, field_in, other, red, snapshot


def two_fields(store: Store, user: User) -> tuple[int, int, int]:
    """A slide with two fields of five red cells each (and a white cell and a platelet in the
    first): the slide's id and the two fields' ids."""
    slide = create_slide(store, user, "S-FAST")
    first = add_field(
        store,
        user,
        slide.id,
        field_in(
            [red(label, p, at=10 + i) for i, (label, p) in enumerate(
                [("normal", 0.9), ("normal", 0.5), ("spherocyte", 0.6),
                 ("target_cell", 0.45), ("normal", 0.99)])]
            + [other("white_cell"), other("platelet")]
        ),
    )  # fmt: skip
    second = add_field(
        store, user, slide.id, field_in([red("normal", 0.8, at=20 + i) for i in range(5)])
    )
    return slide.id, first.id, second.id


def by_field(store: Store, slide_id: int, field_id: int) -> list[CellRecord]:
    return list_cells(store, slide_id, field_id=field_id, limit=1000)[0]


# --- accept the rest of a field ---------------------------------------------------------------


def test_accept_the_rest_of_a_field(store: Store, reviewer: User) -> None:
    slide_id, fid, other_fid = two_fields(store, reviewer)
    cells = by_field(store, slide_id, fid)
    relabelled, confirmed = cells[0], cells[1]
    review_cell(store, reviewer, slide_id, relabelled.id, relabelled.version, "spherocyte")
    review_cell(store, reviewer, slide_id, confirmed.id, confirmed.version)
    ann = create_user(store, "ann", "reviewer")[0]
    before = get_slide(store, slide_id)
    counts = slide_counts(store, slide_id)
    trail = audit_trail(store, slide_id)

    done = accept_proposals(store, ann, slide_id, fid, before.version)

    rest = {c.id: c for c in cells[2:]}
    assert sorted(c.id for c in done.cells) == sorted(rest)
    assert done.field_id == fid and done.slide.version == before.version + 1
    for cell in done.cells:
        assert cell.final_label == cell.proposed_label == rest[cell.id].proposed_label
        assert cell.reviewed_by == "ann" and cell.version == rest[cell.id].version + 1
    # The cells reviewed before keep their review; the other field and the white cells are
    # untouched.
    assert get_cell(store, slide_id, relabelled.id).final_label == "spherocyte"
    assert get_cell(store, slide_id, relabelled.id).reviewed_by == "rae"
    assert get_cell(store, slide_id, confirmed.id).version == confirmed.version + 1
    assert not any(c.reviewed for c in by_field(store, slide_id, other_fid))
    assert all(
        c.final_label is None
        for kind in ("white_cell", "platelet")
        for c in list_cells(store, slide_id, kind=kind)[0]
    )
    # Accepted at their proposed class: the counts do not move, the reviewed ones do.
    after = slide_counts(store, slide_id)
    assert after["counts"] == counts["counts"]
    assert after["reviewed"] == counts["reviewed"] + len(rest)
    # Audited like a single review: one confirmation per cell, by whom, from and to what.
    added = audit_trail(store, slide_id)[len(trail) :]
    assert sorted(e.cell_id for e in added if e.cell_id is not None) == sorted(rest)
    for entry in added:
        assert (entry.action, entry.user) == ("confirm", "ann")
        cell = rest[entry.cell_id or 0]
        assert entry.from_value == entry.to_value == cell.proposed_label
        assert entry.detail == {
            "proposed": cell.proposed_label,
            "version": cell.version + 1,
            "via": "accept_proposals",
            "field_id": fid,
        }
    # Nothing left: nothing changes, the slide keeps its version.
    again = accept_proposals(store, ann, slide_id, fid, done.slide.version)
    assert again.cells == () and again.slide.version == done.slide.version
    assert len(audit_trail(store, slide_id)) == len(trail) + len(rest)


def test_refused_acceptances_change_nothing(store: Store, reviewer: User, admin: User) -> None:
    slide_id, fid, _ = two_fields(store, reviewer)
    elsewhere, elsewhere_fid, _ = two_fields(store, reviewer)
    viewer = create_user(store, "vic", "viewer")[0]
    seen = get_slide(store, slide_id).version
    cell = by_field(store, slide_id, fid)[0]
    review_cell(store, reviewer, slide_id, cell.id, cell.version)  # a change after `seen`
    version = get_slide(store, slide_id).version
    before = snapshot(store)
    refusals: list[tuple[type[Exception], Callable[[], object]]] = [
        (StaleVersion, lambda: accept_proposals(store, reviewer, slide_id, fid, seen)),
        (StaleVersion, lambda: accept_proposals(store, reviewer, slide_id, fid, version + 1)),
        (NotFound, lambda: accept_proposals(store, reviewer, slide_id, elsewhere_fid, version)),
        (NotFound, lambda: accept_proposals(store, reviewer, slide_id, elsewhere_fid, seen)),
        (NotFound, lambda: accept_proposals(store, reviewer, slide_id, 999_999, version)),
        (NotFound, lambda: accept_proposals(store, reviewer, 999_999, fid, version)),
        (Forbidden, lambda: accept_proposals(store, viewer, slide_id, fid, version)),
    ]
    for error, write in refusals:
        with pytest.raises(error):
            write()
        assert snapshot(store) == before, error
    # Signed off: refused until reopened.
    signed = sign_off(store, reviewer, slide_id, version)
    before = snapshot(store)
    with pytest.raises(SlideSignedOff):
        accept_proposals(store, reviewer, slide_id, fid, signed.version)
    assert snapshot(store) == before
    opened = reopen(store, admin, slide_id, "accept the rest")
    done = accept_proposals(store, reviewer, slide_id, fid, opened.version)
    assert len(done.cells) == 4
    assert elsewhere != slide_id and not any(
        c.reviewed for c in by_field(store, elsewhere, elsewhere_fid)
    )


def test_acceptance_is_all_or_nothing(store: Store, reviewer: User) -> None:
    slide_id, fid, _ = two_fields(store, reviewer)
    version = get_slide(store, slide_id).version
    before = snapshot(store)
    trail = audit_trail(store, slide_id)
    seen: list[int] = []

    def fail(point: str, session: Session) -> None:
        if point == "accept_proposals:updated":
            seen.append(
                session.execute(
                    text("SELECT count(*) FROM cells WHERE reviewed_at IS NOT NULL")
                ).scalar_one()
            )
            raise RuntimeError("injected")

    store.fault_hook = fail
    with pytest.raises(RuntimeError, match="injected"):
        accept_proposals(store, reviewer, slide_id, fid, version)
    assert seen == [5]  # the cells were reviewed inside the transaction when it failed
    assert snapshot(store) == before
    assert audit_trail(store, slide_id) == trail
    store.fault_hook = None
    assert len(accept_proposals(store, reviewer, slide_id, fid, version).cells) == 5


# --- the review queue -------------------------------------------------------------------------


def bare(label: str, confidence: float, at: int) -> CellInput:
    """A red cell without probabilities (no margin known)."""
    return replace(red(label, confidence, at=at), probabilities=None)


def queue_slide(store: Store, user: User) -> int:
    """38 red cells: many normal, some spherocytes, three target cells, one schistocyte, and two
    cells without probabilities."""
    plan = (
        [("normal", 0.40 + 0.02 * i) for i in range(24)]
        + [("spherocyte", 0.55 + 0.04 * i) for i in range(8)]
        + [("target_cell", p) for p in (0.9, 0.6, 0.75)]
        + [("schistocyte", 0.97)]
    )
    cells = [red(label, p, at=i) for i, (label, p) in enumerate(plan)]
    cells += [bare("normal", 0.30, at=40), bare("spherocyte", 0.31, at=41)]
    slide = create_slide(store, user, "S-QUEUE")
    add_field(store, user, slide.id, field_in([*cells, other("white_cell")]))
    return slide.id


def check_order(queue: list[QueuedCell]) -> None:
    """The queue's rules, on any queue: spot checks at every tenth place (while other cells
    last), the others round-robin over the proposed classes, least margin first in each."""
    spots = [i for i, q in enumerate(queue) if q.spot_check]
    assert len(spots) == math.ceil(len(queue) / SPOT_CHECK_EVERY)
    main = [q.cell for q in queue if not q.spot_check]
    last_main = max(i for i, q in enumerate(queue) if not q.spot_check)
    tenth = range(SPOT_CHECK_EVERY - 1, len(queue), SPOT_CHECK_EVERY)
    # A spot check is at a tenth place, or after every other cell; and every tenth place up to
    # the last spot check holds one.
    assert all(s in tenth or s > last_main for s in spots), spots
    assert all(queue[t].spot_check for t in tenth if t <= spots[-1]), spots
    classes = {c.proposed_label for c in main}
    # Round r holds the r-th cell of every class that has more than r.
    start = 0
    for r in range(max(sum(c.proposed_label == k for c in main) for k in classes)):
        size = sum(sum(c.proposed_label == k for c in main) > r for k in classes)
        heads = main[start : start + size]
        assert len({c.proposed_label for c in heads}) == size, (r, heads)
        start += size
    for label in classes:
        margins = [c.margin for c in main if c.proposed_label == label]
        known = [m for m in margins if m is not None]
        assert known == sorted(known), label
        assert margins == known + [None] * (len(margins) - len(known)), label  # unknown last


def test_the_review_queue_order(store: Store, reviewer: User) -> None:
    slide_id = queue_slide(store, reviewer)
    queue, total = review_queue(store, slide_id, limit=1000)
    assert total == len(queue) == 38
    assert {q.cell.kind for q in queue} == {"red_cell"}
    check_order(queue)
    # Every proposed class appears in the first round, the least margin of all first.
    main = [q.cell for q in queue if not q.spot_check]
    classes = {c.proposed_label for c in main}
    assert len(classes) >= 3 and {c.proposed_label for c in main[: len(classes)]} == classes
    assert main[0].margin == min(c.margin for c in main if c.margin is not None)
    # A cell's margin is its top-1 minus top-2 probability.
    some = queue[0].cell
    top = sorted((some.probabilities or {}).values(), reverse=True)
    assert some.margin == pytest.approx(top[0] - top[1])
    # The same on every call; paged slices of it.
    assert review_queue(store, slide_id, limit=1000) == (queue, total)
    assert review_queue(store, slide_id, offset=5, limit=7) == (queue[5:12], total)
    assert review_queue(store, slide_id, offset=40)[0] == []
    for offset, limit in ((0, 0), (0, 1001), (-1, 10)):
        with pytest.raises(InvalidInput):
            review_queue(store, slide_id, offset, limit)
    with pytest.raises(NotFound):
        review_queue(store, 999_999)
    # A reviewed cell leaves the queue; the rest keep their rules.
    cell = queue[0].cell
    review_cell(store, reviewer, slide_id, cell.id, cell.version, "spherocyte")
    later, total = review_queue(store, slide_id, limit=1000)
    assert total == 37 and cell.id not in {q.cell.id for q in later}
    check_order(later)


def record(cell_id: int, label: str, probabilities: dict[str, float] | None) -> CellRecord:
    confidence = max(probabilities.values()) if probabilities else 0.5
    return CellRecord(
        id=cell_id, slide_id=1, field_id=1, kind="red_cell", x=0.0, y=0.0, box=(0, 0, 1, 1),
        at_border=False, counted=True, proposed_label=label, confidence=confidence,
        probabilities=probabilities, needs_review=False, final_label=None, reviewed_by=None,
        reviewed_at=None, version=1,
    )  # fmt: skip


def test_teaching_order_rules() -> None:
    cells = [
        record(i, CLASSES[i % 3], {CLASSES[i % 3]: 0.5 + (i % 7) / 20, "x": 0.5 - (i % 7) / 20})
        for i in range(1, 101)
    ]
    cells.append(record(101, "normal", None))
    queue = teaching_order(cells, slide_id=7)
    assert sorted(q.cell.id for q in queue) == list(range(1, 102))
    check_order(queue)
    # Every tenth place is a random check: 11 of 101 cells, at places 10, 20, ... 100, 101.
    assert [i for i, q in enumerate(queue) if q.spot_check] == [*range(9, 100, 10), 100]
    spot = {q.cell.id for q in queue if q.spot_check}
    # The first round has each class's least-margin cell, the least margin of all first.
    assert {q.cell.proposed_label for q in queue[:3]} == set(CLASSES[:3])
    assert queue[0].cell.margin == min(
        c.margin for c in cells if c.id not in spot and c.margin is not None
    )
    # Seeded by the slide: the same cells give the same queue; another slide draws others.
    assert teaching_order(list(reversed(cells)), slide_id=7) == queue
    assert {q.cell.id for q in teaching_order(cells, slide_id=8) if q.spot_check} != spot
    # The random checks are drawn from confident cells as well as doubtful ones.
    margins = sorted(c.margin or 0 for c in cells)
    assert max(q.cell.margin or 0 for q in queue if q.spot_check) > margins[len(margins) // 2]
    # Margins: top-1 minus top-2; one class: its probability; none: unknown, last of its class.
    assert record(1, "a", {"a": 0.6, "b": 0.3, "c": 0.1}).margin == pytest.approx(0.3)
    assert record(1, "a", {"a": 0.8}).margin == pytest.approx(0.8)
    normals = [q.cell.id for q in queue if q.cell.proposed_label == "normal" and not q.spot_check]
    assert 101 in spot or normals[-1] == 101
    assert teaching_order([], slide_id=7) == []
    one = teaching_order([cells[0]], slide_id=7)
    assert one == [QueuedCell(cells[0], spot_check=True)]
