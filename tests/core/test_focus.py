"""core/detect/focus.py: a field's sharpness at the detector's working scale, and the detector's
threshold between a sharp field and a defocused one (research/focus_probe.py)."""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageFilter

from core.detect.focus import sharpness
from core.detect.learned import DetectorCard, resample
from tests.synthetic import make_smear

WORKING = 0.38  # the shipped detector's working scale (um per pixel)
MPP = 0.19  # the synthetic smear's scale


def at_working(rgb: np.ndarray) -> np.ndarray:
    return resample(rgb, MPP / WORKING)


def blurred(rgb: np.ndarray, sigma_um: float) -> np.ndarray:
    return np.asarray(Image.fromarray(rgb).filter(ImageFilter.GaussianBlur(sigma_um / MPP)))


def test_a_sharp_field_is_over_the_threshold_and_a_defocused_one_under() -> None:
    image, _, _ = make_smear()
    sharp = sharpness(at_working(image))
    assert sharp > DetectorCard.focus_threshold
    assert sharpness(at_working(blurred(image, 1.0))) < DetectorCard.focus_threshold
    # More blur, less sharpness.
    values = [sharpness(at_working(blurred(image, s))) for s in (0.25, 0.5, 1.0)]
    assert values == sorted(values, reverse=True) and values[0] < sharp


def test_the_stains_strength_does_not_move_it_much() -> None:
    image, _, _ = make_smear()
    background = np.array([230, 225, 220], dtype=np.float32)
    paler = (background + 0.5 * (image.astype(np.float32) - background)).astype(np.uint8)
    a, b = sharpness(at_working(image)), sharpness(at_working(paler))
    assert abs(a - b) / a < 0.25


def test_flat_or_tiny_fields() -> None:
    assert sharpness(np.full((64, 64, 3), 200, dtype=np.uint8)) == 0.0
    assert sharpness(np.zeros((2, 50, 3), dtype=np.uint8)) == 0.0
