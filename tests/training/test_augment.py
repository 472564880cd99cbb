"""The detector's augmentation: degrade's blur range is a parameter, and its default draws
exactly what the shipped recipes drew (so they still reproduce); enlarged negatives are off
unless asked for, and are smooth crops without objects."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from tests.synthetic import make_smear
from training.augment import degrade
from training.detect.config import DetectorConfig, load_detector_config
from training.detect.data import Sample
from training.detect.transforms import augment, enlarged_negative
from training.errors import ConfigError


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

    def detail(x: np.ndarray) -> float:
        return float(np.abs(np.diff(x.astype(float), axis=1)).mean())

    assert detail(strong) < detail(mild) < detail(image)


def _sample() -> Sample:
    image, _, _ = make_smear()
    objects = np.array([[0, 40.0, 40.0, 38.0, 38.0], [0, 120.0, 80.0, 38.0, 38.0]], np.float32)
    return Sample(rgb=image, objects=objects, supervised=(True, True, True), source="synthetic")


def test_enlarged_negatives_are_off_by_default_and_draw_nothing() -> None:
    # With enlarged_p 0 the crops are exactly the shipped recipe's (no extra random draw).
    sample = _sample()
    cfg = DetectorConfig(chula="x", crop=96)
    a, objects_a = augment(sample, cfg, np.random.default_rng(3))
    b, objects_b = augment(sample, replace(cfg, enlarged_p=0.0), np.random.default_rng(3))
    assert np.array_equal(a, b) and np.array_equal(objects_a, objects_b)


def test_an_enlarged_negative_is_an_enlarged_crop_without_objects() -> None:
    # A field of 4-px squares: enlarged 3-8x, a square is 12-32 px across in the crop.
    yy, xx = np.mgrid[0:200, 0:200]
    checker = np.where((yy // 4 + xx // 4) % 2 == 0, 60, 200).astype(np.uint8)
    sample = replace(_sample(), rgb=np.repeat(checker[..., None], 3, axis=2))
    cfg = DetectorConfig(chula="x", crop=96, colour=False, degrade=False)
    for seed in range(5):
        crop, objects = enlarged_negative(sample, cfg, np.random.default_rng(seed))
        assert crop.shape == (96, 96, 3) and crop.dtype == np.uint8
        assert objects.shape == (0, 5)
        row = crop[48, :, 0] > 130
        runs = np.diff(np.flatnonzero(np.diff(row)))  # lengths of the inner squares
        assert runs.size and runs.min() >= 10, runs
    # Every crop of a recipe with enlarged_p near 1 is such a negative.
    always = replace(cfg, enlarged_p=0.99)
    assert all(len(augment(sample, always, np.random.default_rng(s))[1]) == 0 for s in range(5))


def test_enlarged_settings_are_checked() -> None:
    with pytest.raises(ConfigError, match="enlarged_p"):
        load_detector_config(None, {"chula": "x", "enlarged_p": 1.5})
    with pytest.raises(ConfigError, match="enlarged_range"):
        load_detector_config(None, {"chula": "x", "enlarged_range": [0.5, 2.0]})
