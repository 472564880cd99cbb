"""`python -m training learn-other-labs`: the base model taught other laboratories' red cells.

Before any review, the shipped classifier reads another laboratory's cells as if Chula's
microscope had taken them (txl-pbc's red cells 11-38 % called normal). The other laboratories'
routine smears carry no morphology labels, but most of their red cells are normal, so here they
are taught as normal (an assumption: some are not), beside Chula's own training cells:

1. Chula's training crops (an import-chula output) and the red cells counted on each other
   laboratory's train fields (a YOLO set with its sources, txl-pbc; cut through the service's own
   path, the scale estimated as for an unknown laboratory) go through the base network once.
2. The last layer is refitted from the base weights (training/adapt/head.py): cross-entropy on
   Chula's cells, weighed by class as the recipe trained them, plus the other laboratories'
   cells as normal, weighed `w`, with a pull toward the base weights. The body stays, so the
   familiarity statistics, the field colours and the replay set stay valid.
3. `w` is chosen on Chula alone: the heaviest of WEIGHTS whose fit loses at most
   MAX_FORGETTING of the replayed validation cells (adapt's own check). Leaving a txl-pbc source
   out, that rule gave a source never taught 0.71 / 0.66 / 0.60 of its red cells called normal
   (from 0.38 / 0.24 / 0.11) at the same accuracy on Chula's test crops
   (research/other_labs_head_probe.py).
4. The model folder is written as every model is (export.pkl, model_state.pt, model.onnx, card
   with Chula's test metrics), the base's calibration and replay set copied; run
   `python -m training calibrate` on it next (temperature and review threshold belong to the
   new layer).
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from training.adapt.head import HeadFit, fit_last_layer
from training.adapt.pipeline import (
    MAX_FORGETTING,
    _accuracy,
    _last_layer,
    _replace,
    _staging,
    set_last_layer,
)
from training.adapt.replay import REPLAY_FILE, load_replay
from training.errors import DataError

NORMAL = "normal"
# The base's training record, kept beside the refitted model (the body is the base's).
CARRIED = ("config.yaml", "history.csv", "loss_curves.png", "lr_find.png")
# Its calibration, served until `calibrate` fits the new layer's own.
CALIBRATION = ("calibration.json", "calibration.npz", "calibration.md", "reliability_test.png")
METRICS_KEYS = ("split", "accuracy", "macro_f1", "n", "per_class", "confusion_matrix")
TOP_LOSSES = 9
WEIGHTS = (0.1, 0.25, 0.5, 1.0)  # the other laboratories' cells against Chula's
PULL = 0.01  # l2 toward the base weights: adapt's weakest candidate
BATCH = 256
Say = Callable[[str], None]


def features(predictor: Any, images: list[Image.Image]) -> np.ndarray:
    """The 512 features the last layer reads, one view, as the service computes them."""
    out = [
        predictor.raw_outputs(predictor.preprocess.batch(images[s : s + BATCH]), 1)[1]
        for s in range(0, len(images), BATCH)
    ]
    return np.concatenate(out).astype(np.float32) if out else np.empty((0, 0), np.float32)


def other_lab_cells(
    yolo: Path,
    predictor: Any,
    detector: Any,
    split: str = "train",
    fields_per_source: int | None = None,
    say: Say = print,
) -> dict[str, np.ndarray]:
    """Each source's counted red cells on its `split` fields, as features (source -> (N, D))."""
    from core.smear.analysis import analyze_smear
    from training.datasets.fields import read_yolo

    report = read_yolo(yolo, splits=(split,), progress=False)
    if not report.fields:
        raise DataError(f"{yolo} holds no {split} fields (a YOLO set: images/, labels/)")
    out = {}
    for source in report.sources():
        fields = sorted(
            (f for f in report.fields if f.source == source), key=lambda f: str(f.image)
        )[:fields_per_source]
        crops: list[Image.Image] = []
        for field in fields:
            with Image.open(field.image) as opened:
                image = opened.convert("RGB")
            analysed = analyze_smear(image, predictor, None, detector=detector, keep_crops=True)
            crops += [analysed.crops[c.id] for c in analysed.result.counted]
        out[source] = features(predictor, crops)
        say(f"  {source}: {len(crops)} red cells on {len(fields)} {split} fields")
    return out


def chula_cells(data: Path, predictor: Any, split: str) -> tuple[np.ndarray, np.ndarray, Any]:
    """Features and class indices of an import-chula output's crops of `split`, and their rows."""
    from training.classify.calibrate import crop_outputs, model_crops

    rows = model_crops(Path(data), predictor.classes)
    rows = rows[rows["split"] == split].reset_index(drop=True)
    _, feats = crop_outputs(predictor, Path(data), list(rows["path"]), split, False, 1)
    return feats.numpy(), rows["target"].to_numpy(dtype=np.int64), rows


def heaviest_kept(candidates: list[tuple[float, float]]) -> float | None:
    """Of (weight, forgetting) pairs, the heaviest weight whose fit forgets at most
    MAX_FORGETTING of the replayed validation cells; None when none does."""
    kept = [w for w, forgetting in candidates if forgetting <= MAX_FORGETTING]
    return max(kept) if kept else None


def learn_other_labs(
    base: Path,
    data: Path,
    yolo: Path,
    out: Path,
    *,
    detector: Path | None,
    name: str | None = None,
    weight: float | None = None,
    fields_per_source: int | None = None,
    overwrite: bool = False,
    say: Say = print,
) -> dict[str, Any]:
    """Refit `base`'s last layer on Chula's training crops (`data`) and the other laboratories'
    red cells (`yolo`) taught as normal; write the model to `out`. `weight` fixes `w` instead
    of choosing it. Returns the choice and its figures."""
    from core.classify.predictor import ModelLoadError, Predictor
    from core.detect.learned import CellDetector
    from training.classify.config import load_config
    from training.classify.engine import class_weights

    out = Path(out)
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise DataError(f"{out} already holds files; give --overwrite to replace it")
    try:
        predictor = Predictor.load(Path(base), device="cpu", tta_views=1)
    except ModelLoadError as exc:
        raise DataError(f"cannot load the base model: {exc}") from exc
    card = predictor.card
    if NORMAL not in card.classes:
        raise DataError(f"the base model has no {NORMAL!r} class to teach")
    replay = load_replay(Path(base), card)
    if replay is None:
        raise DataError(
            f"the base model {base} carries no replay set to check what it keeps: add one with "
            "`python -m training add-replay --model DIR --data CROPS`"
        )
    items = training_items(card, Path(data))
    say(f"Chula's training and test crops through {base} ...")
    train_x, train_y, train_rows = chula_cells(data, predictor, "train")
    test_x, test_y, _ = chula_cells(data, predictor, "test")
    config = Path(base) / "config.yaml"
    by_class = (
        class_weights(load_config(config, {}), list(card.classes), train_rows["label"])
        if config.is_file()
        else None
    )
    say(f"Other laboratories' red cells ({yolo}) ...")
    found = None if detector is None else CellDetector.load(Path(detector))
    cells = other_lab_cells(Path(yolo), predictor, found, "train", fields_per_source, say)
    lab_x = np.concatenate([v for v in cells.values() if len(v)])
    lab_y = np.full(len(lab_x), list(card.classes).index(NORMAL), dtype=np.int64)
    start = _last_layer(predictor.model).weight.detach().float().cpu()
    valid = replay.part(False)
    base_valid = _accuracy(start, *valid)
    fits: list[tuple[float, float, HeadFit]] = []  # (weight, forgetting, fit)
    for w in [weight] if weight is not None else WEIGHTS:
        fit = fit_last_layer(
            start,
            (lab_x, lab_y),
            (train_x, train_y),
            lab_weight=w,
            l2=PULL,
            replay_class_weights=by_class,
        )
        forgetting = base_valid - _accuracy(fit.weight, *valid)
        fits.append((w, round(forgetting, 4), fit))
        say(f"  w={w}: loses {forgetting:+.4f} of the replayed validation cells")
    chosen_weight = weight if weight is not None else heaviest_kept([(w, f) for w, f, _ in fits])
    if chosen_weight is None:
        raise DataError(
            f"every weight loses more than {MAX_FORGETTING} of the base's validation cells; "
            "the base layer stays (nothing written)"
        )
    new_weight = next(fit for w, _, fit in fits if w == chosen_weight).weight
    summary: dict[str, Any] = {
        "base": {"name": card.name, "weights_sha256": card.weights_sha256},
        "other_lab_cells": {k: len(v) for k, v in cells.items()},
        "chula_training_cells": len(train_x),
        "weight": chosen_weight,
        "pull": PULL,
        "candidates": [{"weight": w, "forgetting": f} for w, f, _ in fits],
        "chula_test_accuracy": {
            "before": round(_accuracy(start, test_x, test_y), 4),
            "after": round(_accuracy(new_weight, test_x, test_y), 4),
        },
    }
    staging = _staging(out)
    try:
        _write(staging, Path(base), card, new_weight, summary, name, items)
        _replace(staging, out, overwrite)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    acc = summary["chula_test_accuracy"]
    say(
        f"w={chosen_weight}: Chula's test crops {acc['before']:.4f} -> {acc['after']:.4f}. "
        f"Written to {out} with the base's calibration; fit its own next: "
        f"python -m training calibrate --model {out} --data {data}"
    )
    return summary


def _write(
    staging: Path,
    base: Path,
    card: Any,
    weight: torch.Tensor,
    summary: dict[str, Any],
    name: str | None,
    items: Any,
) -> None:
    """The network with its new last layer through the export every model takes, measured on
    the valid and test splits of the data it was trained on (card, report.md, metrics.json, the
    figures), the base's training record, calibration and replay set beside it."""
    from core.modelcard import sha256_file
    from training.classify.export import _probe_batch, export_learner
    from training.classify.learner import load_exported

    learn, _ = load_exported(base)
    set_last_layer(learn, weight)
    staging.mkdir(parents=True, exist_ok=True)
    results = _evaluate(learn, items, staging)
    test = {k: v for k, v in results[-1].items() if k != "top_losses"}
    cells = ", ".join(f"{k} {v}" for k, v in summary["other_lab_cells"].items())
    written = export_learner(
        learn,
        staging,
        _probe_batch(card),
        name=name or card.name,
        classes=list(card.classes),
        architecture=card.architecture,
        input_size=card.input_size,
        normalization=card.normalization,
        crop_window_px=card.crop_window_px,
        resize_method=card.resize_method,
        method=card.method,
        tta_views=card.tta_views,
        microns_per_pixel=card.microns_per_pixel,
        metrics=test,
        dataset=card.dataset,
        training_config={**card.training_config, "other_labs": summary},
        notes=[
            *card.notes,
            f"Last layer refitted (python -m training learn-other-labs) on Chula's training "
            f"crops and other laboratories' red cells taught as normal ({cells}; weight "
            f"{summary['weight']}, chosen to keep Chula's validation cells): the body is the "
            f"base's. The notes above are the base's; on the same test split its accuracy and "
            f"macro-F1 were {card.metrics['accuracy']:.3f} and {card.metrics['macro_f1']:.3f}, "
            f"this model's are {test['accuracy']:.3f} and {test['macro_f1']:.3f}.",
        ],
    )
    for extra in (*CARRIED, *CALIBRATION, REPLAY_FILE):
        if (base / extra).is_file():
            shutil.copy2(base / extra, staging / extra)
    _write_report(staging, base, summary, results)
    metrics = [{k: r[k] for k in METRICS_KEYS} for r in results]
    (staging / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    written.replay_file, written.replay_sha256 = REPLAY_FILE, sha256_file(staging / REPLAY_FILE)
    written.save(staging)


def training_items(card: Any, data: Path) -> Any:
    """The base's training data as it split it (items with their split), refused unless it is
    byte for byte the data the base was trained and measured on (its fingerprint): the new
    figures must be comparable with the base's."""
    from training.classify.data import fingerprint
    from training.classify.export import card_splits

    items = card_splits(card, Path(data))
    if fingerprint(items, Path(data)) != card.dataset.get("fingerprint"):
        raise DataError(
            f"{data} is not the crop set the base model was trained on (fingerprint differs): "
            "give the base's own import-chula output"
        )
    return items


def _evaluate(learn: Any, items: Any, out: Path) -> list[dict[str, Any]]:
    """The new learner's metrics and figures on the valid and test splits."""
    from training.classify.evaluate import predict
    from training.classify.interpret import interpret_split

    results = []
    for split in ("valid", "test"):
        pred = predict(learn, items[items["split"] == split], 1)
        results.append(interpret_split(learn, pred, split, out, TOP_LOSSES))
    return results


def _write_report(
    staging: Path, base: Path, summary: dict[str, Any], results: list[dict[str, Any]]
) -> None:
    """report.md: the base's training section, what was refitted, and the new evaluation."""
    from training.classify.interpret import evaluation_section

    training = ""
    if (base / "report.md").is_file():
        training = (base / "report.md").read_text().split("\n## Evaluation", 1)[0].rstrip()
    cells = ", ".join(f"{k} {v}" for k, v in summary["other_lab_cells"].items())
    candidates = "; ".join(f"{c['weight']}: {c['forgetting']:+.4f}" for c in summary["candidates"])
    lines = [
        training,
        "",
        "## Last layer refitted with other laboratories' red cells",
        "",
        f"`python -m training learn-other-labs` (training/adapt/other_labs.py): the base's "
        f"last layer refitted on {summary['chula_training_cells']} Chula training crops "
        f"(weighed by class as trained) and other laboratories' red cells taught as normal "
        f"({cells}), pulled toward the base weights (l2 {summary['pull']}). The weight of the "
        f"other laboratories' cells, {summary['weight']}, is the heaviest whose fit loses at most "
        f"{MAX_FORGETTING} of the replayed validation cells (weight: loss {candidates}). The "
        "body, and so the training figures above, are the base's.",
        "",
    ]
    for res in results:
        lines += evaluation_section(res)
    (staging / "report.md").write_text("\n".join(lines))
