"""The classifier's transforms: the thesis's augmentation (fastai `aug_transforms`, on batches),
the resize to the input size, and other laboratories' stains and optics (issue #12, on items).

fastai pickles the data pipeline's transforms into export.pkl, so `LabShift` must live at a
module's top level; learners exported before this module existed name it `training.labshift`,
which stays as its alias. fastai is imported with this module: only training imports it.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from fastai.vision.all import (
    Hue,
    Normalize,
    PadMode,
    PILImage,
    Resize,
    ResizeMethod,
    Saturation,
    Transform,
    aug_transforms,
)

from training.augment import colour_jitter, degrade, stain_jitter
from training.classify.config import TrainConfig

P_STAIN = 0.8  # each of stain and colour jitter, as the detector's training draws them


class LabShift(Transform):
    """Training items only: another laboratory's stain, colour, blur or JPEG on the crop as read,
    before it is resized. Draws from numpy's global generator, which fastai's `set_seed` seeds,
    so a run repeats."""

    split_idx = 0  # the training set only; validation images stay as taken
    order = 0  # before Resize (order 1): the jitter acts at the native scale

    def __init__(self, stain: bool = True, optics: bool = True) -> None:
        super().__init__()
        self.stain = stain
        self.optics = optics

    def encodes(self, image: PILImage) -> PILImage:
        rng = np.random.default_rng(np.random.randint(2**31))
        rgb = np.asarray(image.convert("RGB"))
        if self.stain:
            if rng.random() < P_STAIN:
                rgb = stain_jitter(rgb, rng)
            if rng.random() < P_STAIN:
                rgb = colour_jitter(rgb, rng)
        if self.optics:
            rgb = degrade(rgb, rng)
        return PILImage.create(rgb)


def batch_transforms(cfg: TrainConfig, mean: list[float], std: list[float]) -> list[Any]:
    aug = cfg.augment
    extra: list[Any] = []
    if aug.max_hue > 0:
        extra.append(Hue(max_hue=aug.max_hue, p=aug.p_lighting))
    if aug.max_saturation > 0:
        extra.append(Saturation(max_lighting=aug.max_saturation, p=aug.p_lighting))
    tfms = aug_transforms(
        do_flip=True,
        flip_vert=aug.flip_vert,
        max_rotate=aug.max_rotate,
        max_zoom=aug.max_zoom,
        max_lighting=aug.max_lighting,
        max_warp=aug.max_warp,
        p_affine=aug.p_affine,
        p_lighting=aug.p_lighting,
        xtra_tfms=extra or None,
    )
    return [*tfms, Normalize.from_stats(mean, std)]


def item_transforms(cfg: TrainConfig) -> list[Any]:
    # Pad, not crop or squish: a cell's shape is what several classes are about.
    resize = Resize(cfg.input_size, method=ResizeMethod.Pad, pad_mode=PadMode.Border)
    if cfg.augment.stain or cfg.augment.degrade:
        return [LabShift(cfg.augment.stain, cfg.augment.degrade), resize]
    return [resize]
