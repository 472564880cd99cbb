"""Whole-smear analysis: find every red cell, crop it as training did, classify, count, grade.

Used by `python -m app analyze-smear` and `POST /analyze/smear`. Cells cut by the image edge
are found, classified and shown, but not counted: part of the cell is missing, and size classes
(macrocyte, microcyte) cannot be judged on half a cell.
"""

from __future__ import annotations

import io
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
from PIL import Image

from core.classify.calibration import field_score
from core.detect.classical import DetectionParams, NoCellsError, field_contrast, segment
from core.smear.counting import count_labels, grades, percentages
from core.smear.crop import DEFAULT_WINDOW, crop_cell, median_colour
from core.smear.grading import GRADING_SOURCE, scales_for

# The training images' scale: Chula RBC-12's own scale bar reads 20 um over 105 px (images 100
# and 200), so 0.19 um per pixel; a normal red cell (7.5 um) is then ~39 px, as measured.
TRAINING_MICRONS_PER_PIXEL = 0.19
# Outline colour per class (normal green; the page's legend uses the same colours). Classes of
# other models take the spare colours in order.
CLASS_COLOURS = {
    "normal": "#4daf4a",
    "macrocyte": "#377eb8",
    "microcyte": "#17becf",
    "spherocyte": "#e41a1c",
    "target_cell": "#ff7f00",
    "stomatocyte": "#984ea3",
    "ovalocyte": "#f781bf",
    "teardrop": "#a65628",
    "burr_cell": "#bcbd22",
    "schistocyte": "#ffff33",
    "uncategorised": "#999999",
    "hypochromia": "#66c2a5",
    "elliptocyte": "#fc8d62",
}
SPARE_COLOURS = ("#1f2f8f", "#8dd3c7", "#fb8072", "#80b1d3", "#b3de69", "#bc80bd")
BORDER_COLOUR = "#ffffff"
# The scales a field may be given at (um per pixel): from a 1000x oil objective on a fine camera
# to a low-power overview.
MIN_MICRONS_PER_PIXEL = 0.01
MAX_MICRONS_PER_PIXEL = 5.0


class SmearError(ValueError):
    """The image cannot be analysed as a smear; the message says why in plain words."""


class SmearTooLarge(SmearError):
    """More pixels than can be analysed once the image is brought to the training scale."""


class CellClassifier(Protocol):
    """What the analysis needs from a predictor (core.classify.predictor.Predictor is one)."""

    classes: list[str]
    review_threshold: float

    def predict(
        self,
        images: Sequence[Image.Image],
        heatmap: bool = False,
        check: Callable[[], None] | None = None,
    ) -> list[Any]: ...


@dataclass
class SmearCell:
    id: int
    x: float  # centre in the uploaded image's pixels
    y: float
    box: tuple[int, int, int, int]  # x0, y0, x1, y1 in the uploaded image's pixels
    at_border: bool
    counted: bool
    label: str
    confidence: float
    probabilities: dict[str, float]
    needs_review: bool
    familiarity: float | None = None  # distance to training cells (core/classify/calibration)
    crop: Image.Image | None = field(default=None, repr=False)  # as the classifier saw it


@dataclass
class OtherCell:
    """A white cell or platelet: found, shown and counted apart, never classified as a red cell."""

    id: int
    kind: str  # "white_cell" or "platelet"
    x: float  # centre in the uploaded image's pixels
    y: float
    box: tuple[int, int, int, int]
    at_border: bool
    confidence: float
    crop: Image.Image | None = field(default=None, repr=False)  # for the gallery


@dataclass
class SmearResult:
    width: int
    height: int
    microns_per_pixel: float | None
    cells: list[SmearCell]
    other_objects: int  # dark regions (white cells, fibres, dirt) not counted as red cells
    classes: list[str]
    class_colours: dict[str, str]
    overlay_png: bytes = field(repr=False)
    timings_ms: dict[str, float] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    white_cells: list[OtherCell] = field(default_factory=list)
    platelets: list[OtherCell] = field(default_factory=list)
    # With the learned detector and no scale given: the scale estimated from the field's cells.
    scale_estimated: bool = False
    detector: str = "classical"
    # The field's familiarity: the median of its counted cells' distances to the training cells,
    # the model's threshold, and the verdict (None: the model has no calibration statistics).
    familiarity: float | None = None
    familiarity_threshold: float | None = None
    # The field's colours against the training fields' (a second signal; None without one).
    colour_familiarity: float | None = None
    colour_threshold: float | None = None
    unfamiliar: bool = False
    unfamiliar_because: list[str] = field(default_factory=list)
    # With the learned detector: the field's sharpness (core/detect/focus.py) and the
    # detector's threshold under which a field is out of focus (red cells missed).
    sharpness: float | None = None
    focus_threshold: float | None = None

    @property
    def out_of_focus(self) -> bool:
        if self.sharpness is None or self.focus_threshold is None:
            return False
        return self.sharpness < self.focus_threshold

    @property
    def counted(self) -> list[SmearCell]:
        return [c for c in self.cells if c.counted]

    def counts(self) -> dict[str, int]:
        return count_labels((cell.label for cell in self.counted), self.classes)

    def percentages(self) -> dict[str, float]:
        return percentages(self.counts())

    def grades(self) -> dict[str, str]:
        return grades(self.percentages())

    def summary(self) -> dict[str, Any]:
        """Everything but the cells and the overlay: counts, percentages, grades, scale, notes."""
        return {
            "width": self.width,
            "height": self.height,
            "scale": {
                "microns_per_pixel": self.microns_per_pixel,
                "known": self.microns_per_pixel is not None and not self.scale_estimated,
                "estimated": self.scale_estimated,
                "training_microns_per_pixel": TRAINING_MICRONS_PER_PIXEL,
            },
            "detector": self.detector,
            "white_cells_found": len(self.white_cells),
            "platelets_found": len(self.platelets),
            "cells_found": len(self.cells),
            "cells_counted": len(self.counted),
            "cells_at_border": sum(c.at_border for c in self.cells),
            "other_objects": self.other_objects,
            "needs_review": sum(c.needs_review for c in self.counted),
            "counts": self.counts(),
            "percentages": self.percentages(),
            "grades": self.grades(),
            "grading": {"source": GRADING_SOURCE, "scales": scales_for(self.classes)},
            "class_colours": self.class_colours,
            "timings_ms": self.timings_ms,
            "familiarity": {
                "score": self.familiarity,
                "threshold": self.familiarity_threshold,
                "colour_score": self.colour_familiarity,
                "colour_threshold": self.colour_threshold,
                "unfamiliar": self.unfamiliar,
                "because": self.unfamiliar_because,
            },
            "focus": {
                "sharpness": self.sharpness,
                "threshold": self.focus_threshold,
                "out_of_focus": self.out_of_focus,
            },
            "notes": self.notes,
        }


UNFAMILIAR_FIELD_NOTE = (
    "unlike the images the model learnt from (another stain, camera or preparation): its "
    "classes may be wrong here; review every cell"
)


OUT_OF_FOCUS_NOTE = (
    "this field looks out of focus: on a blurred field red cells are missed and their shapes "
    "misread; focus and take it again"
)


UNFAMILIAR_CELLS = "cells"  # the cells' features are far from the training cells'
UNFAMILIAR_COLOURS = "colours"  # the field's stain and light are unlike every training field's
NORMAL = "normal"


def judge_familiarity(
    classifier: CellClassifier, result: SmearResult, image: Image.Image | None = None
) -> SmearResult:
    """The field's familiarity, when the classifier has calibration statistics: its counted
    cells' median distance to the training cells and, given the field `image`, its colours'
    distance to the training fields'. Either beyond its threshold makes the field unfamiliar: a
    plain-words note, and its doubtful cells get `needs_review`: every cell called abnormal (on
    such a field an abnormal call is a guess until a person confirms it) and every cell as far
    from the training cells as an unfamiliar field's median."""
    calibration = getattr(classifier, "calibration", None)
    if calibration is None:
        return result
    distances = [c.familiarity for c in result.counted if c.familiarity is not None]
    if distances:
        result.familiarity = field_score(distances)
        result.familiarity_threshold = calibration.field_threshold
        if calibration.is_unfamiliar_field(result.familiarity):
            result.unfamiliar_because.append(UNFAMILIAR_CELLS)
    if image is not None and result.counted and calibration.colours is not None:
        result.colour_familiarity = calibration.field_colour_score(image)
        result.colour_threshold = calibration.colour_threshold
        if calibration.is_unfamiliar_colour(result.colour_familiarity):
            result.unfamiliar_because.append(UNFAMILIAR_COLOURS)
    result.unfamiliar = bool(result.unfamiliar_because)
    if result.unfamiliar:
        result.notes.append(UNFAMILIAR_FIELD_NOTE)
        for cell in result.cells:
            far = cell.familiarity is not None and cell.familiarity > calibration.field_threshold
            if far or cell.label != NORMAL:
                cell.needs_review = True
    return result


def scale_factor(microns_per_pixel: float | None) -> float:
    """Working (training-scale) pixels per uploaded pixel along each side."""
    if microns_per_pixel is None:
        return 1.0
    if not MIN_MICRONS_PER_PIXEL <= microns_per_pixel <= MAX_MICRONS_PER_PIXEL:
        raise SmearError(
            f"microns_per_pixel {microns_per_pixel} is outside "
            f"{MIN_MICRONS_PER_PIXEL}-{MAX_MICRONS_PER_PIXEL} um per pixel"
        )
    return microns_per_pixel / TRAINING_MICRONS_PER_PIXEL


def check_working_size(
    size: tuple[int, int], microns_per_pixel: float | None, max_pixels: int
) -> tuple[int, int]:
    """The size an image of `size` is analysed at, or SmearTooLarge with how to split it.
    Needs only the size, so a service can refuse a field from its header, before decoding."""
    factor = scale_factor(microns_per_pixel)
    width, height = size
    work = (max(1, round(width * factor)), max(1, round(height * factor)))
    if work[0] * work[1] > max_pixels:
        raise SmearTooLarge(
            f"the image is {work[0]}x{work[1]} pixels at the training scale; at most "
            f"{max_pixels:,} pixels are analysed per field: "
            f"{split_hint(size, work[0] * work[1], max_pixels)}"
        )
    return work


def check_cell_budget(red_cells: int, max_cells: int | None) -> None:
    """SmearTooLarge when a field holds more red cells than one request classifies."""
    if max_cells is not None and red_cells > max_cells:
        raise SmearTooLarge(
            f"the image holds {red_cells:,} red cells; at most {max_cells:,} are classified per "
            "request: send smaller fields (a field of a few hundred cells is what grading needs)"
        )


def split_hint(size: tuple[int, int], work_pixels: int, max_pixels: int) -> str:
    """How to cut an uploaded image of `size` into tiles whose working pixels each fit."""
    width, height = size
    tiles = math.ceil(work_pixels / max_pixels)
    across = math.ceil(math.sqrt(tiles * width / height))
    down = math.ceil(tiles / across)
    return (
        f"split it into {across} x {down} tiles of at most {math.ceil(width / across)}x"
        f"{math.ceil(height / down)} pixels and send each as a field of its own"
    )


def class_colours(classes: Sequence[str]) -> dict[str, str]:
    spare = iter(SPARE_COLOURS * (1 + len(classes) // len(SPARE_COLOURS)))
    return {c: CLASS_COLOURS.get(c) or next(spare) for c in classes}


def _hex_rgb(colour: str) -> tuple[int, int, int]:
    return int(colour[1:3], 16), int(colour[3:5], 16), int(colour[5:7], 16)


def draw_overlay(
    image: Image.Image, labels: np.ndarray, colours: dict[int, str], factor: float
) -> bytes:
    """The image with each cell's outline in its class colour (PNG). `labels` is the working
    image's region map; `colours` maps region ids to colours; `factor` = working / uploaded size."""
    from scipy import ndimage as ndi

    edge = labels != ndi.grey_erosion(labels, size=3)
    edge &= labels > 0
    lut = np.zeros((int(labels.max()) + 1, 3), dtype=np.uint8)
    drawn = np.zeros(int(labels.max()) + 1, dtype=bool)
    for region, colour in colours.items():
        lut[region] = _hex_rgb(colour)
        drawn[region] = True
    edge &= drawn[labels]
    mask = Image.fromarray((edge * 255).astype(np.uint8))
    paint = Image.fromarray(lut[labels])
    if factor != 1.0:
        mask = mask.resize(image.size, Image.Resampling.NEAREST)
        paint = paint.resize(image.size, Image.Resampling.NEAREST)
    out = image.copy()
    out.paste(paint, (0, 0), mask)
    buffer = io.BytesIO()
    out.save(buffer, format="PNG", compress_level=1)  # fast: the overlay is made per request
    return buffer.getvalue()


def analyze_smear(
    image: Image.Image,
    classifier: CellClassifier,
    microns_per_pixel: float | None = None,
    *,
    window: int | None = None,
    max_working_pixels: int = 4096 * 4096,
    max_cells: int | None = None,
    keep_crops: bool = False,
    params: DetectionParams | None = None,
    check: Callable[[], None] | None = None,
    detector: Any | None = None,
) -> SmearResult:
    """Find, crop, classify, count and grade the red cells of one RGB smear image.

    With `microns_per_pixel`, the image is first rescaled to the training scale, so that cells
    have the size the classifier learnt and the size classes keep their meaning. Without it the
    image is taken to be at the training scale, and a note in the result says so.
    `window` is the crop side at the training scale; by default the classifier's model card's
    (`crop_window_px`), which is what its training crops were cut with.
    With a `detector` (core.detect.learned.CellDetector) red cells, white cells and platelets
    are found by it, and without `microns_per_pixel` the scale is estimated from the field's own red
    cells; without one, the classical segmentation of core.detect.classical finds the red cells.
    Raises SmearError for images that cannot be a smear (no contrast), SmearTooLarge for more
    working pixels or red cells than allowed. `check` runs between stages and chunks of cells
    and may raise to stop the work (a client that went away).
    """
    started = time.perf_counter()
    if image.mode != "RGB":
        raise ValueError(f"analyze_smear expects an RGB image, got mode {image.mode!r}")
    if window is None:
        card = getattr(classifier, "card", None)
        window = getattr(card, "crop_window_px", None) or DEFAULT_WINDOW
    if detector is not None:
        return _analyze_detected(
            image, classifier, detector, microns_per_pixel, window,
            max_working_pixels, max_cells, keep_crops, check, started,
        )  # fmt: skip
    notes: list[str] = []
    if microns_per_pixel is None:
        notes.append(
            "scale unknown: the image was taken to be at the training scale "
            f"({TRAINING_MICRONS_PER_PIXEL} um per pixel, 100x objective on the Chula camera); "
            "give microns_per_pixel for other microscopes, or size classes (macrocyte, "
            "microcyte) may be wrong"
        )
    width, height = image.size
    work_size = check_working_size(image.size, microns_per_pixel, max_working_pixels)
    factor = scale_factor(microns_per_pixel)
    work = image if factor == 1.0 else image.resize(work_size, Image.Resampling.LANCZOS)
    try:
        segmentation = segment(np.asarray(work), params)
    except NoCellsError as exc:
        raise SmearError(str(exc)) from exc
    segmented = time.perf_counter()
    if check is not None:
        check()

    red = [(i + 1, d) for i, d in enumerate(segmentation.detections) if d.kind == "red_cell"]
    check_cell_budget(len(red), max_cells)
    fill = median_colour(work)
    crops = [crop_cell(work, round(d.x), round(d.y), window, fill)[0] for _, d in red]
    predictions = classifier.predict(crops, check=check)
    classified = time.perf_counter()

    colours = class_colours(classifier.classes)
    cells: list[SmearCell] = []
    region_colours: dict[int, str] = {}
    for (region, d), p, crop in zip(red, predictions, crops, strict=True):
        x0, y0, x1, y1 = d.box
        cells.append(
            SmearCell(
                id=len(cells) + 1,
                x=d.x / factor,
                y=d.y / factor,
                box=(
                    int(x0 / factor),
                    int(y0 / factor),
                    min(width, int(np.ceil(x1 / factor))),
                    min(height, int(np.ceil(y1 / factor))),
                ),
                at_border=d.at_border,
                counted=not d.at_border,
                label=p.label,
                confidence=p.confidence,
                probabilities=p.probabilities,
                needs_review=p.needs_review,
                familiarity=getattr(p, "familiarity", None),
                crop=crop if keep_crops else None,
            )
        )
        region_colours[region] = BORDER_COLOUR if d.at_border else colours[p.label]
    if not cells:
        notes.append("no red cells were found in this image")
    overlay = draw_overlay(image, segmentation.labels, region_colours, factor)
    done = time.perf_counter()
    return judge_familiarity(
        classifier,
        SmearResult(
            width=width,
            height=height,
            microns_per_pixel=microns_per_pixel,
            cells=cells,
            other_objects=len(segmentation.detections) - len(red),
            classes=list(classifier.classes),
            class_colours=colours,
            overlay_png=overlay,
            timings_ms={
                "segment": 1000 * (segmented - started),
                "classify": 1000 * (classified - segmented),
                "overlay": 1000 * (done - classified),
                "total": 1000 * (done - started),
            },
            notes=notes,
        ),
        image,
    )


# Overlay styles of what is not a red cell.
WHITE_CELL_COLOUR = "#1f4fff"
PLATELET_COLOUR = "#7b2cbf"


def object_crop(
    image: Image.Image, box: tuple[float, float, float, float], side: int = 72
) -> Image.Image:
    """A square view of a white cell or platelet with some field around it, `side` px, for the
    gallery (not classified: red cells keep the classifier's own crops)."""
    x0, y0, x1, y1 = box
    half = max(x1 - x0, y1 - y0) * 0.7 + 2
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    window = (round(cx - half), round(cy - half), round(cx + half), round(cy + half))
    return image.crop(window).resize((side, side), Image.Resampling.BILINEAR)


def draw_boxes_overlay(
    image: Image.Image,
    cells: Sequence[SmearCell],
    colours: dict[str, str],
    others: Sequence[OtherCell],
) -> bytes:
    """The image with each red cell's outline (the ellipse in its box) in its class colour, white
    cells as thick boxes, platelets as small circles (PNG)."""
    from PIL import ImageDraw

    out = image.copy()
    draw = ImageDraw.Draw(out)
    width = max(1, round(max(image.size) / 500))
    for cell in cells:
        colour = BORDER_COLOUR if cell.at_border else colours[cell.label]
        draw.ellipse(cell.box, outline=colour, width=width)
    for obj in others:
        if obj.kind == "white_cell":
            draw.rectangle(obj.box, outline=WHITE_CELL_COLOUR, width=2 * width)
        else:
            r = max(3.0, (obj.box[2] - obj.box[0]) / 2 + 2)
            draw.ellipse(
                (obj.x - r, obj.y - r, obj.x + r, obj.y + r), outline=PLATELET_COLOUR, width=width
            )
    buffer = io.BytesIO()
    out.save(buffer, format="PNG", compress_level=1)
    return buffer.getvalue()


def _analyze_detected(
    image: Image.Image,
    classifier: CellClassifier,
    detector: Any,
    microns_per_pixel: float | None,
    window: int,
    max_working_pixels: int,
    max_cells: int | None,
    keep_crops: bool,
    check: Callable[[], None] | None,
    started: float,
) -> SmearResult:
    """analyze_smear with the learned detector (see there)."""
    notes: list[str] = []
    if microns_per_pixel is not None:
        scale_factor(microns_per_pixel)  # the range check
    rgb = np.asarray(image)
    try:
        field_contrast(rgb)  # blank, saturated or uniform: a clear error, as with the classical
    except NoCellsError as exc:
        raise SmearError(str(exc)) from exc
    found = detector.detect(rgb, microns_per_pixel)
    used = float(found.microns_per_pixel)
    if found.scale_estimated:
        notes.append(
            f"scale estimated from the field's own red cells: {used:.3f} um per pixel (a normal "
            "red cell taken as 7.5 um across); size classes (macrocyte, microcyte) are then "
            "relative to this field's cells: give microns_per_pixel for absolute sizes"
        )
    if getattr(found, "out_of_focus", False):
        notes.append(OUT_OF_FOCUS_NOTE)
    if getattr(found, "nucleated", 0):
        notes.append(
            f"{found.nucleated} object(s) the detector took for red cells hold a nucleus "
            "(darker and bluer than this field's red cells) and are reported as white cells"
        )
    if getattr(found, "free_nuclei", 0):
        notes.append(
            f"{found.free_nuclei} white cell(s) found by the nucleus alone, where the detector "
            "found nothing (darker and bluer than this field's red cells; score 0)"
        )
    detected = time.perf_counter()
    if check is not None:
        check()
    # An estimated scale may make the working image larger than the header check allowed.
    work_size = check_working_size(image.size, used, max_working_pixels)
    factor = scale_factor(used)
    width, height = image.size
    red = found.of_kind("red_cell")
    check_cell_budget(len(red), max_cells)
    work = image if factor == 1.0 else image.resize(work_size, Image.Resampling.LANCZOS)
    fill = median_colour(work)
    crops = [
        crop_cell(work, round(d.x * factor), round(d.y * factor), window, fill)[0] for d in red
    ]
    predictions = classifier.predict(crops, check=check)
    classified = time.perf_counter()

    def int_box(box: tuple[float, float, float, float]) -> tuple[int, int, int, int]:
        x0, y0, x1, y1 = box
        return int(x0), int(y0), min(width, int(np.ceil(x1))), min(height, int(np.ceil(y1)))

    cells = [
        SmearCell(
            id=k + 1,
            x=d.x,
            y=d.y,
            box=int_box(d.box),
            at_border=d.at_border,
            counted=not d.at_border,
            label=p.label,
            confidence=p.confidence,
            probabilities=p.probabilities,
            needs_review=p.needs_review,
            familiarity=getattr(p, "familiarity", None),
            crop=crop if keep_crops else None,
        )
        for k, (d, p, crop) in enumerate(zip(red, predictions, crops, strict=True))
    ]
    others = [
        OtherCell(
            id=k + 1,
            kind=d.kind,
            x=d.x,
            y=d.y,
            box=int_box(d.box),
            at_border=d.at_border,
            confidence=d.score,
            crop=object_crop(image, d.box) if keep_crops else None,
        )
        for k, d in enumerate(o for o in found.objects if o.kind != "red_cell")
    ]
    if not cells:
        notes.append("no red cells were found in this image")
    colours = class_colours(classifier.classes)
    overlay = draw_boxes_overlay(image, cells, colours, others)
    done = time.perf_counter()
    card = getattr(detector, "card", None)
    return judge_familiarity(
        classifier,
        SmearResult(
            width=width,
            height=height,
            microns_per_pixel=used,
            cells=cells,
            other_objects=len(others),
            classes=list(classifier.classes),
            class_colours=colours,
            overlay_png=overlay,
            timings_ms={
                "detect": 1000 * (detected - started),
                "classify": 1000 * (classified - detected),
                "overlay": 1000 * (done - classified),
                "total": 1000 * (done - started),
            },
            notes=notes,
            white_cells=[o for o in others if o.kind == "white_cell"],
            platelets=[o for o in others if o.kind == "platelet"],
            scale_estimated=bool(found.scale_estimated),
            detector=f"learned:{getattr(card, 'name', 'detector')}",
            sharpness=getattr(found, "sharpness", None),
            focus_threshold=getattr(detector, "FOCUS_THRESHOLD", None),
        ),
        image,
    )
