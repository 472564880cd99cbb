"""A red cell never has a nucleus: a colour check on the learned detector's red cells.

On a laboratory the detector never saw, it can take a white cell it does not recognise (a small
lymphocyte, or one lobe of a neutrophil) for a red cell (docs/detection.md). What gives such a
detection away is its nucleus: stained far darker than the field's red cells, and **bluer**:
haematoxylin / azure absorbs red and green light and lets blue through, while a red cell's
haemoglobin and eosin absorb green and blue. Darkness alone does not separate them (a
dense red cell is as dark as a nucleus: the rules without a blueness in research/nucleus_probe.py's
grid), the hue does.

Everything is relative to the field's own red cells, so no stain or camera is assumed:

- optical density per channel, OD = -log10(pixel / background), the background being each
  channel's 90th percentile over the field;
- a pixel is *nuclear* when its green OD is over `darkness` times the median green OD of the
  red cells' pixels, and its blue-to-green OD ratio under `blueness` times theirs;
- a red detection is *nucleated* when more than `share` of the pixels of its box's central
  ellipse (INNER of each side) are nuclear.

The thresholds are chosen by research/nucleus_probe.py on validation fields (docs/detection.md).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

INNER = 0.8  # the central share of a box's sides that its ellipse spans
MIN_STAIN = 0.02  # green OD under this is background: its blue ratio means nothing
MIN_RED_CELLS = 3  # fewer and the field gives no reference for a red cell's colour
REGION_UM = 0.3  # the resolution nuclear_regions looks at
ROWS_PER_BAND = 256  # rows of optical density nuclear_regions holds at once

Box = tuple[float, float, float, float]


@dataclass(frozen=True)
class NucleusRule:
    darkness: float  # green OD over the red cells' median
    blueness: float | None  # blue/green OD ratio under this share of the red cells'; None: any
    share: float  # of the ellipse's pixels

    def key(self) -> str:
        blue = "" if self.blueness is None else f"-B{self.blueness}"
        return f"T{self.darkness}{blue}-F{self.share}"

    @classmethod
    def from_key(cls, key: str) -> NucleusRule:
        """The rule a key names ("T2.0-B0.7-F0.1", or "T1.6-F0.1" without a hue condition)."""
        parts = {part[:1]: part[1:] for part in key.split("-")}
        try:
            if set(parts) - {"T", "B", "F"} or not {"T", "F"} <= set(parts):
                raise ValueError(key)
            blue = parts.get("B")
            return cls(float(parts["T"]), None if blue is None else float(blue), float(parts["F"]))
        except ValueError:
            raise ValueError(
                f"not a nucleus rule: {key!r} (expected e.g. T2.0-B0.7-F0.1)"
            ) from None


def background(rgb: np.ndarray) -> np.ndarray:
    """Each channel's 90th percentile over the field (a sample of its pixels): the light that
    reaches the camera where nothing absorbs it."""
    sample = rgb[::4, ::4].reshape(-1, 3).astype(np.float32)
    return np.percentile(sample, 90, axis=0).astype(np.float32) + 1.0


def _ellipse_pixels(rgb: np.ndarray, light: np.ndarray, box: Box) -> np.ndarray:
    """The optical density (n, 3) of the pixels inside the central ellipse of `box` (clipped to
    the image), against the background `light`. Only the box's window is converted, so a large
    field costs no full-size float copy."""
    height, width = rgb.shape[:2]
    x0, y0, x1, y1 = box
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    rx, ry = max((x1 - x0) / 2 * INNER, 1.0), max((y1 - y0) / 2 * INNER, 1.0)
    left, right = max(0, int(cx - rx)), min(width, int(cx + rx) + 1)
    top, bottom = max(0, int(cy - ry)), min(height, int(cy + ry) + 1)
    if left >= right or top >= bottom:
        return np.zeros((0, 3), dtype=np.float32)
    ys, xs = np.ogrid[top:bottom, left:right]
    inside = ((xs - cx) / rx) ** 2 + ((ys - cy) / ry) ** 2 <= 1.0
    pixels = rgb[top:bottom, left:right][inside].astype(np.float32)
    return -np.log10((pixels + 1.0) / light)


def _blue_ratio(pixels: np.ndarray) -> np.ndarray:
    return pixels[:, 2] / np.maximum(pixels[:, 1], MIN_STAIN)


def _red_cell_colour(ellipses: Sequence[np.ndarray]) -> tuple[float, float] | None:
    """The red cells' median green OD and blue/green OD ratio over their stained pixels, from
    each red cell's ellipse pixels; None when none is stained."""
    pixels = np.concatenate([p for p in ellipses if len(p)] or [np.zeros((0, 3), np.float32)])
    stained = pixels[pixels[:, 1] > MIN_STAIN]
    if len(stained) == 0:
        return None
    return float(np.median(stained[:, 1])), float(np.median(_blue_ratio(stained)))


def nuclear_shares(
    rgb: np.ndarray,
    boxes: Sequence[Box],
    rules: Sequence[NucleusRule],
    reference: Sequence[Box] | None = None,
) -> np.ndarray:
    """(len(boxes), len(rules)): each box's share of nuclear pixels under each rule's darkness
    and blueness. The red cells' reference colour is taken from `reference` (default: the boxes
    themselves; a few nucleated ones among many red cells do not move the median). All zeros
    when the reference holds fewer than MIN_RED_CELLS boxes."""
    out = np.zeros((len(boxes), len(rules)))
    reference = boxes if reference is None else reference
    if len(boxes) == 0 or len(reference) < MIN_RED_CELLS:
        return out
    light = background(rgb)
    # Each box's pixels once: the boxes judged are usually among the reference's.
    pixels_of = {tuple(b): _ellipse_pixels(rgb, light, b) for b in (*reference, *boxes)}
    colour = _red_cell_colour([pixels_of[tuple(b)] for b in reference])
    if colour is None:
        return out
    green, blue = colour
    for i, box in enumerate(boxes):
        pixels = pixels_of[tuple(box)]
        if len(pixels) == 0:
            continue
        ratio = _blue_ratio(pixels)
        for j, rule in enumerate(rules):
            nuclear = pixels[:, 1] > rule.darkness * green
            if rule.blueness is not None:
                nuclear &= ratio < rule.blueness * blue
            out[i, j] = float(nuclear.mean())
    return out


def nucleated(
    rgb: np.ndarray,
    boxes: Sequence[Box],
    rule: NucleusRule,
    reference: Sequence[Box] | None = None,
) -> list[bool]:
    """Which of `boxes` hold a nucleus under `rule`, against the red cells of `reference`
    (default: the boxes themselves)."""
    shares = nuclear_shares(rgb, boxes, [rule], reference)
    return [bool(s > rule.share) for s in shares[:, 0]]


def nuclear_regions(
    rgb: np.ndarray,
    covered: Sequence[Box],
    reference: Sequence[Box],
    rule: NucleusRule,
    microns_per_pixel: float,
) -> list[tuple[Box, float]]:
    """(bounding box, area in um^2) of each connected region of nuclear pixels (the rule's
    darkness and blueness against the red cells of `reference`) outside every box of `covered`;
    [] when the reference holds fewer than MIN_RED_CELLS boxes. A fine image is looked at every
    `step` pixels (about REGION_UM per step), so a large field costs no full-size float copy."""
    if len(reference) < MIN_RED_CELLS:
        return []
    light = background(rgb)
    colour = _red_cell_colour([_ellipse_pixels(rgb, light, b) for b in reference])
    if colour is None:
        return []
    green, blue = colour
    step = max(1, int(REGION_UM / microns_per_pixel))
    sample = rgb[::step, ::step]  # a view: no copy
    # Each channel value's optical density, looked up a band of rows at a time, so that even
    # the largest image accepted costs a few MB of floats, not a full-size copy.
    levels = np.clip(np.arange(256, dtype=np.float32), 1.0, None)[:, None]
    density = -np.log10(levels / light[None, :])  # (256, 3)
    height, width = sample.shape[:2]
    nuclear = np.zeros((height, width), dtype=bool)
    for top in range(0, height, ROWS_PER_BAND):
        band = sample[top : top + ROWS_PER_BAND]
        od_green, od_blue = density[band[..., 1], 1], density[band[..., 2], 2]
        mask = od_green > rule.darkness * green
        if rule.blueness is not None:
            mask &= od_blue / np.maximum(od_green, MIN_STAIN) < rule.blueness * blue
        nuclear[top : top + ROWS_PER_BAND] = mask
    for x0, y0, x1, y1 in covered:
        top, left = max(0, int(y0 // step)), max(0, int(x0 // step))
        nuclear[top : min(height, int(y1 // step) + 1), left : min(width, int(x1 // step) + 1)] = 0
    labels, _ = ndimage.label(nuclear)
    regions: list[tuple[Box, float]] = []
    pixel_area = (step * microns_per_pixel) ** 2
    for k, window in enumerate(ndimage.find_objects(labels), start=1):
        if window is None:
            continue
        rows, cols = window
        area = float((labels[window] == k).sum()) * pixel_area
        box = (
            float(cols.start * step),
            float(rows.start * step),
            float(min(cols.stop * step, rgb.shape[1])),
            float(min(rows.stop * step, rgb.shape[0])),
        )
        regions.append((box, area))
    return regions


# A region of nuclear pixels that no detection covers and at least this large is a white cell the
# network did not see: chosen by research/free_nuclei.py on validation fields (docs/detection.md).
FREE_NUCLEUS_MIN_UM2 = 24.0


# The rule the service runs: chosen by research/nucleus_probe.py on the validation fields of every
# source. With a source left out it chooses looser neighbours (docs/detection.md).
SHIPPED_RULE: NucleusRule | None = NucleusRule(darkness=2.0, blueness=0.7, share=0.1)
