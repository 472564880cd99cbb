"""Find red cells in a stained smear field: classical segmentation, no training needed.

Steps (all sizes at the training scale, where a normal red cell is about 39 px across):
1. Foreground = pixels darker than the plasma in the green channel (haemoglobin and the stain
   absorb green; plasma does not): Otsu's threshold moved 40 % of the way towards the plasma level
   (pale cells' rims), a small opening, holes up to a cell's size filled (the pale centre of a red
   cell and the ring of a target cell belong to the cell; plasma ringed by touching cells does not).
2. Touching cells are cut apart by a watershed on the distance transform, seeded from its h-maxima:
   one seed per round bulge, so two touching cells get two seeds and an elongated cell keeps one.
3. Regions smaller than a fragment of a red cell (platelets, debris) are dropped; regions much
   darker than the typical cell (white-cell nuclei, fibres, dirt) are kept aside as "other", not
   counted as red cells; regions that touch the image edge are marked `at_border`.

Why classical: on the Chula test smears it reaches the recall and precision targets
(docs/smear.md, measured by `python -m training evaluate-smears`) in ~0.3 s per 640x480 field
(bench/bench_smear.py), with nothing to train; the Chula labels are points, which suit
evaluation but not a trained segmenter.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from PIL import Image
from scipy import ndimage as ndi

from core.detect.field import Detected, FieldDetection
from core.modelcard import CHULA_MICRONS_PER_PIXEL

# The segmentation's sizes are in pixels at Chula RBC-12's scale, the classifier's training
# scale; a normal red cell's radius there is ~19.5 px.
WORKING_MICRONS_PER_PIXEL = CHULA_MICRONS_PER_PIXEL
CELL_RADIUS_PX = 19.5


class NoCellsError(ValueError):
    """The image holds nothing that looks like a stained smear (blank, saturated, no contrast)."""


@dataclass(frozen=True)
class DetectionParams:
    """Segmentation settings; sizes in pixels at the training scale."""

    smoothing_sigma: float = 1.0
    # Below this green-channel gap between background and cells there is no smear to segment.
    min_contrast: float = 12.0
    # Share of the way from Otsu's threshold to the plasma level where the cut lies (pale rims).
    threshold_shift: float = 0.4
    opening_radius: int = 2
    max_hole_area: float = 1.2 * np.pi * CELL_RADIUS_PX**2
    # Smallest red cell kept (a schistocyte is ~28 px across, ~600 px^2; a platelet ~100 px^2).
    min_area: float = 0.25 * np.pi * CELL_RADIUS_PX**2
    distance_sigma: float = 1.5
    # A seed must stand this many pixels above the saddle to its neighbour to be a cell of its own.
    seed_height: float = 1.0
    # "Other" (white cell, fibre, dirt): this fraction of a region darker than dark_level.
    dark_fraction: float = 0.3
    # dark_level = cell median - dark_depth * (background median - cell median).
    dark_depth: float = 0.8


@dataclass
class Detection:
    x: float  # centre (centroid), pixels
    y: float
    box: tuple[int, int, int, int]  # x0, y0, x1, y1 (x1, y1 exclusive)
    area: int
    at_border: bool
    kind: str = "red_cell"  # or "other"


@dataclass
class Segmentation:
    detections: list[Detection]
    labels: np.ndarray = field(repr=False)  # region id per pixel, 0 = background

    @property
    def red_cells(self) -> list[Detection]:
        return [d for d in self.detections if d.kind == "red_cell"]


def otsu_threshold(values: np.ndarray) -> float:
    """Otsu's threshold of 8-bit-range values (numpy only; 256 bins)."""
    hist, edges = np.histogram(values, bins=256, range=(0.0, 256.0))
    centres = (edges[:-1] + edges[1:]) / 2
    weight_low = np.cumsum(hist)
    weight_high = weight_low[-1] - weight_low
    sum_low = np.cumsum(hist * centres)
    mean_low = sum_low / np.maximum(weight_low, 1)
    mean_high = (sum_low[-1] - sum_low) / np.maximum(weight_high, 1)
    between = weight_low * weight_high * (mean_low - mean_high) ** 2
    return float(centres[int(np.argmax(between))])


def _disk(radius: int) -> np.ndarray:
    yy, xx = np.mgrid[-radius : radius + 1, -radius : radius + 1]
    return np.asarray(xx**2 + yy**2 <= radius**2)


def field_contrast(
    rgb: np.ndarray, params: DetectionParams | None = None
) -> tuple[np.ndarray, float, float, float]:
    """(smoothed green channel, its Otsu threshold, the background and cell levels) of a field, or
    NoCellsError when it has no contrast to hold cells (blank, saturated, uniform): the check
    every detector makes first."""
    p = params or DetectionParams()
    if rgb.ndim != 3 or rgb.shape[2] != 3:
        raise ValueError(f"expected an (H, W, 3) RGB array, got shape {rgb.shape}")
    green = ndi.gaussian_filter(rgb[..., 1].astype(np.float32), p.smoothing_sigma)
    otsu = otsu_threshold(green)
    foreground = green < otsu
    if not foreground.any() or foreground.all():
        raise NoCellsError("the image is uniform: no cells to find")
    background_level = float(np.median(green[~foreground]))
    cell_level = float(np.median(green[foreground]))
    if background_level - cell_level < p.min_contrast:
        raise NoCellsError(
            "the image has too little contrast to be a stained smear "
            f"(cells and background differ by {background_level - cell_level:.0f} grey levels)"
        )
    return green, otsu, background_level, cell_level


def segment(rgb: np.ndarray, params: DetectionParams | None = None) -> Segmentation:
    """Segment an (H, W, 3) uint8 smear image at the training scale into red cells and others.

    Raises NoCellsError when the image has no contrast to segment (blank, saturated, uniform).
    An image with contrast but no cell-sized regions gives an empty list, not an error.
    """
    from skimage.morphology import h_maxima
    from skimage.segmentation import watershed

    p = params or DetectionParams()
    green, otsu, background_level, cell_level = field_contrast(rgb, p)
    # Otsu's cut lies midway between rims and plasma; moving it towards the plasma keeps the
    # pale edges of hypochromic and target cells.
    foreground = green < otsu + p.threshold_shift * (background_level - otsu)
    foreground = ndi.binary_opening(foreground, _disk(p.opening_radius))
    # Fill holes no larger than a cell (a cell's pale centre); larger holes are plasma enclosed
    # by a ring of touching cells and stay background.
    holes, n_holes = ndi.label(ndi.binary_fill_holes(foreground) & ~foreground)
    if n_holes:
        hole_area = np.bincount(holes.ravel(), minlength=n_holes + 1)
        small = hole_area <= p.max_hole_area
        small[0] = False
        foreground |= small[holes]

    distance = ndi.gaussian_filter(ndi.distance_transform_edt(foreground), p.distance_sigma)
    seeds, _ = ndi.label(h_maxima(distance, p.seed_height))
    labels = watershed(-distance, seeds, mask=foreground)

    dark_level = cell_level - p.dark_depth * (background_level - cell_level)
    height, width = labels.shape
    detections: list[Detection] = []
    kept = np.zeros(labels.max() + 1, dtype=np.int32)
    for index, region in enumerate(ndi.find_objects(labels), start=1):
        if region is None:
            continue
        mask = labels[region] == index
        area = int(mask.sum())
        if area < p.min_area:
            continue
        rows, cols = np.nonzero(mask)
        y0, x0 = region[0].start, region[1].start
        y1, x1 = region[0].stop, region[1].stop
        dark = float((green[region][mask] < dark_level).mean())
        detections.append(
            Detection(
                x=float(cols.mean() + x0),
                y=float(rows.mean() + y0),
                box=(int(x0), int(y0), int(x1), int(y1)),
                area=area,
                at_border=x0 == 0 or y0 == 0 or x1 == width or y1 == height,
                kind="other" if dark > p.dark_fraction else "red_cell",
            )
        )
        kept[index] = len(detections)
    return Segmentation(detections, kept[labels])


class ClassicalDetector:
    """The segmentation as a core.detect.field.Detector: red cells only (dark regions are
    counted apart, never reported as white cells), found at the working scale and given back in
    the pixels of the image given, with their regions for true outlines. Without a scale the
    field is taken to be at the working scale (it cannot estimate one)."""

    name = "classical"
    stage = "segment"

    def __init__(self, params: DetectionParams | None = None) -> None:
        self.params = params

    def detect(self, rgb: np.ndarray, microns_per_pixel: float | None = None) -> FieldDetection:
        factor = 1.0 if microns_per_pixel is None else microns_per_pixel / WORKING_MICRONS_PER_PIXEL
        work = rgb
        if factor != 1.0:
            height, width = rgb.shape[:2]
            size = (max(1, round(width * factor)), max(1, round(height * factor)))
            work = np.asarray(Image.fromarray(rgb).resize(size, Image.Resampling.LANCZOS))
        segmentation = segment(work, self.params)
        red = [
            Detected(
                "red_cell",
                d.x / factor,
                d.y / factor,
                (d.box[0] / factor, d.box[1] / factor, d.box[2] / factor, d.box[3] / factor),
                1.0,
                d.at_border,
                region=region,
            )
            for region, d in enumerate(segmentation.detections, start=1)
            if d.kind == "red_cell"
        ]
        return FieldDetection(
            red,
            microns_per_pixel,
            scale_estimated=False,
            unreported=len(segmentation.detections) - len(red),
            regions=segmentation.labels,
            regions_factor=factor,
        )
