"""Single-cell images of any framing, brought to the framing the classifier was trained on.

The classifier learnt from crops of `window` px (72 for the default model) at the training
scale (0.19 um per pixel), each centred on one red cell (~39 px across) with parts of its
neighbours around it. An analyser's image of one cell is framed otherwise: 360x360 px at
0.1 um per pixel, say. Padding and resizing such an image to the network's input changes the
cell's apparent size, and size is what macrocytes and microcytes are told by. `frame_cell`
resamples the image to the training scale, finds the red cell nearest the image centre (the
classical segmentation of core.detect.classical) and cuts the training window around it, the
way the smear pipeline cuts its cells (core.smear.crop).

Only a bounded region around the image centre is resampled and searched (`SEARCH_WINDOWS`
crop windows across at the training scale), so the cost does not grow with the image or the
scale: a single-cell image holds its cell near the centre.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from PIL import Image

from core.detect.classical import DetectionParams, NoCellsError, segment
from core.smear.analysis import TRAINING_MICRONS_PER_PIXEL, scale_factor
from core.smear.crop import DEFAULT_WINDOW, crop_cell, median_colour

# Classes told apart by size alone: they cannot be judged without the image's scale, nor on a
# cell cut by the image edge.
SIZE_CLASSES = ("macrocyte", "microcyte")
# The cell is looked for within this many crop windows across, around the image centre.
SEARCH_WINDOWS = 4


@dataclass
class FramedCell:
    crop: Image.Image = field(repr=False)  # window x window RGB, at the training scale
    x: float  # the crop's centre, in the uploaded image's pixels (0 = its left edge)
    y: float
    cell_found: bool  # False: no red cell near the centre; the crop is cut around the centre
    at_border: bool  # the cell found touches the image edge (part of it is missing)
    factor: float  # training-scale pixels per uploaded pixel
    microns_per_pixel: float

    @property
    def size_judged(self) -> bool:
        """Whether size classes can be judged on this crop (a whole cell at a known scale)."""
        return not self.at_border

    def notes(self) -> list[str]:
        notes = []
        if not self.cell_found:
            notes.append(NO_CELL_NOTE)
        if self.at_border:
            notes.append(AT_BORDER_NOTE)
        return notes


NO_CELL_NOTE = (
    "No red cell was found near the image centre (a pale cell, a platelet, or no cell at all), "
    "so the crop was cut around the image centre."
)
AT_BORDER_NOTE = (
    "The cell touches the image edge: part of it is missing, so size classes (macrocyte, "
    "microcyte) cannot be judged and are marked for review."
)


def unknown_scale_note(window: int = DEFAULT_WINDOW) -> str:
    """What a prediction without a scale rests on, in plain words."""
    return (
        f"No scale given: the image is taken to be a {window}-px crop at "
        f"{TRAINING_MICRONS_PER_PIXEL} um per pixel, as the training crops were; size classes "
        "(macrocyte, microcyte) cannot be judged from it and are marked for review. Give "
        "microns_per_pixel to have the image brought to the training scale around its cell."
    )


def batch_notes(framed: Sequence[FramedCell | None]) -> list[str]:
    """The notes of many framed images, counted rather than repeated."""
    missing = sum(1 for f in framed if f is not None and not f.cell_found)
    cut = sum(1 for f in framed if f is not None and f.at_border)
    notes = []
    if missing:
        notes.append(
            f"{missing} of {len(framed)} images: no red cell was found near the image centre, "
            "so the crop was cut around the centre (framing.cell_found is false)."
        )
    if cut:
        notes.append(
            f"{cut} of {len(framed)} images: the cell touches the image edge, so size classes "
            "(macrocyte, microcyte) are marked for review (framing.at_border is true)."
        )
    return notes


def needs_review(label: str, flagged: bool, size_judged: bool) -> bool:
    """A prediction's review flag once its framing is known: size classes need review where
    size cannot be judged."""
    return flagged or (not size_judged and label in SIZE_CLASSES)


def _resample(
    image: Image.Image, cx: float, cy: float, half: float, factor: float
) -> tuple[Image.Image, float, float, float, float]:
    """The square of `half` training-scale pixels either side of (cx, cy) (uploaded pixels,
    continuous), clipped to the image, resampled to the training scale. Returns it with its
    origin in the uploaded image and its factor along x and y: the box is trimmed so that a whole
    number of pixels covers it at exactly `factor` (except for a box under one pixel)."""
    width, height = image.size
    x0, y0 = max(0.0, cx - half / factor), max(0.0, cy - half / factor)
    x1, y1 = min(float(width), cx + half / factor), min(float(height), cy + half / factor)
    w = max(1, math.floor((x1 - x0) * factor + 1e-6))
    h = max(1, math.floor((y1 - y0) * factor + 1e-6))
    x1, y1 = min(float(width), x0 + w / factor), min(float(height), y0 + h / factor)
    work = image.resize((w, h), Image.Resampling.LANCZOS, box=(x0, y0, x1, y1), reducing_gap=3.0)
    return work, x0, y0, w / (x1 - x0), h / (y1 - y0)


def frame_cell(
    image: Image.Image,
    microns_per_pixel: float,
    *,
    window: int = DEFAULT_WINDOW,
    params: DetectionParams | None = None,
) -> FramedCell:
    """Cut the `window` x `window` crop, at the training scale, centred on the red cell nearest
    the centre of `image` (an RGB image of one cell at `microns_per_pixel`).

    The image is resampled by microns_per_pixel / 0.19 (Lanczos), never more: an image smaller
    than the window at the training scale is padded with its background colour, not enlarged.
    Without a red cell near the centre (blank, pale, a platelet) the crop is cut around the
    image centre and `cell_found` is False. Raises ValueError for a scale outside 0.01-5 um per
    pixel or an image that is not RGB.
    """
    factor = scale_factor(microns_per_pixel)  # ValueError (SmearError) outside the range
    if image.mode != "RGB":
        raise ValueError(f"frame_cell expects an RGB image, got mode {image.mode!r}")
    if window < 1:
        raise ValueError(f"window must be positive, got {window}")
    cx, cy = image.width / 2, image.height / 2
    # The search region: SEARCH_WINDOWS windows across, and half a window more each way, so
    # that a cell near its edge is still seen whole.
    work, x0, y0, fx, fy = _resample(image, cx, cy, (SEARCH_WINDOWS + 1) * window / 2, factor)
    pixels = np.asarray(work)
    fill = median_colour(work)
    found = False
    at_border = False
    try:
        segmentation = segment(pixels, params)
    except NoCellsError:
        segmentation = None
    if segmentation is not None:
        background = segmentation.labels == 0
        if background.sum() >= 0.1 * background.size:  # the plasma, without the cells
            red_bg, green_bg, blue_bg = (int(v) for v in np.median(pixels[background], axis=0))
            fill = (red_bg, green_bg, blue_bg)
        # Work coordinates of the image centre; centroids are pixel indices (+0.5: continuous).
        ux, uy = (cx - x0) * fx, (cy - y0) * fy
        red = [d for d in segmentation.detections if d.kind == "red_cell"]
        if red:
            cell = min(red, key=lambda d: (d.x + 0.5 - ux) ** 2 + (d.y + 0.5 - uy) ** 2)
            found = True
            cx, cy = x0 + (cell.x + 0.5) / fx, y0 + (cell.y + 0.5) / fy
            bx0, by0, bx1, by1 = cell.box
            # The region's edge is the image's edge where the region was clipped to it.
            at_border = (
                (bx0 == 0 and x0 <= 0)
                or (by0 == 0 and y0 <= 0)
                or (bx1 == work.width and x0 + work.width / fx >= image.width - 1 / fx)
                or (by1 == work.height and y0 + work.height / fy >= image.height - 1 / fy)
            )
    # The window around the centre chosen, resampled afresh (with a margin for the filter), so
    # that it holds the image's own pixels wherever the image has them.
    near, nx0, ny0, nfx, nfy = _resample(image, cx, cy, window / 2 + 2, factor)
    # crop_cell's window spans [x - window // 2, x - window // 2 + window): centred on x for an
    # even window, on x + 0.5 for an odd one.
    shift = (window % 2) / 2
    crop, _ = crop_cell(
        near,
        round((cx - nx0) * nfx - shift),
        round((cy - ny0) * nfy - shift),
        window,
        fill,
    )
    return FramedCell(
        crop=crop,
        x=cx,
        y=cy,
        cell_found=found,
        at_border=at_border,
        factor=factor,
        microns_per_pixel=microns_per_pixel,
    )
