"""Whole-smear analysis evaluated against Chula's point labels (`python -m training
evaluate-smears`; fields without labels are analysed by `python -m app analyze-smear`).

`evaluate-smears` runs the pipeline on labelled smears (the model card's test smears by default)
and measures:
- detection recall: label points with a detected red cell whose centre lies within `radius` px
  (one-to-one matching, closest pairs first);
- interior precision: detected red cells not touching the image edge that match a label, on the
  smears whose labels cover the whole field (many Chula smears label only some cells; see
  `training.datasets.chula.label_coverage`);
- per-smear percentage of each class, pipeline (counted cells) against labels, on those smears:
  the mean absolute difference per class in percentage points.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from core.smear.analysis import SmearError, analyze_smear
from core.smear.counting import count_labels, percentages
from core.smear.result import FieldResult
from training.datasets.chula import FULL_COVERAGE, label_coverage, read_label_file
from training.errors import DataError

log = logging.getLogger(__name__)
MATCH_RADIUS_PX = 20  # about one cell radius: the label point lies inside the detected cell
COMMON_SHARE = 0.05  # "common" classes: at least 5 % of the evaluated labels


def match_points(
    detected: Sequence[tuple[float, float]], points: Sequence[tuple[float, float]], radius: float
) -> list[tuple[int, int]]:
    """One-to-one (detection, point) pairs within `radius`, closest pairs first."""
    if not detected or not points:
        return []
    d = np.asarray(detected, dtype=float)
    p = np.asarray(points, dtype=float)
    dist = np.hypot(d[:, None, 0] - p[None, :, 0], d[:, None, 1] - p[None, :, 1])
    pairs = []
    used_d, used_p = set(), set()
    for flat in np.argsort(dist, axis=None):
        i, j = divmod(int(flat), len(p))
        if dist[i, j] > radius:
            break
        if i not in used_d and j not in used_p:
            used_d.add(i)
            used_p.add(j)
            pairs.append((i, j))
    return pairs


def evaluate_smear(result: FieldResult, rgb: np.ndarray, points: list[Any]) -> dict[str, Any]:
    """Detection and counting figures of one analysed smear against its label points."""
    classes = list(result.counts)  # every class of the model, counted or not
    known = [p for p in points if p[2] in classes]
    cells = result.cells
    pairs = match_points(
        [(c.x, c.y) for c in cells], [(x, y) for x, y, _ in points], MATCH_RADIUS_PX
    )
    matched_cells = {i for i, _ in pairs}
    interior = [i for i, c in enumerate(cells) if not c.at_border]
    label_counts = count_labels((name for _, _, name in known), classes)
    return {
        "labels": len(points),
        "labels_unknown_to_model": len(points) - len(known),
        "detected": len(cells),
        "matched": len(pairs),
        "interior_detected": len(interior),
        "interior_matched": len(matched_cells.intersection(interior)),
        "coverage": round(label_coverage(rgb, [(x, y) for x, y, _ in points]), 3),
        "pipeline_pct": result.percentages,
        "label_pct": percentages(label_counts),
        "label_counts": label_counts,
        "other_objects": result.other_objects,
    }


def summarise(rows: dict[str, dict[str, Any]], classes: list[str]) -> dict[str, Any]:
    """Recall over every smear; precision and percentage errors over fully labelled smears."""
    full = {k: r for k, r in rows.items() if r["coverage"] >= FULL_COVERAGE}
    labels = sum(r["labels"] for r in rows.values())
    matched = sum(r["matched"] for r in rows.values())
    interior = sum(r["interior_detected"] for r in full.values())
    interior_matched = sum(r["interior_matched"] for r in full.values())
    total_by_class = {c: sum(r["label_counts"][c] for r in full.values()) for c in classes}
    total = sum(total_by_class.values())
    common = [c for c in classes if total and total_by_class[c] / total >= COMMON_SHARE]
    mae = {
        c: float(np.mean([abs(r["pipeline_pct"][c] - r["label_pct"][c]) for r in full.values()]))
        for c in classes
        if full
    }
    return {
        "smears": len(rows),
        "labels": labels,
        "recall": matched / labels if labels else None,
        "match_radius_px": MATCH_RADIUS_PX,
        "fully_labelled_smears": len(full),
        "full_coverage_threshold": FULL_COVERAGE,
        "interior_precision": interior_matched / interior if interior else None,
        "interior_detected": interior,
        "percentage_mae_pp": mae,
        "common_classes": common,
        "common_mean_mae_pp": float(np.mean([mae[c] for c in common])) if common else None,
    }


def evaluate_smears(
    chula_dir: Path,
    stems: Sequence[str],
    classifier: Any,
    progress: bool = True,
    detector: Any | None = None,
) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
    """Analyse each labelled smear `stems` of a Chula-layout folder; (summary, per-smear rows)."""
    rows: dict[str, dict[str, Any]] = {}
    started = time.perf_counter()
    for k, stem in enumerate(stems):
        image_path = chula_dir / "Dataset" / f"{stem}.jpg"
        label_path = chula_dir / "Label" / f"{stem}.txt"
        if not image_path.is_file() or not label_path.is_file():
            log.warning("smear %s: image or label file missing, skipped", stem)
            continue
        points = [(p.x, p.y, p.label) for p in read_label_file(label_path).points]
        if not points:
            continue
        with Image.open(image_path) as opened:
            image = opened.convert("RGB")
        try:
            # Chula's scale is known: the evaluation measures detection and counting at it.
            scale = 0.19 if detector is not None else None
            result = analyze_smear(image, classifier, scale, detector=detector).result
        except SmearError as exc:
            log.warning("smear %s: %s", stem, exc)
            continue
        rows[stem] = evaluate_smear(result, np.asarray(image), points)
        if progress and (k + 1) % 10 == 0:
            elapsed = time.perf_counter() - started
            print(f"  {k + 1}/{len(stems)} smears, {elapsed:.0f} s", flush=True)
    if not rows:
        raise DataError(f"no labelled smear of {len(stems)} could be analysed in {chula_dir}")
    return summarise(rows, list(classifier.classes)), rows
