"""Measure a classifier: its predictions on labelled items (test-time views as the service
averages them), the classification metrics without hidden averaging choices, and `evaluate`, an
exported model on a labelled data set: a folder-per-class set, or a Chula layout (`Dataset/`,
`Label/`) cropped the same way as for training."""

from __future__ import annotations

import logging
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from core.classify.tta import tta_probabilities, view_indices
from training.classify.data import SPLITS, scan_dataset
from training.classify.learner import load_exported
from training.datasets.chula import DEFAULT_WINDOW, import_chula, is_chula_layout
from training.errors import DataError

log = logging.getLogger(__name__)


@dataclass
class Predictions:
    probs: np.ndarray  # (N, C)
    targets: np.ndarray  # (N,)
    losses: np.ndarray  # (N,)
    items: pd.DataFrame  # path, label, ...

    @property
    def preds(self) -> np.ndarray:
        return self.probs.argmax(axis=1)


def predict(learn: Any, items: pd.DataFrame, tta_views: int = 1) -> Predictions:
    """Probabilities and per-item losses for labelled items, without random augmentation;
    averaged over `tta_views` test-time views (core/classify/tta.py), as the service does.

    With one view the losses are the training loss (class weights included); with more, the
    cross-entropy of the averaged probabilities."""
    dl = learn.dls.test_dl(items, with_labels=True)
    if tta_views == 1:
        with learn.no_bar():
            probs, targets, losses = learn.get_preds(dl=dl, with_loss=True)
    else:
        model = learn.model.eval()
        chunks, labels = [], []
        with torch.inference_mode():
            for xb, yb in dl:
                # Plain tensors: fastai's TensorImage / TensorCategory types refuse nll_loss.
                x = xb.as_subclass(torch.Tensor)
                chunks.append(tta_probabilities(model, x, tta_views).cpu())
                labels.append(yb.as_subclass(torch.Tensor).cpu())
        probs, targets = torch.cat(chunks), torch.cat(labels)
        losses = F.nll_loss(probs.clamp_min(1e-12).log(), targets, reduction="none")
    return Predictions(probs.numpy(), targets.numpy(), losses.numpy(), items.reset_index(drop=True))


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


def evaluate(
    model_dir: Path,
    data: Path,
    split: str | None = None,
    progress: bool = True,
    tta_views: int | None = None,
) -> dict[str, Any]:
    """Metrics of the model on `data`.

    `split` picks one split of a split data set; by default the test split where the data set
    has one (so the figures are never on data used for training), otherwise every item.
    `tta_views` test-time views are averaged per cell; by default the card's, as the service does.
    """
    learn, card = load_exported(model_dir)
    views = card.tta_views if tta_views is None else tta_views
    try:
        view_indices(views)
    except ValueError as exc:
        raise DataError(str(exc)) from exc
    with tempfile.TemporaryDirectory(prefix="rbc-eval-") as tmp:
        root = Path(data)
        source_layout = "folder"
        if is_chula_layout(root):
            source_layout = "chula"
            window = card.crop_window_px or DEFAULT_WINDOW
            import_chula(root, Path(tmp) / "crops", window=window, splits=False, progress=progress)
            root = Path(tmp) / "crops"
        index = scan_dataset(root, progress=progress)
        items = index.items
        available = set(items["split"])
        if split is None:
            split = "test" if "test" in available else "all"
        if split != "all":
            if split not in SPLITS or split not in available:
                raise DataError(f"split {split!r} is not in {data}; it has {sorted(available)}")
            items = items[items["split"] == split]
        known = items["label"].isin(card.classes)
        unknown = items.loc[~known, "label"].value_counts()
        if len(unknown):
            log.warning(
                "skipping %d items of classes the model lacks: %s", unknown.sum(), dict(unknown)
            )
        items = items[known]
        if items.empty:
            raise DataError(f"no items of the model's classes ({card.classes}) in {data}")
        pred = predict(learn, items, views)
    metrics = classification_metrics(pred.targets, pred.preds, list(card.classes))
    return {
        **metrics,
        "model": card.name,
        "weights_sha256": card.weights_sha256,
        "data": str(data),
        "layout": source_layout,
        "split": split,
        "tta_views": views,
        "skipped_unknown_class": {str(k): int(v) for k, v in unknown.items()},
        "skipped_files": len(index.skipped),
    }
