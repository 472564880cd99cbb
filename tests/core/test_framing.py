"""core/smear/framing.py: single-cell images of any framing cut as the training crops were."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from core.smear.analysis import TRAINING_MICRONS_PER_PIXEL
from core.smear.crop import DEFAULT_WINDOW
from core.smear.framing import (
    AT_BORDER_NOTE,
    NO_CELL_NOTE,
    frame_cell,
    needs_review,
    unknown_scale_note,
)
from tests.synthetic import SMEAR_BACKGROUND, SMEAR_CELL, one_cell_image

# Darker than this in green is cell (SMEAR_CELL 105, its pallor 158, plasma 212).
CELL_GREEN = (SMEAR_CELL[1] + SMEAR_BACKGROUND[1]) / 2 + 30


def cell_mask(crop: Image.Image) -> np.ndarray:
    return np.asarray(crop)[..., 1] < CELL_GREEN


def centroid(mask: np.ndarray) -> tuple[float, float]:
    rows, cols = np.nonzero(mask)
    return float(cols.mean() + 0.5), float(rows.mean() + 0.5)  # continuous coordinates


def test_analyser_image_is_brought_to_the_training_framing() -> None:
    # 360x360 at 0.1 um per pixel, the cell 40 px right of and 30 px above the centre, a
    # neighbour cut by the bottom-left corner.
    image = Image.fromarray(
        one_cell_image((360, 360), (220, 150), 0.1, neighbours=[(15, 350)], seed=1)
    )
    framed = frame_cell(image, 0.1)
    assert framed.crop.size == (DEFAULT_WINDOW, DEFAULT_WINDOW) and framed.crop.mode == "RGB"
    assert framed.cell_found and not framed.at_border and framed.notes() == []
    assert framed.factor == pytest.approx(0.1 / TRAINING_MICRONS_PER_PIXEL)
    assert framed.x == pytest.approx(220, abs=3) and framed.y == pytest.approx(150, abs=3)
    mask = cell_mask(framed.crop)
    x, y = centroid(mask)
    assert x == pytest.approx(DEFAULT_WINDOW / 2, abs=2)
    assert y == pytest.approx(DEFAULT_WINDOW / 2, abs=2)
    # The same 7.5-um cell drawn at the training scale, in a training-size crop.
    direct = one_cell_image((72, 72), (36, 36), TRAINING_MICRONS_PER_PIXEL, seed=2)
    expected = (np.asarray(direct)[..., 1] < CELL_GREEN).sum()
    assert mask.sum() == pytest.approx(expected, rel=0.10)
    # ~39 px across, as Chula's normal cells at 0.19 um per pixel.
    assert 2 * np.sqrt(mask.sum() / np.pi) == pytest.approx(7.5 / 0.19, rel=0.05)


def test_the_cell_nearest_the_centre_is_chosen() -> None:
    # Two whole cells: the one nearer the centre (180, 180) is framed.
    image = Image.fromarray(one_cell_image((360, 360), (150, 200), 0.1, neighbours=[(300, 80)]))
    framed = frame_cell(image, 0.1)
    assert (framed.x, framed.y) == pytest.approx((150, 200), abs=3)


def test_a_training_size_crop_at_the_training_scale_is_left_as_it_is() -> None:
    array = one_cell_image((72, 72), (36, 36), TRAINING_MICRONS_PER_PIXEL)
    framed = frame_cell(Image.fromarray(array), TRAINING_MICRONS_PER_PIXEL)
    assert framed.factor == 1.0 and framed.cell_found
    # Recentred by at most a pixel, so the crop is the image, shifted by at most a pixel.
    shift = np.abs(np.asarray(framed.crop, dtype=np.int16)[2:-2, 2:-2] - array[2:-2, 2:-2])
    assert np.median(shift) <= 4


@pytest.mark.parametrize(
    "colour",
    [SMEAR_BACKGROUND, (255, 255, 255), (0, 0, 0)],
    ids=["plasma", "white", "black"],
)
def test_all_background_falls_back_to_the_centre(colour: tuple[int, int, int]) -> None:
    image = Image.new("RGB", (300, 200), colour)
    framed = frame_cell(image, 0.1)
    assert not framed.cell_found and framed.notes() == [NO_CELL_NOTE]
    assert (framed.x, framed.y) == (150, 100)
    assert framed.crop.size == (DEFAULT_WINDOW, DEFAULT_WINDOW)
    assert np.all(np.asarray(framed.crop) == colour)


def test_pale_cell_on_a_light_background_falls_back_to_the_centre() -> None:
    # Too little contrast to tell a cell from plasma: framed around the centre, and said so.
    pale = tuple(c - 6 for c in SMEAR_BACKGROUND)
    array = one_cell_image((200, 200), (120, 90), 0.1, cell=pale)
    framed = frame_cell(Image.fromarray(array), 0.1)
    assert not framed.cell_found and (framed.x, framed.y) == (100, 100)
    assert framed.crop.size == (DEFAULT_WINDOW, DEFAULT_WINDOW)


def test_a_tiny_image_is_padded_not_enlarged() -> None:
    # 30x30 at 0.38 um per pixel is 60x60 at the training scale: padded to 72 with the plasma.
    array = one_cell_image((30, 30), (15, 15), 0.38, diameter_um=7.0)
    framed = frame_cell(Image.fromarray(array), 0.38)
    assert framed.factor == pytest.approx(2.0) and framed.cell_found
    crop = np.asarray(framed.crop)
    assert crop.shape == (DEFAULT_WINDOW, DEFAULT_WINDOW, 3)
    fill = crop[0, 0]
    assert np.abs(fill.astype(int) - SMEAR_BACKGROUND).max() <= 3  # the plasma's colour
    padding = np.all(crop == fill, axis=2)
    image_cols = np.nonzero(~padding.all(axis=0))[0]
    image_rows = np.nonzero(~padding.all(axis=1))[0]
    assert image_cols.max() - image_cols.min() + 1 == pytest.approx(60, abs=1)
    assert image_rows.max() - image_rows.min() + 1 == pytest.approx(60, abs=1)
    # The cell: 7 um, ~37 px across at the training scale.
    assert 2 * np.sqrt(cell_mask(framed.crop).sum() / np.pi) == pytest.approx(7 / 0.19, rel=0.05)


def test_a_one_pixel_image_is_padded() -> None:
    framed = frame_cell(Image.new("RGB", (1, 1), (10, 20, 30)), 0.01)
    assert framed.crop.size == (DEFAULT_WINDOW, DEFAULT_WINDOW) and not framed.cell_found


def test_cell_cut_by_the_edge() -> None:
    array = one_cell_image((200, 200), (100, 8), TRAINING_MICRONS_PER_PIXEL)
    framed = frame_cell(Image.fromarray(array), TRAINING_MICRONS_PER_PIXEL)
    assert framed.cell_found and framed.at_border and framed.notes() == [AT_BORDER_NOTE]
    assert not framed.size_judged
    # A cell well inside a larger image's search region is not at the border.
    inside = one_cell_image((2000, 2000), (1000, 1000), 0.19)
    assert not frame_cell(Image.fromarray(inside), 0.19).at_border


def test_odd_window_and_a_non_square_image() -> None:
    array = one_cell_image((500, 240), (260, 110), 0.1)
    framed = frame_cell(Image.fromarray(array), 0.1, window=25)
    assert framed.crop.size == (25, 25)
    x, y = centroid(cell_mask(framed.crop))
    assert (x, y) == pytest.approx((12.5, 12.5), abs=1.5)


@pytest.mark.parametrize("value", [0.0, 0.001, 5.5, -1.0])
def test_scale_out_of_range(value: float) -> None:
    with pytest.raises(ValueError, match=r"microns_per_pixel .* is outside 0.01-5.0 um per pixel"):
        frame_cell(Image.new("RGB", (64, 64)), value)


def test_not_rgb_is_refused() -> None:
    with pytest.raises(ValueError, match="RGB"):
        frame_cell(Image.new("L", (64, 64)), 0.1)


def test_size_classes_need_review_where_size_cannot_be_judged() -> None:
    assert needs_review("macrocyte", False, size_judged=False)
    assert needs_review("microcyte", False, size_judged=False)
    assert not needs_review("macrocyte", False, size_judged=True)
    assert not needs_review("spherocyte", False, size_judged=False)
    assert needs_review("normal", True, size_judged=True)
    assert "72-px crop at 0.19 um per pixel" in unknown_scale_note(72)
