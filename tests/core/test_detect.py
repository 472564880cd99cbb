"""Cell detection on synthetic smears, grading, and the matching used to evaluate detection."""

from __future__ import annotations

import numpy as np
import pytest

from core.detect.classical import NoCellsError, segment
from core.smear.crop import crop_cell
from core.smear.grading import GRADING_SCALES, grade, scales_for
from tests.synthetic import make_smear
from training.datasets.chula import label_coverage
from training.smear import match_points


def near(points: list[tuple[int, int]], x: float, y: float, radius: float = 6) -> bool:
    return any(np.hypot(px - x, py - y) <= radius for px, py in points)


def test_every_red_cell_found_once_touching_cells_split_others_left_out() -> None:
    image, interior, border = make_smear()
    seg = segment(image)
    red = seg.red_cells
    # Each interior cell, the two touching ones included, is found once and only once.
    for x, y in interior:
        assert sum(near([(x, y)], d.x, d.y) for d in red if not d.at_border) == 1, (x, y)
    # The cell cut by the edge is found and marked; nothing else touches the edge.
    assert [d.at_border for d in red].count(True) == 1
    (edge,) = [d for d in red if d.at_border]
    assert edge.box[0] == 0 and abs(edge.y - border[0][1]) < 4
    # Platelets are too small to be red cells; the dark blob is "other".
    assert len(red) == len(interior) + len(border)
    others = [d for d in seg.detections if d.kind == "other"]
    assert len(others) == 1 and near([(200, 215)], others[0].x, others[0].y)
    # The region map numbers detections from 1, background 0.
    assert seg.labels.max() == len(seg.detections)
    assert seg.labels[60, 60] > 0 and seg.labels[110, 100] == 0


@pytest.mark.parametrize(("value", "reason"), [(255, "uniform"), (0, "uniform"), (128, "uniform")])
def test_blank_or_saturated_images_say_so(value: int, reason: str) -> None:
    with pytest.raises(NoCellsError, match=reason):
        segment(np.full((120, 160, 3), value, dtype=np.uint8))


def test_noise_only_has_too_little_contrast() -> None:
    rng = np.random.default_rng(0)
    noise = (200 + rng.integers(-3, 4, size=(120, 160, 3))).astype(np.uint8)
    with pytest.raises(NoCellsError, match="contrast"):
        segment(noise)


def test_a_field_without_cells_gives_no_detections() -> None:
    image, _, _ = make_smear()
    plasma = np.array(image)
    plasma[:] = image[5, 150]  # background only, plus a few specks of debris
    plasma[50:53, 50:53] = (90, 40, 120)
    plasma[90:93, 120:123] = (90, 40, 120)
    assert segment(plasma).detections == []


def test_wrong_array_shape_is_refused() -> None:
    with pytest.raises(ValueError, match="RGB"):
        segment(np.zeros((10, 10), dtype=np.uint8))


def test_smear_crops_are_the_importers_crops() -> None:
    from training.datasets import chula

    # One function for both: a cell found in a smear is cut exactly as training cells were.
    assert chula.crop_cell is crop_cell


@pytest.mark.parametrize(
    ("label", "pct", "expected"),
    [
        ("macrocyte", 10.4, "none"),
        ("macrocyte", 10.6, "1+"),
        ("macrocyte", 20.0, "1+"),
        ("macrocyte", 21.0, "2+"),
        ("macrocyte", 51.0, "3+"),
        ("spherocyte", 4.0, "none"),
        ("spherocyte", 5.0, "1+"),
        ("spherocyte", 11.0, "2+"),
        ("spherocyte", 25.0, "3+"),
        ("teardrop", 12.0, "2+"),
        ("schistocyte", 0.0, "none"),
        ("schistocyte", 0.5, "1+"),
        ("schistocyte", 1.5, "2+"),
        ("schistocyte", 2.5, "3+"),
        ("normal", 90.0, None),
        ("uncategorised", 30.0, None),
    ],
)
def test_icsh_grades(label: str, pct: float, expected: str | None) -> None:
    assert grade(label, pct) == expected


def test_grading_scales_as_data() -> None:
    scales = scales_for(["normal", "schistocyte", "target_cell"])
    assert set(scales) == {"schistocyte", "target_cell"}
    assert scales["schistocyte"] == {"bounds": [0.1, 1.0, 2.1], "decimals": 1}
    assert all(len(s.bounds) == 3 for s in GRADING_SCALES.values())


def test_match_points_is_one_to_one_and_closest_first() -> None:
    detected = [(10.0, 10.0), (30.0, 10.0), (100.0, 100.0)]
    points = [(12.0, 10.0), (14.0, 10.0), (60.0, 60.0)]
    pairs = match_points(detected, points, radius=20)
    # (10,10) takes the closest point (12,10); (14,10) then goes to (30,10), 16 px away.
    assert sorted(pairs) == [(0, 0), (1, 1)]
    assert match_points(detected, points, radius=1) == []
    assert match_points([], points, 20) == [] and match_points(detected, [], 20) == []


def test_label_coverage_tells_full_from_partial_labelling() -> None:
    image, interior, border = make_smear()
    full = label_coverage(image, interior + border)
    partial = label_coverage(image, interior[:2])
    assert full > 0.8 > partial
    assert label_coverage(image, []) == 0.0
