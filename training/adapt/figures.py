"""Before / after figures on held-out reviewed cells, as a laboratory would read them.

A cell counts as flagged for review, as in the service, when its calibrated confidence is under
the review threshold or it lies farther from the training cells than the cell threshold.
"""

from __future__ import annotations

from typing import Any

import numpy as np

NORMAL = "normal"


def _rate(num: int, den: int) -> float | None:
    return round(num / den, 4) if den else None


def cell_figures(
    probs: np.ndarray,
    targets: np.ndarray,
    classes: list[str],
    review_threshold: float,
    distances: np.ndarray | None,
    cell_threshold: float | None,
    weights: np.ndarray | None = None,
) -> dict[str, Any]:
    """Accuracy, macro-F1 over the classes present, each class's precision / recall, and what
    review would see: the share not flagged and its accuracy, the share called normal, the
    share called abnormal without a flag, and of the abnormal cells the share called normal
    without a flag (missed unseen: what a model taught mostly normal cells risks). With
    `weights` (training/adapt/judging.py), also the accuracy with each cell weighed to stand for
    the cells of its slides."""
    n = len(targets)
    pred = probs.argmax(axis=1)
    right = pred == targets
    flagged = probs.max(axis=1) < review_threshold
    if distances is not None and cell_threshold is not None:
        flagged |= distances > cell_threshold
    per_class: dict[str, dict[str, Any]] = {}
    f1s = []
    for index in sorted(set(targets.tolist()) | set(pred.tolist())):
        support = int((targets == index).sum())
        called = int((pred == index).sum())
        hits = int(((pred == index) & right).sum())
        precision, recall = _rate(hits, called), _rate(hits, support)
        if support:
            p, r = precision or 0.0, recall or 0.0
            f1s.append(0.0 if p + r == 0 else 2 * p * r / (p + r))
        per_class[classes[index]] = {
            "precision": precision,
            "recall": recall,
            "support": support,
            "called": called,
        }
    normal = classes.index(NORMAL) if NORMAL in classes else -1
    unflagged = ~flagged
    weighed = None
    if weights is not None and n:
        weighed = round(float(np.average(right, weights=weights)), 4)
    return {
        "n": n,
        "accuracy": _rate(int(right.sum()), n),
        "accuracy_weighed": weighed,
        "macro_f1": round(float(np.mean(f1s)), 4) if f1s else None,
        "unflagged_share": _rate(int(unflagged.sum()), n),
        "unflagged_accuracy": _rate(int((right & unflagged).sum()), int(unflagged.sum())),
        "called_normal": _rate(int((pred == normal).sum()), n),
        "abnormal_unflagged": _rate(int(((pred != normal) & unflagged).sum()), n),
        "abnormal_missed": _rate(
            int(((targets != normal) & (pred == normal) & unflagged).sum()),
            int((targets != normal).sum()),
        ),
        "per_class": per_class,
    }


HEADLINES = (
    ("n", "cells"),
    ("accuracy", "accuracy"),
    ("accuracy_weighed", "accuracy, the cells weighed to stand for their slides"),
    ("macro_f1", "macro-F1 (classes present)"),
    ("unflagged_share", "share not flagged for review"),
    ("unflagged_accuracy", "accuracy of those not flagged"),
    ("called_normal", "share called normal"),
    ("abnormal_unflagged", "share called abnormal without a flag"),
    ("abnormal_missed", "abnormal cells called normal without a flag"),
)

SHOWN_IF_GIVEN = {"accuracy_weighed"}  # absent without a record of the slides' other cells


def markdown_table(
    before: dict[str, Any], after: dict[str, Any], only: tuple[str, ...] | None = None
) -> list[str]:
    """The headline figures and every class's recall and precision, before and after; with
    `only`, those headline figures alone."""

    def cell(value: Any) -> str:
        return "-" if value is None else f"{value:.3f}" if isinstance(value, float) else str(value)

    lines = ["| figure | before | after |", "|---|---|---|"]
    for key, what in HEADLINES:
        if key in SHOWN_IF_GIVEN and before.get(key) is None and after.get(key) is None:
            continue
        if only is None or key in only:
            lines.append(f"| {what} | {cell(before.get(key))} | {cell(after.get(key))} |")
    if only is not None:
        return lines
    names = sorted(set(before["per_class"]) | set(after["per_class"]))
    for name in names:
        b, a = before["per_class"].get(name, {}), after["per_class"].get(name, {})
        support = a.get("support", b.get("support", 0))
        if not support and not a.get("called") and not b.get("called"):
            continue
        lines.append(
            f"| {name} (n={support}): recall / precision | {cell(b.get('recall'))} / "
            f"{cell(b.get('precision'))} | {cell(a.get('recall'))} / {cell(a.get('precision'))} |"
        )
    return lines
