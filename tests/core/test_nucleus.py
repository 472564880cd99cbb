"""The nucleus check on red-cell detections (core/detect/nucleus.py): on a synthetic field with
pink red cells, a dense (dark pink) red cell and purple nuclei, a nucleus is told from a red cell
by its hue as well as its darkness, relative to the field's own red cells; and nucleated red
detections become white cells, one per white cell."""

from __future__ import annotations

import numpy as np
import pytest

from core.detect.learned import Detected, add_free_nuclei, set_apart_nucleated
from core.detect.nucleus import NucleusRule, nuclear_shares, nucleated
from tests.synthetic import disc

BACKGROUND = (235, 225, 230)
PINK = (200, 120, 140)  # a red cell
DENSE_PINK = (170, 70, 100)  # a dense red cell: as dark as a nucleus in green, not as blue
PURPLE = (90, 40, 150)  # a nucleus
RADIUS = 10
RULE = NucleusRule(darkness=1.6, blueness=0.5, share=0.1)
DARK_ONLY = NucleusRule(darkness=1.6, blueness=None, share=0.1)


def box(x: float, y: float, r: float = RADIUS) -> tuple[float, float, float, float]:
    return (x - r, y - r, x + r, y + r)


def field() -> tuple[np.ndarray, list[tuple[float, float]]]:
    """A 200x160 field: six red cells, a dense red cell at (160, 40), a nucleus at (160, 120)."""
    rgb = np.empty((160, 200, 3), dtype=np.uint8)
    rgb[:] = BACKGROUND
    reds = [(30, 30), (70, 30), (110, 30), (30, 80), (70, 80), (110, 80)]
    for x, y in reds:
        disc(rgb, x, y, RADIUS, PINK)
    disc(rgb, 160, 40, RADIUS, DENSE_PINK)
    disc(rgb, 160, 120, RADIUS - 2, PURPLE)
    return rgb, reds


def test_a_nucleus_is_told_from_red_cells_by_hue_and_darkness() -> None:
    rgb, reds = field()
    boxes = [box(x, y) for x, y in reds] + [box(160, 40), box(160, 120)]
    shares = nuclear_shares(rgb, boxes, [RULE, DARK_ONLY])
    assert shares[:6].max() == 0.0  # the red cells
    assert shares[6, 0] == 0.0  # the dense red cell is not blue enough for a nucleus
    assert shares[6, 1] > 0.5  # darkness alone would take it for one
    assert shares[7, 0] > 0.5 and shares[7, 1] > 0.5  # the nucleus, either way
    assert nucleated(rgb, boxes, RULE) == [False] * 7 + [True]


def test_the_check_is_relative_to_the_fields_own_red_cells() -> None:
    # The same field in a darker, bluer stain: the nucleus is still the odd one out.
    rgb, reds = field()
    shifted = np.clip(rgb.astype(np.int32) * [0.8, 0.75, 0.95], 0, 255).astype(np.uint8)
    boxes = [box(x, y) for x, y in reds] + [box(160, 120)]
    assert nucleated(shifted, boxes, RULE) == [False] * 6 + [True]


def test_too_few_red_cells_give_no_reference_and_flag_nothing() -> None:
    rgb, _ = field()
    boxes = [box(30, 30), box(160, 120)]
    assert nuclear_shares(rgb, boxes, [RULE]).tolist() == [[0.0], [0.0]]
    assert nuclear_shares(rgb, [], [RULE]).shape == (0, 1)


def red(x: float, y: float, r: float = RADIUS, score: float = 0.9) -> Detected:
    return Detected("red_cell", x, y, box(x, y, r), score, False)


def test_nucleated_red_cells_become_one_white_cell_each() -> None:
    rgb, reds = field()
    # Two lobes of one neutrophil, 14 px apart, and a nucleus inside a white cell already found.
    disc(rgb, 20, 135, 6, PURPLE)
    disc(rgb, 34, 135, 6, PURPLE)
    disc(rgb, 100, 135, 6, PURPLE)
    found_white = Detected("white_cell", 100, 135, (85.0, 120.0, 115.0, 150.0), 0.8, False)
    objects = [red(x, y) for x, y in reds]
    objects += [red(160, 120), red(20, 135, 6, 0.7), red(34, 135, 6, 0.6), red(100, 135, 6)]
    objects += [found_white, Detected("platelet", 185, 150, (182, 147, 188, 153), 0.5, False)]

    kept, moved = set_apart_nucleated(rgb, objects, microns_per_pixel=0.38, rule=RULE)

    assert moved == 4
    assert sorted((o.x, o.y) for o in kept if o.kind == "red_cell") == sorted(reds)
    whites = [o for o in kept if o.kind == "white_cell"]
    assert len(whites) == 3  # the nucleus, the two lobes as one, the white cell already found
    lobes = next(w for w in whites if w.x < 50)
    assert lobes.box == (14.0, 129.0, 40.0, 141.0) and lobes.score == 0.7
    assert [o.kind for o in kept].count("platelet") == 1


def test_without_nucleated_red_cells_nothing_changes() -> None:
    rgb, reds = field()
    objects = [red(x, y) for x, y in reds]
    assert set_apart_nucleated(rgb, objects, 0.38, RULE) == (objects, 0)


def test_a_rule_is_named_by_its_key_and_bad_keys_are_refused() -> None:
    for rule in (RULE, DARK_ONLY):
        assert NucleusRule.from_key(rule.key()) == rule
    for bad in ("", "T2.0", "T2.0-Bx-F0.1", "T2.0-F0.1-Q3", "F0.1"):
        with pytest.raises(ValueError, match="not a nucleus rule"):
            NucleusRule.from_key(bad)


def test_a_nucleus_no_detection_covers_becomes_a_white_cell_when_large_enough() -> None:
    # The network saw the red cells and the dense red cell, and nothing at the nucleus.
    rgb, reds = field()
    objects = [Detected("red_cell", x, y, box(x, y), 0.9, False) for x, y in reds]
    objects.append(Detected("red_cell", 160, 40, box(160, 40), 0.9, False))
    rule = NucleusRule(darkness=1.6, blueness=0.5, share=0.1)
    # At 0.5 um per pixel the nucleus (8 px across in radius) is ~50 um^2: a white cell.
    kept, added = add_free_nuclei(rgb, objects, 0.5, rule, min_area_um2=24.0)
    assert added == 1 and kept[:-1] == objects
    white = kept[-1]
    assert white.kind == "white_cell" and white.score == 0.0 and not white.at_border
    assert white.x == pytest.approx(160, abs=1.5) and white.y == pytest.approx(120, abs=1.5)
    # At 0.2 um per pixel it is ~8 um^2: a speck, not a white cell.
    assert add_free_nuclei(rgb, objects, 0.2, rule, min_area_um2=24.0)[1] == 0
    # Covered by a detection (here the network's own white cell), nothing is added.
    covered = [*objects, Detected("white_cell", 160, 120, box(160, 120), 0.8, False)]
    assert add_free_nuclei(rgb, covered, 0.5, rule, min_area_um2=24.0) == (covered, 0)


def test_free_nuclei_close_together_are_one_white_cell_and_one_beside_a_white_cell_is_part() -> (
    None
):
    rgb, reds = field()
    disc(rgb, 30, 135, 5, PURPLE)  # two lobes 8 px apart: one neutrophil at 0.5 um per pixel
    disc(rgb, 44, 135, 5, PURPLE)
    objects = [Detected("red_cell", x, y, box(x, y), 0.9, False) for x, y in reds]
    objects.append(Detected("red_cell", 160, 40, box(160, 40), 0.9, False))
    objects.append(Detected("white_cell", 160, 105, box(160, 105, 6), 0.8, False))  # a piece
    rule = NucleusRule(darkness=1.6, blueness=0.5, share=0.1)
    kept, added = add_free_nuclei(rgb, objects, 0.5, rule, min_area_um2=15.0)
    # The lobes (~20 um^2 each) make one white cell; the nucleus at (160, 120) lies within a red
    # cell's width of the white cell found at (160, 105), so it is that cell's, not a second.
    assert added == 1
    lobes = kept[-1]
    assert lobes.box[0] < 30 < 44 < lobes.box[2] and lobes.y == pytest.approx(135, abs=1.5)
