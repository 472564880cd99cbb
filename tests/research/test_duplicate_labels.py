"""research/duplicate_labels.py: an object labelled twice is a same-kind pair of overlapping
boxes."""

from __future__ import annotations

from pathlib import Path

from research.duplicate_labels import duplicate_pairs
from training.datasets.fields import Field, FieldObject


def test_a_white_cell_labelled_twice_is_found_and_touching_cells_are_not() -> None:
    objects = [
        FieldObject("white_cell", 50, 50, (30.0, 30.0, 70.0, 70.0)),
        FieldObject("white_cell", 52, 50, (32.0, 30.0, 72.0, 70.0)),  # the same cell again
        FieldObject("red_cell", 50, 50, (30.0, 30.0, 70.0, 70.0)),  # another kind: not a pair
        FieldObject("red_cell", 10, 10, (0.0, 0.0, 20.0, 20.0)),
        FieldObject("red_cell", 28, 10, (18.0, 0.0, 38.0, 20.0)),  # touching, IoU 0.05
    ]
    field = Field(Path("x.png"), "s", "test", 100, 100, objects)
    pairs = duplicate_pairs(field, threshold=0.5)
    assert [kind for kind, _ in pairs] == ["white_cell"]
    assert pairs[0][1] > 0.9
