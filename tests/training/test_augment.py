"""training/augment.py: degrade's blur range is a parameter, and its default draws exactly what
the shipped recipes drew (so they still reproduce)."""

from __future__ import annotations

import numpy as np

from tests.synthetic import make_smear
from training.augment import degrade


def test_blur_max_default_is_the_shipped_recipes() -> None:
    image, _, _ = make_smear()
    for seed in range(6):
        a = degrade(image, np.random.default_rng(seed))
        b = degrade(image, np.random.default_rng(seed), blur_max=1.5)
        assert np.array_equal(a, b)


def test_a_larger_blur_max_blurs_more() -> None:
    image, _, _ = make_smear()
    # A seed whose first draw blurs (p 0.3) and whose second skips the JPEG round trip.
    seed = next(
        s
        for s in range(100)
        if (r := np.random.default_rng(s)).random() < 0.3 and (r.uniform(), r.random())[1] >= 0.3
    )
    mild = degrade(image, np.random.default_rng(seed), blur_max=1.5)
    strong = degrade(image, np.random.default_rng(seed), blur_max=6.0)
    assert mild.shape == strong.shape == image.shape

    def sharpness(x: np.ndarray) -> float:
        return float(np.abs(np.diff(x.astype(float), axis=1)).mean())

    assert sharpness(strong) < sharpness(mild) < sharpness(image)
