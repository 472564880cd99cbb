"""The classifier's item transform for other laboratories' stains and optics (issue #12).

A module of its own, imported only when a recipe asks for it: fastai pickles the data pipeline's
transforms into export.pkl, so the class must live at a module's top level.
"""

from __future__ import annotations

import numpy as np
from fastai.vision.all import PILImage, Transform

from training.augment import colour_jitter, degrade, stain_jitter

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
