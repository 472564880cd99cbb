"""research/detector_shift.py: each shift keeps the field's size (labels stay where they are) and
does what its name says."""

from __future__ import annotations

import numpy as np

from research.detector_shift import SHIFTS, stains
from tests.synthetic import make_smear


def test_every_shift_keeps_the_field_and_changes_it() -> None:
    image, _, _ = make_smear()
    for name, shift in SHIFTS.items():
        out = shift(image, 0.19, np.random.default_rng(0))
        assert out.shape == image.shape and out.dtype == np.uint8, name
        changed = np.abs(out.astype(int) - image).mean()
        assert (changed == 0) == (name == "clean"), (name, changed)


def test_stains_scale_optical_density() -> None:
    image, _, _ = make_smear()
    same = stains(1.0, 1.0)(image, 0.19, np.random.default_rng(0))
    assert np.abs(same.astype(int) - image).max() <= 1  # rounding only
    weak = stains(0.5, 0.5)(image, 0.19, np.random.default_rng(0))
    assert weak.mean() > image.mean()  # less stain: a paler field
    dimmed = SHIFTS["vignette"](image, 0.19, np.random.default_rng(0))
    assert dimmed[0, 0].mean() < 0.6 * image[0, 0].mean()  # the corner: 55 % of its light
