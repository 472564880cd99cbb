"""What a training crop goes through: scale, flips and quarter turns, stain and optics jitter, and
the centre heatmaps and box sizes it is trained to predict."""

from __future__ import annotations

import numpy as np
from PIL import Image

from core.detect.learned import (
    KINDS,
    STRIDE,
    resample,
)
from training.augment import colour_jitter, degrade, stain_jitter
from training.detect.config import DetectorConfig
from training.detect.data import Sample


def augment(
    sample: Sample, cfg: DetectorConfig, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """A crop x crop training image and its objects (same columns as Sample.objects)."""
    if cfg.enlarged_p > 0 and rng.random() < cfg.enlarged_p:
        return enlarged_negative(sample, cfg, rng)
    scale = rng.uniform(*cfg.scale_range)
    rgb = resample(sample.rgb, scale)
    objects = sample.objects.copy()
    objects[:, 1:] *= scale
    height, width = rgb.shape[:2]
    side = cfg.crop
    fill = np.median(rgb.reshape(-1, 3), axis=0).astype(np.uint8)
    canvas = np.empty((max(side, height), max(side, width), 3), dtype=np.uint8)
    canvas[:] = fill
    top0, left0 = (
        int(rng.integers(0, canvas.shape[0] - height + 1)),
        int(rng.integers(0, canvas.shape[1] - width + 1)),
    )
    canvas[top0 : top0 + height, left0 : left0 + width] = rgb
    objects[:, 1] += left0
    objects[:, 2] += top0
    top = int(rng.integers(0, canvas.shape[0] - side + 1))
    left = int(rng.integers(0, canvas.shape[1] - side + 1))
    crop = canvas[top : top + side, left : left + side]
    objects[:, 1] -= left
    objects[:, 2] -= top
    inside = (objects[:, 1] >= 0) & (objects[:, 1] < side) & (objects[:, 2] >= 0)
    objects = objects[inside & (objects[:, 2] < side)]
    # Flips and quarter turns (the boxes' width and height swap on a turn).
    if rng.random() < 0.5:
        crop = crop[:, ::-1]
        objects[:, 1] = side - 1 - objects[:, 1]
    if rng.random() < 0.5:
        crop = crop[::-1]
        objects[:, 2] = side - 1 - objects[:, 2]
    if rng.random() < 0.5:
        crop = np.transpose(crop, (1, 0, 2))
        objects[:, [1, 2, 3, 4]] = objects[:, [2, 1, 4, 3]]
    return _stain_and_optics(crop, cfg, rng), objects


def _stain_and_optics(
    crop: np.ndarray, cfg: DetectorConfig, rng: np.random.Generator
) -> np.ndarray:
    """Stain and colour jitter (p 0.8 each), then blur and JPEG (training.augment.degrade)."""
    crop = np.ascontiguousarray(crop)
    if cfg.colour:
        if rng.random() < 0.8:
            crop = stain_jitter(crop, rng)
        if rng.random() < 0.8:
            crop = colour_jitter(crop, rng)
    if cfg.degrade:
        crop = degrade(crop, rng, cfg.blur_max)
    return crop


def enlarged_negative(
    sample: Sample, cfg: DetectorConfig, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """A crop of the field enlarged cfg.enlarged_range times (log-uniform) beyond the working
    scale, flipped, jittered and degraded like any crop, with no objects."""
    low, high = np.log(cfg.enlarged_range[0]), np.log(cfg.enlarged_range[1])
    factor = float(np.exp(rng.uniform(low, high)))
    side = cfg.crop
    source = max(2, round(side / factor))  # the field's pixels that fill the crop
    height, width = sample.rgb.shape[:2]
    top = int(rng.integers(0, max(1, height - source + 1)))
    left = int(rng.integers(0, max(1, width - source + 1)))
    piece = sample.rgb[top : top + source, left : left + source]
    crop = np.asarray(Image.fromarray(piece).resize((side, side), Image.Resampling.BILINEAR))
    if rng.random() < 0.5:
        crop = crop[:, ::-1]
    if rng.random() < 0.5:
        crop = crop[::-1]
    return _stain_and_optics(crop, cfg, rng), sample.objects[:0].copy()


def targets(
    objects: np.ndarray, side: int, point_side: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Heatmaps (K, s, s), log sizes (2, s, s) and their mask (1, s, s), s = side / STRIDE."""
    s = side // STRIDE
    heat = np.zeros((len(KINDS), s, s), dtype=np.float32)
    size = np.zeros((2, s, s), dtype=np.float32)
    mask = np.zeros((1, s, s), dtype=np.float32)
    yy, xx = np.mgrid[0:s, 0:s]
    for kind, x, y, w, h in objects:
        cx, cy = x / STRIDE - 0.5, y / STRIDE - 0.5
        extent = (w + h) / 2 if w > 0 else point_side
        sigma = max(0.8, extent / STRIDE / 6.0)
        spot = np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / (2 * sigma**2))
        heat[int(kind)] = np.maximum(heat[int(kind)], spot)
        ix, iy = round(cx), round(cy)
        if 0 <= ix < s and 0 <= iy < s:
            heat[int(kind), iy, ix] = 1.0
            if w > 0:
                size[:, iy, ix] = np.log(np.maximum([w, h], 1.0) / STRIDE)
                mask[0, iy, ix] = 1.0
    return heat, size, mask
