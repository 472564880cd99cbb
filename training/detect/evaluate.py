"""How well a detector finds red cells, white cells and platelets on labelled fields, per source
(`evaluate-detector`), and, on a trained detector's validation fields, the per-kind thresholds
and the size calibration chosen with the same matching (`choose_thresholds`, `size_calibration`).

For each field the detector gives objects (kind, centre, box, at_border) in the image's pixels;
they are matched one to one to the labels, closest centres first, a pair counting when the
detected centre lies inside the label's box (or, for a point label, within POINT_RADIUS_UM of
it). Figures per source, pooled over its fields:
- red-cell recall (interior): labelled red cells clear of the border that a detected red cell
  matches;
- one-to-one precision: detected red cells clear of the border (the counted ones) that match a
  labelled red cell; on fields whose every cell is labelled (`Field.complete`) only;
- white cells counted as red cells: labelled white cells holding the centre of a counted red
  cell that matches no labelled red cell, as a share of the labelled white cells; "holding"
  read two ways: inside the white cell's box (`white_counted_as_red`, the first figure) and
  inside the ellipse inscribed in that box (`white_counted_as_red_within`). A white cell is
  round, so the box's corners are not the white cell: looked at one by one
  (`research/white_as_red.py --sheet`), most unmatched red detections in those corners were red
  cells touching or under the white cell that the labels leave out;
- white-cell recall: labelled white cells that a detected white cell matches (the network's own
  white cells and the nucleus check's);
- white cells missed and counted as red: labelled white cells that no detected white cell
  matches and whose box holds the centre of such an unmatched counted red cell. This is the
  white cell taken for a red one; the box figure also charges a red detection beside a white
  cell that was found and set apart (which precision counts against the detector either way);
- platelet recall: labelled platelets that a detected platelet matches;
- cells found / cells there: red cells found over red cells labelled, border cells included on
  both sides (whether a cell touches the edge depends on its box, which a detector may draw a
  little smaller than the label's), the mean over the fully labelled fields: a count's error,
  whatever the matching.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image
from tqdm import tqdm

from core.detect.learned import (
    KINDS,
    CellDetector,
)
from training.datasets.fields import Field, FieldObject
from training.detect.data import Sample

# A point label (Chula) matches a detection within this distance: 20 px at Chula's 0.19 um/px,
# about a red cell's radius.
POINT_RADIUS_UM = 3.8


@dataclass(frozen=True)
class Found:
    """One detected object, in the pixels of the image given to the detector."""

    kind: str  # red_cell, white_cell or platelet
    x: float
    y: float
    box: tuple[float, float, float, float]
    at_border: bool


# (RGB image, microns per pixel or None) -> the objects found.
Detector = Callable[[np.ndarray, float | None], list[Found]]


def match(
    found: Sequence[Found], labels: Sequence[FieldObject], point_radius_px: float
) -> list[tuple[int, int]]:
    """One-to-one (found index, label index) pairs, closest centres first."""
    if not found or not labels:
        return []
    f = np.asarray([(d.x, d.y) for d in found], dtype=float)
    g = np.asarray([(o.x, o.y) for o in labels], dtype=float)
    dist = np.hypot(f[:, None, 0] - g[None, :, 0], f[:, None, 1] - g[None, :, 1])
    valid = np.empty_like(dist, dtype=bool)
    for j, obj in enumerate(labels):
        if obj.box is None:
            valid[:, j] = dist[:, j] <= point_radius_px
        else:
            x0, y0, x1, y1 = obj.box
            valid[:, j] = (f[:, 0] >= x0) & (f[:, 0] <= x1) & (f[:, 1] >= y0) & (f[:, 1] <= y1)
    dist = np.where(valid, dist, np.inf)
    pairs: list[tuple[int, int]] = []
    used_f: set[int] = set()
    used_g: set[int] = set()
    for flat in np.argsort(dist, axis=None):
        i, j = divmod(int(flat), len(labels))
        if not np.isfinite(dist[i, j]):
            break
        if i not in used_f and j not in used_g:
            used_f.add(i)
            used_g.add(j)
            pairs.append((i, j))
    return pairs


def in_box(x: float, y: float, box: tuple[float, float, float, float]) -> bool:
    return box[0] <= x <= box[2] and box[1] <= y <= box[3]


def in_ellipse(x: float, y: float, box: tuple[float, float, float, float]) -> bool:
    """(x, y) inside the ellipse inscribed in the box."""
    hw, hh = (box[2] - box[0]) / 2, (box[3] - box[1]) / 2
    if hw <= 0 or hh <= 0:
        return False
    dx, dy = (x - (box[0] + box[2]) / 2) / hw, (y - (box[1] + box[3]) / 2) / hh
    return dx * dx + dy * dy <= 1.0


def field_figures(item: Field, found: Sequence[Found], microns_per_pixel: float) -> dict[str, Any]:
    """Counts of one field (summed per source by `summarise`)."""
    radius = POINT_RADIUS_UM / microns_per_pixel
    red_labels = item.of_kind("red_cell")
    red_found = [d for d in found if d.kind == "red_cell"]
    pairs = match(red_found, red_labels, radius)
    matched_found = {i for i, _ in pairs}
    matched_labels = {j for _, j in pairs}
    interior = [j for j, o in enumerate(red_labels) if not item.at_border(o)]
    counted = [i for i, d in enumerate(red_found) if not d.at_border]
    stray = [red_found[i] for i in counted if i not in matched_found]
    whites = item.of_kind("white_cell")
    boxes = [w.box for w in whites if w.box is not None]
    whites_hit = sum(1 for b in boxes if any(in_box(d.x, d.y, b) for d in stray))
    whites_hit_within = sum(1 for b in boxes if any(in_ellipse(d.x, d.y, b) for d in stray))
    white_pairs = match([d for d in found if d.kind == "white_cell"], whites, radius)
    whites_recalled = {j for _, j in white_pairs}
    whites_missed_hit = sum(
        1
        for j, w in enumerate(whites)
        if w.box is not None
        and j not in whites_recalled
        and any(in_box(d.x, d.y, w.box) for d in stray)
    )
    platelets = item.of_kind("platelet")
    platelet_pairs = match([d for d in found if d.kind == "platelet"], platelets, radius)
    return {
        "complete": item.complete,
        "red_labels_interior": len(interior),
        "red_recalled_interior": len(matched_labels.intersection(interior)),
        "red_counted": len(counted),
        "red_counted_matched": len(matched_found.intersection(counted)),
        "white_labels": len(whites),
        "white_counted_as_red": whites_hit,
        "white_counted_as_red_within": whites_hit_within,
        "white_recalled": len(whites_recalled),
        "white_missed_counted_as_red": whites_missed_hit,
        "platelet_labels": len(platelets),
        "platelets_recalled": len(platelet_pairs),
        "white_found": sum(d.kind == "white_cell" for d in found),
        "platelets_found": sum(d.kind == "platelet" for d in found),
        "found_over_there": len(red_found) / len(red_labels) if red_labels else None,
    }


def _ratio(num: float, den: float) -> float | None:
    return num / den if den else None


def summarise(rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
    complete = [r for r in rows if r["complete"]]

    def total(key: str, among: Sequence[dict[str, Any]] = rows) -> int:
        return int(sum(r[key] for r in among))

    ratios = [r["found_over_there"] for r in complete if r["found_over_there"] is not None]
    return {
        "fields": len(rows),
        "complete_fields": len(complete),
        "red_cells_interior": total("red_labels_interior"),
        "red_recall_interior": _ratio(total("red_recalled_interior"), total("red_labels_interior")),
        "red_precision_one_to_one": _ratio(
            total("red_counted_matched", complete), total("red_counted", complete)
        ),
        "white_cells": total("white_labels"),
        "white_counted_as_red": _ratio(total("white_counted_as_red"), total("white_labels")),
        "white_counted_as_red_within": _ratio(
            total("white_counted_as_red_within"), total("white_labels")
        ),
        "white_recall": _ratio(total("white_recalled"), total("white_labels")),
        "white_found": total("white_found"),
        "white_missed_counted_as_red": _ratio(
            total("white_missed_counted_as_red"), total("white_labels")
        ),
        "platelets": total("platelet_labels"),
        "platelet_recall": _ratio(total("platelets_recalled"), total("platelet_labels")),
        "found_over_there_mean": float(np.mean(ratios)) if ratios else None,
        "fields_with_red_recall_under_0_5": sum(
            1
            for r in rows
            if r["red_labels_interior"]
            and r["red_recalled_interior"] < 0.5 * r["red_labels_interior"]
        ),
    }


def evaluate_fields(
    fields: Sequence[Field],
    detector: Detector,
    scale_of: Callable[[Field], float],
    give_scale: bool = True,
    progress: bool = True,
    prepare: Callable[[np.ndarray, Field], np.ndarray] | None = None,
) -> tuple[dict[str, dict[str, Any]], list[dict[str, Any]]]:
    """Run `detector` on every field (with the field's scale, or with none when `give_scale` is
    false) and measure it: (summary per source, one row per field). `scale_of` gives the
    field's true scale, used for matching point labels either way; `prepare` changes each
    field's image first, keeping its size (research/detector_shift.py's shifts)."""
    rows: list[dict[str, Any]] = []
    started = time.perf_counter()
    for item in tqdm(fields, desc="fields", disable=not progress, unit="img"):
        with Image.open(item.image) as opened:
            rgb = np.asarray(opened.convert("RGB"))
        if prepare is not None:
            rgb = prepare(rgb, item)
        scale = scale_of(item)
        t0 = time.perf_counter()
        found = detector(rgb, scale if give_scale else None)
        seconds = time.perf_counter() - t0
        row = field_figures(item, found, scale)
        rows.append({"image": item.image.name, "source": item.source, "seconds": seconds, **row})
    by_source: dict[str, dict[str, Any]] = {}
    for source in sorted({r["source"] for r in rows}):
        mine = [r for r in rows if r["source"] == source]
        by_source[source] = {
            **summarise(mine),
            "seconds_per_field": float(np.mean([r["seconds"] for r in mine])),
        }
    by_source["all"] = summarise(rows)
    by_source["all"]["wall_seconds"] = time.perf_counter() - started
    return by_source, rows


def classical_detector(rgb: np.ndarray, microns_per_pixel: float | None) -> list[Found]:
    """Today's threshold-and-watershed segmentation (core.detect.classical) as a Detector: its dark
    "other" regions are reported as white cells; it finds no platelets."""
    from core.detect.classical import NoCellsError, segment
    from core.smear.analysis import scale_factor

    factor = scale_factor(microns_per_pixel)
    height, width = rgb.shape[:2]
    work = rgb
    if factor != 1.0:
        size = (max(1, round(width * factor)), max(1, round(height * factor)))
        work = np.asarray(Image.fromarray(rgb).resize(size, Image.Resampling.LANCZOS))
    try:
        segmentation = segment(work)
    except NoCellsError:
        return []
    out = []
    for d in segmentation.detections:
        x0, y0, x1, y1 = d.box
        out.append(
            Found(
                kind="red_cell" if d.kind == "red_cell" else "white_cell",
                x=d.x / factor,
                y=d.y / factor,
                box=(x0 / factor, y0 / factor, x1 / factor, y1 / factor),
                at_border=d.at_border,
            )
        )
    return out


class LearnedDetector:
    """A core.detect.learned.CellDetector as a Detector; keeps the scale it used for each field (the
    estimate, when none was given)."""

    def __init__(self, detector: Any) -> None:
        self.detector = detector
        self.scales_used: list[float] = []

    def __call__(self, rgb: np.ndarray, microns_per_pixel: float | None) -> list[Found]:
        result = self.detector.detect(rgb, microns_per_pixel)
        self.scales_used.append(float(result.microns_per_pixel))
        return [Found(o.kind, o.x, o.y, o.box, o.at_border) for o in result.objects]


def scale_errors(
    rows: Sequence[dict[str, Any]], used: Sequence[float], true_scale: dict[str, float]
) -> dict[str, dict[str, float]]:
    """Per source: the median and 90th percentile of |estimated / true - 1| over its fields."""
    errors: dict[str, list[float]] = {}
    for row, scale in zip(rows, used, strict=True):
        errors.setdefault(row["source"], []).append(abs(scale / true_scale[row["source"]] - 1))
    return {
        source: {
            "median_relative_error": float(np.median(e)),
            "p90_relative_error": float(np.percentile(e, 90)),
        }
        for source, e in errors.items()
    }


FIGURES = (
    ("red_recall_interior", "red-cell recall (interior)"),
    ("red_precision_one_to_one", "one-to-one precision"),
    ("white_counted_as_red", "white cells counted as red (box)"),
    ("white_counted_as_red_within", "white cells counted as red (within the cell)"),
    ("white_missed_counted_as_red", "white cells missed and counted as red"),
    ("white_recall", "white-cell recall"),
    ("platelet_recall", "platelet recall"),
    ("found_over_there_mean", "found / there"),
    ("seconds_per_field", "s per field"),
)


def markdown_table(results: dict[str, dict[str, dict[str, Any]]]) -> str:
    """results: run name (e.g. "with scale") -> source -> figures."""
    head = "| run | source | fields | " + " | ".join(name for _, name in FIGURES) + " |"
    lines = [head, "|" + "---|" * (3 + len(FIGURES))]
    for run, by_source in results.items():
        for source, figures in by_source.items():
            cells = []
            for key, _ in FIGURES:
                value = figures.get(key)
                cells.append("-" if value is None else f"{value:.3f}")
            lines.append(f"| {run} | {source} | {figures['fields']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def choose_thresholds(
    detector: CellDetector, samples: list[Sample], scales: dict[str, float]
) -> tuple[dict[str, float], dict[str, Any]]:
    """Per kind, the heatmap threshold with the best F1 on the validation fields (red cells:
    interior recall against one-to-one precision), and the figures at those thresholds."""
    detector.card.thresholds = dict.fromkeys(KINDS, 0.1)  # every peak the search may want
    runs = [(sample, detector.run(sample.rgb)) for sample in samples]
    best: dict[str, float] = {}
    for kind in KINDS:
        scores = []
        for cut in np.arange(0.1, 0.75, 0.05):
            tp = fp = fn = 0.0
            for sample, peaks in runs:
                assert sample.field is not None
                found = _found(sample, peaks, dict.fromkeys(KINDS, float(cut)))
                if not sample.supervised[KINDS.index(kind)]:
                    continue
                if kind == "red_cell":
                    figures = field_figures(sample.field, found, scales[sample.source])
                    tp += figures["red_counted_matched"]
                    fp += figures["red_counted"] - figures["red_counted_matched"]
                    fn += figures["red_labels_interior"] - figures["red_recalled_interior"]
                else:
                    mine = [d for d in found if d.kind == kind]
                    labels = sample.field.of_kind(kind)
                    pairs = len(match(mine, labels, point_radius_px=0.0))
                    tp, fp, fn = tp + pairs, fp + len(mine) - pairs, fn + len(labels) - pairs
            scores.append((2 * tp / (2 * tp + fp + fn) if tp else 0.0, float(cut)))
        best[kind] = max(scores)[1]
    rows = []
    for sample, peaks in runs:
        assert sample.field is not None
        rows.append(field_figures(sample.field, _found(sample, peaks, best), scales[sample.source]))
    detector.card.thresholds = best
    return best, summarise(rows)


def figures_by_source(
    detector: CellDetector, samples: list[Sample], scales: dict[str, float]
) -> dict[str, dict[str, Any]]:
    """Detection figures per source on `samples` (at the working scale, that is with each
    source's scale given), with the detector's thresholds."""
    rows: dict[str, list[dict[str, Any]]] = {}
    for sample in samples:
        assert sample.field is not None
        found = _found(sample, detector.run(sample.rgb), detector.card.thresholds)
        figures = field_figures(sample.field, found, scales[sample.source])
        rows.setdefault(sample.source, []).append(figures)
    return {source: summarise(r) for source, r in sorted(rows.items())}


def _found(sample: Sample, peaks: list[Any], thresholds: dict[str, float]) -> list[Any]:
    """Peaks of a sample (working pixels) above `thresholds`, as Found in the field's pixels."""
    assert sample.field is not None
    f = sample.scale
    out = []
    width, height = sample.field.width, sample.field.height
    for k, x, y, w, h, score in peaks:
        if score < thresholds[KINDS[k]]:
            continue
        cx, cy, bw, bh = x / f, y / f, w / f, h / f
        if not (0 <= cx < width and 0 <= cy < height):
            continue
        x0, y0 = max(0.0, cx - bw / 2), max(0.0, cy - bh / 2)
        x1, y1 = min(float(width), cx + bw / 2), min(float(height), cy + bh / 2)
        # The 2-px border the shipped detector's thresholds were chosen with; the service sets
        # aside more (DetectorCard.border_margin_um), after the thresholds.
        border = x0 <= 2 or y0 <= 2 or x1 >= width - 2 or y1 >= height - 2
        out.append(Found(KINDS[k], cx, cy, (x0, y0, x1, y1), border))
    return out


def size_calibration(detector: CellDetector, samples: list[Sample]) -> float:
    """Median of (predicted red-cell box side / labelled box side) at the working scale, over
    matched red cells of boxed validation fields: the scale estimate divides it out."""
    ratios = []
    for sample in samples:
        assert sample.field is not None
        boxed = [o for o in sample.field.of_kind("red_cell") if o.box is not None]
        if not boxed or sample.field.complete is False:
            continue
        found = _found(sample, detector.run(sample.rgb), detector.card.thresholds)
        red = [d for d in found if d.kind == "red_cell" and not d.at_border]
        for i, j in match(red, boxed, point_radius_px=0.0):
            box = boxed[j].box
            assert box is not None
            if sample.field.at_border(boxed[j]):
                continue
            predicted = ((red[i].box[2] - red[i].box[0]) + (red[i].box[3] - red[i].box[1])) / 2
            labelled = ((box[2] - box[0]) + (box[3] - box[1])) / 2
            ratios.append(predicted / labelled)
    return float(np.median(ratios)) if ratios else 1.0
