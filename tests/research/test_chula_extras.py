"""research/chula_extras.py: what the detector put at a labelled red cell that no red detection
matched."""

from __future__ import annotations

from core.detect.learned import Detected
from research.chula_extras import missed_as


def obj(kind: str, x: float, y: float) -> Detected:
    return Detected(kind, x, y, (x - 5, y - 5, x + 5, y + 5), 0.9, False)


def test_the_nearest_object_within_the_radius_says_what_was_there() -> None:
    objects = [obj("red_cell", 30, 0), obj("white_cell", 8, 0), obj("platelet", 0, 12)]
    assert missed_as(0, 0, objects, radius=10) == "white_cell"
    assert missed_as(0, 6, objects, radius=10) == "platelet"  # nearer than the white cell
    # A red detection within reach was matched to another point: two labels, one detection.
    assert missed_as(25, 0, objects, radius=10) == "red_cell_taken"
    assert missed_as(100, 100, objects, radius=10) == "nothing"
    assert missed_as(0, 0, [], radius=10) == "nothing"
