"""Evaluate an exported model on a labelled data set: a folder-per-class set, or a Chula layout
(`Dataset/`, `Label/`) cropped the same way as for training."""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path
from typing import Any

from core.classify.tta import view_indices
from training.data import SPLITS, scan_dataset
from training.datasets.chula import DEFAULT_WINDOW, import_chula, is_chula_layout
from training.errors import DataError
from training.interpret import predict
from training.learner import load_exported
from training.metrics import classification_metrics

log = logging.getLogger(__name__)


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
