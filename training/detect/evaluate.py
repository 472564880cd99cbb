"""A trained detector measured on labelled fields: the per-kind thresholds and the size calibration
chosen on the validation fields, and the figures per source."""

from __future__ import annotations

from typing import Any

import numpy as np

from core.detect.learned import (
    KINDS,
    CellDetector,
)
from training.detect.data import Sample


def choose_thresholds(
    detector: CellDetector, samples: list[Sample], scales: dict[str, float]
) -> tuple[dict[str, float], dict[str, Any]]:
    """Per kind, the heatmap threshold with the best F1 on the validation fields (red cells:
    interior recall against one-to-one precision), and the figures at those thresholds."""
    from training.detection_eval import field_figures, match, summarise

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
    from training.detection_eval import field_figures, summarise

    rows: dict[str, list[dict[str, Any]]] = {}
    for sample in samples:
        assert sample.field is not None
        found = _found(sample, detector.run(sample.rgb), detector.card.thresholds)
        figures = field_figures(sample.field, found, scales[sample.source])
        rows.setdefault(sample.source, []).append(figures)
    return {source: summarise(r) for source, r in sorted(rows.items())}


def _found(sample: Sample, peaks: list[Any], thresholds: dict[str, float]) -> list[Any]:
    """Peaks of a sample (working pixels) above `thresholds`, as Found in the field's pixels."""
    from training.detection_eval import Found

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
        # aside more (CellDetector.BORDER_MARGIN_UM), after the thresholds.
        border = x0 <= 2 or y0 <= 2 or x1 >= width - 2 or y1 >= height - 2
        out.append(Found(KINDS[k], cx, cy, (x0, y0, x1, y1), border))
    return out


def size_calibration(detector: CellDetector, samples: list[Sample]) -> float:
    """Median of (predicted red-cell box side / labelled box side) at the working scale, over
    matched red cells of boxed validation fields: the scale estimate divides it out."""
    from training.detection_eval import match

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
