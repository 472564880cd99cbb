"""Classification metrics from integer targets and predictions, without hidden averaging choices."""

from __future__ import annotations

from typing import Any

import numpy as np


def confusion_matrix(targets: np.ndarray, preds: np.ndarray, n_classes: int) -> np.ndarray:
    """Counts, rows = actual class, columns = predicted class."""
    cm = np.zeros((n_classes, n_classes), dtype=np.int64)
    np.add.at(cm, (targets.astype(int), preds.astype(int)), 1)
    return cm


def classification_metrics(
    targets: np.ndarray, preds: np.ndarray, classes: list[str]
) -> dict[str, Any]:
    """Accuracy, macro-F1 (over classes with support) and per-class precision / recall / F1."""
    cm = confusion_matrix(targets, preds, len(classes))
    support = cm.sum(axis=1)
    predicted = cm.sum(axis=0)
    tp = np.diag(cm)
    per_class: dict[str, dict[str, float | int]] = {}
    f1s = []
    for i, name in enumerate(classes):
        precision = tp[i] / predicted[i] if predicted[i] else 0.0
        recall = tp[i] / support[i] if support[i] else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        per_class[name] = {
            "precision": round(float(precision), 4),
            "recall": round(float(recall), 4),
            "f1": round(float(f1), 4),
            "support": int(support[i]),
        }
        # A class absent from this set has no recall to average; leaving it out keeps the
        # macro-F1 comparable between sets with and without it.
        if support[i]:
            f1s.append(f1)
    n = int(cm.sum())
    return {
        "accuracy": round(float(tp.sum() / n), 4) if n else 0.0,
        "macro_f1": round(float(np.mean(f1s)), 4) if f1s else 0.0,
        "n": n,
        "per_class": per_class,
    }


def most_confused(cm: np.ndarray, classes: list[str], top: int = 10) -> list[tuple[str, str, int]]:
    """(actual, predicted, count) for the largest off-diagonal cells, largest first."""
    pairs = [
        (classes[i], classes[j], int(cm[i, j]))
        for i in range(len(classes))
        for j in range(len(classes))
        if i != j and cm[i, j] > 0
    ]
    return sorted(pairs, key=lambda p: -p[2])[:top]
