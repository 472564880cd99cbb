"""research/white_as_red.py: what the detector put where it did not find a labelled white cell."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from research.white_as_red import in_place_of, missed_white_tiles
from training.datasets.fields import Field, FieldObject
from training.detect.evaluate import Found

WHITE = (30.0, 30.0, 70.0, 70.0)


def test_a_labelled_red_cell_in_the_box_corner_is_not_what_took_the_white_cells_place() -> None:
    corner_red = Found("red_cell", 33, 33, (25, 25, 41, 41), False)
    assert in_place_of(WHITE, [corner_red], spare=set()) == "nothing"  # it matched a red label
    assert in_place_of(WHITE, [corner_red], spare={0}) == "counted as red"
    at_edge = Found("red_cell", 50, 50, (30, 30, 70, 70), True)
    assert in_place_of(WHITE, [at_edge], spare={0}) == "red, set aside at the border"
    assert in_place_of(WHITE, [Found("platelet", 50, 50, WHITE, False)], set()) == "platelet"


def test_missed_white_cells_are_told_apart_from_found_ones_and_edge_slivers() -> None:
    objects = [
        FieldObject("white_cell", 50, 50, WHITE),  # found as white below
        FieldObject("white_cell", 150, 50, (130.0, 30.0, 170.0, 70.0)),  # missed, a red there
        FieldObject("white_cell", 195, 150, (190.0, 130.0, 200.0, 170.0)),  # a sliver at the edge
    ]
    field = Field(Path("x.png"), "s", "test", 200, 200, objects)
    found = [
        Found("white_cell", 50, 50, WHITE, False),
        Found("red_cell", 150, 50, (135, 35, 165, 65), False),
    ]
    rgb = np.full((200, 200, 3), 230, dtype=np.uint8)
    cases = [what for what, _ in missed_white_tiles(rgb, field, found, radius=0.0)]
    assert cases == ["s: counted as red", "s: cut by the edge, nothing"]
