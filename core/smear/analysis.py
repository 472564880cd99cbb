"""Whole-smear analysis: find every red cell, crop it as training did, classify, count, grade.
One body for every detector (core.detect.field.Detector); the result is core.smear.result's.

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
from core.detect.classical import ClassicalDetector, DetectionParams, NoCellsError, field_contrast
from core.detect.field import Detected, Detector, FieldDetection
from core.modelcard import CHULA_MICRONS_PER_PIXEL
from core.smear.crop import DEFAULT_WINDOW, crop_cell, median_colour
from core.smear.result import (
    FieldCell,
    FieldObject,
    FieldResult,
    SmearFamiliarity,
    SmearFocus,
    SmearScale,
)

# The scale fields are brought to before their cells are cut: the classifier's training scale
# (its card's microns_per_pixel; every classifier so far, Chula's: core.modelcard).
TRAINING_MICRONS_PER_PIXEL = CHULA_MICRONS_PER_PIXEL
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
class AnalysedField:
    """A field analysed: its typed result (what leaves this process) and what only this process
    uses: the overlay, and with `keep_crops` each red cell's crop as the classifier saw it and a
    view of each white cell and platelet, by id."""

    result: FieldResult
    overlay_png: bytes = field(repr=False)
    crops: dict[int, Image.Image] = field(default_factory=dict, repr=False)
    object_crops: dict[int, Image.Image] = field(default_factory=dict, repr=False)


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
    classifier: CellClassifier, cells: Sequence[FieldCell], image: Image.Image | None = None
) -> SmearFamiliarity:
    """The field's familiarity, when the classifier has calibration statistics: its counted
    cells' median distance to the training cells and, given the field `image`, its colours'
    distance to the training fields'. Either beyond its threshold makes the field unfamiliar,
    and its doubtful cells get `needs_review`: every cell called abnormal (on such a field an
    abnormal call is a guess until a person confirms it) and every cell as far from the
    training cells as an unfamiliar field's median."""
    judged = SmearFamiliarity.unknown()
    calibration = getattr(classifier, "calibration", None)
    if calibration is None:
        return judged
    counted = [c for c in cells if c.counted]
    distances = [c.familiarity for c in counted if c.familiarity is not None]
    if distances:
        judged.score = field_score(distances)
        judged.threshold = calibration.field_threshold
        if calibration.is_unfamiliar_field(judged.score):
            judged.because.append(UNFAMILIAR_CELLS)
    if image is not None and counted and calibration.colours is not None:
        judged.colour_score = calibration.field_colour_score(image)
        judged.colour_threshold = calibration.colour_threshold
        if calibration.is_unfamiliar_colour(judged.colour_score):
            judged.because.append(UNFAMILIAR_COLOURS)
    judged.unfamiliar = bool(judged.because)
    if judged.unfamiliar:
        for cell in cells:
            far = cell.familiarity is not None and cell.familiarity > calibration.field_threshold
            if far or cell.label != NORMAL:
                cell.needs_review = True
    return judged


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
    cells: Sequence[FieldCell],
    colours: dict[str, str],
    others: Sequence[FieldObject],
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


def detection_notes(found: FieldDetection) -> list[str]:
    """What a reader must know of how the field's cells were found, in plain words."""
    notes: list[str] = []
    if found.scale_estimated and found.microns_per_pixel is not None:
        notes.append(
            f"scale estimated from the field's own red cells: {found.microns_per_pixel:.3f} um "
            "per pixel (a normal red cell taken as 7.5 um across); size classes (macrocyte, "
            "microcyte) are then relative to this field's cells: give microns_per_pixel for "
            "absolute sizes"
        )
    elif found.microns_per_pixel is None:
        notes.append(
            "scale unknown: the image was taken to be at the training scale "
            f"({TRAINING_MICRONS_PER_PIXEL} um per pixel, 100x objective on the Chula camera); "
            "give microns_per_pixel for other microscopes, or size classes (macrocyte, "
            "microcyte) may be wrong"
        )
    if found.out_of_focus:
        notes.append(OUT_OF_FOCUS_NOTE)
    if found.nucleated:
        notes.append(
            f"{found.nucleated} object(s) the detector took for red cells hold a nucleus "
            "(darker and bluer than this field's red cells) and are reported as white cells"
        )
    if found.free_nuclei:
        notes.append(
            f"{found.free_nuclei} white cell(s) found by the nucleus alone, where the detector "
            "found nothing (darker and bluer than this field's red cells; score 0)"
        )
    return notes


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
    detector: Detector | None = None,
) -> AnalysedField:
    """Find, crop, classify, count and grade the red cells of one RGB smear image.

    The `detector` (core.detect.field.Detector: the learned CellDetector, or by default the
    classical segmentation with `params`) finds the cells; without `microns_per_pixel` the
    learned one estimates the scale from the field's own red cells, and the classical one takes
    the image to be at the training scale (a note says so). Each red cell is cut from the image
    brought to the training scale, so that cells have the size the classifier learnt and the
    size classes keep their meaning; `window` is the crop side there, by default the
    classifier's model card's (`crop_window_px`), which its training crops were cut with.
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
    if detector is None:
        detector = ClassicalDetector(params)
    check_working_size(image.size, microns_per_pixel, max_working_pixels)
    found = _detect(image, detector, microns_per_pixel)
    detected = time.perf_counter()
    if check is not None:
        check()
    notes = detection_notes(found)
    red = found.of_kind("red_cell")
    check_cell_budget(len(red), max_cells)
    cells, crops = _classify(image, red, found, classifier, window, max_working_pixels, check)
    classified = time.perf_counter()
    others = [o for o in found.objects if o.kind != "red_cell"]
    objects = _field_objects(others, image.size)
    if not cells:
        notes.append("no red cells were found in this image")
    familiarity = judge_familiarity(classifier, cells, image)
    if familiarity.unfamiliar:
        notes.append(UNFAMILIAR_FIELD_NOTE)
    colours = class_colours(classifier.classes)
    overlay = draw_field_overlay(image, found, red, cells, objects, colours)
    done = time.perf_counter()
    result = FieldResult.tally(
        cells,
        classifier.classes,
        white_cells=[o for o in objects if o.kind == "white_cell"],
        platelets=[o for o in objects if o.kind == "platelet"],
        width=image.width,
        height=image.height,
        scale=_scale(found, given=microns_per_pixel is not None),
        focus=_focus(found),
        familiarity=familiarity,
        other_objects=len(objects) + found.unreported,
        detector=detector.name,
        class_colours=colours,
        timings_ms=_timings(
            {detector.stage: detected, "classify": classified, "overlay": done}, started
        ),
        notes=notes,
    )
    if not keep_crops:
        return AnalysedField(result, overlay)
    views = [object_crop(image, d.box) for d in others]
    return AnalysedField(
        result, overlay, dict(zip([c.id for c in cells], crops, strict=True)),
        dict(zip([o.id for o in objects], views, strict=True)),
    )  # fmt: skip


def _scale(found: FieldDetection, given: bool) -> SmearScale:
    return SmearScale(
        microns_per_pixel=found.microns_per_pixel,
        known=given,
        estimated=found.scale_estimated,
        training_microns_per_pixel=TRAINING_MICRONS_PER_PIXEL,
    )


def _focus(found: FieldDetection) -> SmearFocus:
    return SmearFocus(
        sharpness=found.sharpness, threshold=found.focus_threshold, out_of_focus=found.out_of_focus
    )


def _timings(ends: dict[str, float], started: float) -> dict[str, float]:
    """Each stage's milliseconds from the times it ended (in order), and the total."""
    timings, last = {}, started
    for stage, end in ends.items():
        timings[stage], last = 1000 * (end - last), end
    return {**timings, "total": 1000 * (last - started)}


def _detect(
    image: Image.Image, detector: Detector, microns_per_pixel: float | None
) -> FieldDetection:
    rgb = np.asarray(image)
    try:
        field_contrast(rgb)  # blank, saturated or uniform: one clear error for every detector
        return detector.detect(rgb, microns_per_pixel)
    except NoCellsError as exc:
        raise SmearError(str(exc)) from exc


def _classify(
    image: Image.Image,
    red: Sequence[Detected],
    found: FieldDetection,
    classifier: CellClassifier,
    window: int,
    max_working_pixels: int,
    check: Callable[[], None] | None,
) -> tuple[list[FieldCell], list[Image.Image]]:
    """The red cells cut from the image brought to the training scale, as training cut them,
    and classified: the cells, and the crops the classifier saw."""
    # An estimated scale may make the working image larger than the first check allowed.
    work_size = check_working_size(image.size, found.microns_per_pixel, max_working_pixels)
    factor = scale_factor(found.microns_per_pixel)
    work = image if factor == 1.0 else image.resize(work_size, Image.Resampling.LANCZOS)
    fill = median_colour(work)
    crops = [
        crop_cell(work, round(d.x * factor), round(d.y * factor), window, fill)[0] for d in red
    ]
    predictions = classifier.predict(crops, check=check)
    cells = [
        FieldCell(
            id=k + 1,
            x=d.x,
            y=d.y,
            box=_pixel_box(d.box, image.size),
            at_border=d.at_border,
            counted=not d.at_border,
            label=p.label,
            confidence=p.confidence,
            probabilities=p.probabilities,
            needs_review=p.needs_review,
            familiarity=getattr(p, "familiarity", None),
        )
        for k, (d, p) in enumerate(zip(red, predictions, strict=True))
    ]
    return cells, crops


def _field_objects(others: Sequence[Detected], size: tuple[int, int]) -> list[FieldObject]:
    """White cells and platelets, numbered apart from the red cells."""
    return [
        FieldObject(
            id=k + 1,
            kind=d.kind,
            x=d.x,
            y=d.y,
            box=_pixel_box(d.box, size),
            at_border=d.at_border,
            confidence=d.score,
        )
        for k, d in enumerate(others)
    ]


def _pixel_box(
    box: tuple[float, float, float, float], size: tuple[int, int]
) -> tuple[int, int, int, int]:
    """A box in whole pixels of the uploaded image (x1, y1 exclusive, within the image)."""
    x0, y0, x1, y1 = box
    width, height = size
    return int(x0), int(y0), min(width, math.ceil(x1)), min(height, math.ceil(y1))


def draw_field_overlay(
    image: Image.Image,
    found: FieldDetection,
    red: Sequence[Detected],
    cells: Sequence[FieldCell],
    objects: Sequence[FieldObject],
    colours: dict[str, str],
) -> bytes:
    """The field with its cells outlined: each segmented region's own outline when the detector
    segments, else each box's ellipse (draw_boxes_overlay)."""
    if found.regions is None:
        return draw_boxes_overlay(image, cells, colours, objects)
    region_colours = {
        d.region: BORDER_COLOUR if c.at_border else colours[c.label]
        for d, c in zip(red, cells, strict=True)
    }
    return draw_overlay(image, found.regions, region_colours, found.regions_factor)
