"""research/free_nuclei.py: nuclear regions outside every detected object, relative to the field's
red cells (the synthetic field of tests/core/test_nucleus.py)."""

from __future__ import annotations

import pytest

from core.detect.learned import Detected
from research.free_nuclei import free_regions, largest_regions
from tests.core.test_nucleus import box, field
from training.datasets.fields import FieldObject


def red(x: float, y: float) -> Detected:
    return Detected("red_cell", x, y, box(x, y), 0.9, False)


def test_a_nucleus_no_detection_covers_is_a_free_region_and_a_covered_one_is_not() -> None:
    rgb, reds = field()  # six red cells, a dense red cell (160, 40), a nucleus (160, 120), r 8
    objects = [red(x, y) for x, y in reds] + [red(160, 40)]
    regions = free_regions(rgb, objects, microns_per_pixel=0.5)
    assert len(regions) == 1  # the nucleus; the dense red cell is detected (and not blue)
    x, y, area = regions[0]
    assert (x, y) == (pytest.approx(160, abs=0.5), pytest.approx(120, abs=0.5))
    assert area == pytest.approx(3.14159 * 8**2 * 0.25, rel=0.2)  # um^2 at 0.5 um per pixel
    covered = [*objects, Detected("white_cell", 160, 120, box(160, 120), 0.9, False)]
    assert free_regions(rgb, covered, microns_per_pixel=0.5) == []
    assert free_regions(rgb, objects[:2], microns_per_pixel=0.5) == []  # too few red cells


def test_the_largest_region_inside_each_labelled_object() -> None:
    rgb, reds = field()
    objects = [red(x, y) for x, y in reds] + [red(160, 40)]
    # A white cell labelled at the nucleus, a platelet-sized label on plain background, and the
    # dense red cell: only the nucleus holds nuclear pixels, and a detection covering it
    # (here a white cell) does not hide it from this measure.
    labelled = [
        FieldObject("white_cell", 160, 120, box(160, 120, 10)),
        FieldObject("platelet", 150, 10, box(150, 10, 3)),
        FieldObject("red_cell", 160, 40, box(160, 40)),
    ]
    covered = [*objects, Detected("white_cell", 160, 120, box(160, 120), 0.9, False)]
    nucleus, platelet, dense = largest_regions(rgb, covered, labelled, microns_per_pixel=0.5)
    assert nucleus == pytest.approx(3.14159 * 8**2 * 0.25, rel=0.2)
    assert platelet == 0.0 and dense == 0.0
    assert largest_regions(rgb, covered, [], microns_per_pixel=0.5) == []
