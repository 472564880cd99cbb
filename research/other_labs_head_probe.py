"""Without a laboratory's reviews: does the base model's last layer, taught other laboratories'
red cells as normal, call the cells of a laboratory it never saw normal more often?

    .venv/bin/python research/other_labs_head_probe.py --data /tmp/chula-crops \
        --out research/results/adapt/other-labs-head.json

Issue 27 asks that the shipped model, before any review, call >= 60 % of a healthy donor's red
cells normal on a laboratory it never saw (today 43 % on the issue's laboratory; 11-38 % of
txl-pbc's red cells). Every label-free way tried here adapts to the one laboratory at hand; this
asks the other way round: the base itself made to read more than Chula's stain. txl-pbc's red
cells carry no morphology labels, but they are routine smears of mostly normal cells, so they
are taught as "normal" (an assumption: some are not; the same one research/txl_clinic_probe.py
makes for a clinic's reviews). The body stays; the last layer is refitted as adapt refits it
(training/adapt/head.py: cross-entropy on the other laboratories' cells weighed `w` plus the
base model's replayed training cells, pulled toward the base weights), for several `w`.

Leaving a source out: the left-out source's cells teach nothing. bccd and bcd may share slides
(the data set's NOTES.md), so neither teaches the other: raabin is measured after learning from
bccd and bcd; bccd and bcd after learning from raabin alone.

The rule that picks `w` looks at Chula only: the heaviest weight whose fit loses at most
MAX_FORGETTING of the replayed validation cells (adapt's own check). What is measured for each
weight, on the left-out source and on Chula:
- the left-out source's test fields' counted red cells (the service's path, scale estimated):
  the share called normal, and called abnormal without a review flag;
- Chula's labelled test crops (in no fit): accuracy;
- the same crops recoloured to the left-out source's stain (bench/bench_shift.py, laboratory-wide):
  accuracy, normal cells called normal, abnormal cells called normal without a review flag
  (what such a base would hide), and spherocytes' recall and precision.
Review flags use the shipped calibration (temperature, review threshold, cell familiarity: the
body, and so the familiarity distance, is unchanged).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.bench_shift import FIELDS_PER_SOURCE, STATS_SEED, ColourStats, colour_stats, recolour  # noqa: E402
from core.classify.calibration import Calibration, calibrated_probabilities  # noqa: E402
from core.classify.predictor import Predictor  # noqa: E402
from research.crops import load_crops, txl_counted_crops  # noqa: E402
from research.lab_wide_shift_probe import chula_field_stats  # noqa: E402
from research.probe_fields import command_line, write_result  # noqa: E402
from training.adapt.head import fit_last_layer  # noqa: E402
from training.adapt.other_labs import features, heaviest_kept  # noqa: E402
from training.adapt.pipeline import MAX_FORGETTING, _last_layer  # noqa: E402
from training.adapt.replay import load_replay  # noqa: E402
from training.classify.calibrate import model_crops  # noqa: E402
from training.classify.config import load_config  # noqa: E402
from training.classify.engine import class_weights  # noqa: E402

NORMAL = "normal"
SPHEROCYTE = "spherocyte"
# Who teaches whom: bccd and bcd may share slides, so neither teaches the other.
TEACHERS = {"raabin": ("bccd", "bcd"), "bccd": ("raabin",), "bcd": ("raabin",)}
WEIGHTS = (0.0, 0.1, 0.25, 0.5, 1.0, 2.0)
PULL = 0.01  # adapt's weakest pull toward the base weights (training/adapt/pipeline.py)


def calls(
    weight: torch.Tensor, feats: np.ndarray, calibration: Calibration
) -> tuple[np.ndarray, np.ndarray]:
    """Each cell's class index and whether the service would flag it for review (low calibrated
    confidence, or unlike the training cells)."""
    logits = (torch.as_tensor(feats) @ weight.T).numpy()
    probs = calibrated_probabilities(logits, calibration.temperature)
    flagged = probs.max(axis=1) < calibration.review_threshold
    if calibration.familiarity is not None:
        flagged |= calibration.familiarity.distance(feats) > calibration.cell_threshold
    return probs.argmax(axis=1), flagged


def field_figures(
    weight: torch.Tensor, feats: np.ndarray, calibration: Calibration, classes: list[str]
) -> dict[str, float]:
    """Of a source's counted red cells: called normal, called abnormal without a flag, and
    called spherocyte (what would lower a spherocyte count's precision)."""
    normal, sphero = classes.index(NORMAL), classes.index(SPHEROCYTE)
    pred, flagged = calls(weight, feats, calibration)
    return {
        "called_normal": round(float((pred == normal).mean()), 4),
        "abnormal_unflagged": round(float(((pred != normal) & ~flagged).mean()), 4),
        "called_spherocyte": round(float((pred == sphero).mean()), 4),
    }


def crop_figures(
    weight: torch.Tensor,
    feats: np.ndarray,
    truth: np.ndarray,
    calibration: Calibration,
    classes: list[str],
) -> dict[str, float | None]:
    """Of Chula's labelled crops: accuracy, normal called normal, abnormal called normal without
    a flag, spherocytes' recall and precision."""
    normal, sphero = classes.index(NORMAL), classes.index(SPHEROCYTE)
    pred, flagged = calls(weight, feats, calibration)
    is_normal = truth == normal
    called_sphero = pred == sphero
    return {
        "accuracy": round(float((pred == truth).mean()), 4),
        "normal_called_normal": round(float((pred[is_normal] == normal).mean()), 4),
        "abnormal_called_normal_unflagged": round(
            float(((pred[~is_normal] == normal) & ~flagged[~is_normal]).mean()), 4
        ),
        "spherocyte_recall": round(float((pred[truth == sphero] == sphero).mean()), 4),
        "spherocyte_precision": round(float((truth[called_sphero] == sphero).mean()), 4)
        if called_sphero.any()
        else None,
    }


def choose(candidates: list[dict[str, Any]]) -> float | None:
    """The heaviest weight whose fit forgets at most MAX_FORGETTING of the replayed validation
    cells (learn-other-labs' own rule); None when none does (the base layer stays)."""
    return heaviest_kept([(c["weight"], c["forgetting"]) for c in candidates])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, required=True, help="an import-chula crop set")
    parser.add_argument("--chula", type=Path, default=ROOT.parent / "shared/datasets/chula-rbc-12")
    parser.add_argument("--txl", type=Path, default=ROOT.parent / "shared/datasets/txl-pbc")
    parser.add_argument("--model", type=Path, default=ROOT / "models" / "default")
    parser.add_argument("--detector", type=Path, default=ROOT / "models" / "detector")
    parser.add_argument("--colour-stats", type=Path, default=Path("/tmp/rbc-colour-stats.json"))
    parser.add_argument(
        "--cache", type=Path, help="an .npz of the txl-pbc cells' features, reused when present"
    )
    parser.add_argument("--weights", default=",".join(str(w) for w in WEIGHTS))
    parser.add_argument(
        "--anchor",
        choices=("replay", "train"),
        default="train",
        help="Chula's cells the fit keeps: the model's replay set (adapt's, 250 a class), or "
        "every training crop, weighed by class as the recipe trained it",
    )
    parser.add_argument("--pull", type=float, default=PULL, help="l2 toward the base weights")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    started = time.perf_counter()
    weights = [float(w) for w in args.weights.split(",")]

    predictor = Predictor.load(args.model, device="cpu", tta_views=1)
    classes = list(predictor.classes)
    normal = classes.index(NORMAL)
    calibration = predictor.calibration
    base = _last_layer(predictor.model).weight.detach().float().cpu()
    replay = load_replay(args.model, predictor.card)
    if replay is None or calibration is None:
        raise SystemExit(f"{args.model} carries no replay set or no calibration")
    replay_train, replay_valid = replay.part(True), replay.part(False)

    txl: dict[str, np.ndarray] = {}
    if args.cache and args.cache.is_file():
        with np.load(args.cache) as npz:
            txl = {k: npz[k] for k in npz.files}
        print(f"txl-pbc features from {args.cache}", flush=True)
    else:
        from core.detect.learned import CellDetector

        detector = CellDetector.load(args.detector)
        for source in TEACHERS:
            for split in ("train", "test"):
                crops = txl_counted_crops(args.txl, source, split, predictor, detector)
                txl[f"{source}/{split}"] = features(predictor, crops)
                print(f"{source} {split}: {len(crops)} counted red cells", flush=True)

    rows = model_crops(args.data, classes)
    test = rows[rows.split == "test"].reset_index(drop=True)
    truth = test.target.to_numpy(dtype=np.int64)
    if "chula/clean" not in txl:
        images = load_crops(args.data, test.path)
        txl["chula/clean"] = features(predictor, images)
        manifest = pd.read_csv(args.data / "manifest.csv")
        own = chula_field_stats(
            manifest, args.chula, FIELDS_PER_SOURCE, np.random.default_rng(STATS_SEED)
        )
        stats, _, _ = colour_stats(
            args.txl, args.colour_stats, FIELDS_PER_SOURCE, STATS_SEED, False
        )
        for source in TEACHERS:
            target = ColourStats.from_dict(stats[source]["stats"])
            shifted = [recolour(i, target, own=own) for i in images]
            txl[f"chula/{source}"] = features(predictor, shifted)
            print(f"Chula's {len(images)} test crops recoloured to {source}", flush=True)
        if args.cache:
            np.savez(args.cache, **txl)
    anchor_weights = None
    if args.anchor == "train":
        train = rows[rows.split == "train"].reset_index(drop=True)
        if "chula_train/features" not in txl:
            txl["chula_train/features"] = features(predictor, load_crops(args.data, train.path))
            print(f"Chula's {len(train)} training crops", flush=True)
            if args.cache:
                np.savez(args.cache, **txl)
        replay_train = (txl["chula_train/features"], train.target.to_numpy(dtype=np.int64))
        anchor_weights = class_weights(
            load_config(args.model / "config.yaml", {}), classes, train.label
        )
    chula_feats = {k.split("/")[1]: v for k, v in txl.items() if k.startswith("chula/")}

    def valid_accuracy(weight: torch.Tensor) -> float:
        pred = (torch.as_tensor(replay_valid[0]) @ weight.T).argmax(1).numpy()
        return float((pred == replay_valid[1]).mean())

    def measure(weight: torch.Tensor, left_out: str) -> dict[str, Any]:
        return {
            "left_out_test_fields": field_figures(
                weight, txl[f"{left_out}/test"], calibration, classes
            ),
            "chula_test": crop_figures(weight, chula_feats["clean"], truth, calibration, classes),
            "chula_test_in_left_out_stain": crop_figures(
                weight, chula_feats[left_out], truth, calibration, classes
            ),
        }

    base_valid = valid_accuracy(base)
    legs: dict[str, Any] = {}
    for left_out, teachers in TEACHERS.items():
        lab_x = np.concatenate([txl[f"{t}/train"] for t in teachers])
        lab_y = np.full(len(lab_x), normal, dtype=np.int64)
        candidates = []
        for w in weights:
            fit = fit_last_layer(
                base,
                (lab_x, lab_y),
                replay_train,
                lab_weight=w,
                l2=args.pull,
                replay_class_weights=anchor_weights,
            )
            forgetting = base_valid - valid_accuracy(fit.weight)
            candidate = {
                "weight": w,
                "forgetting": round(forgetting, 4),
                **measure(fit.weight, left_out),
            }
            candidate["teachers_test_fields"] = {
                t: field_figures(fit.weight, txl[f"{t}/test"], calibration, classes)
                for t in teachers
            }
            candidates.append(candidate)
            print(f"{left_out} <- {'+'.join(teachers)} w={w}: {json.dumps(candidate)}", flush=True)
        legs[left_out] = {
            "teachers": list(teachers),
            "teaching_cells": len(lab_x),
            "base": measure(base, left_out),
            "candidates": candidates,
            "chosen_weight": choose(candidates),
        }
        print(
            f"{left_out}: base {json.dumps(legs[left_out]['base'])}; "
            f"chosen w={legs[left_out]['chosen_weight']}",
            flush=True,
        )

    result = {
        "command": command_line("research/other_labs_head_probe.py", None),
        "seconds": round(time.perf_counter() - started, 1),
        "pull": args.pull,
        "anchor": args.anchor,
        "max_forgetting": MAX_FORGETTING,
        "base_replay_valid_accuracy": round(base_valid, 4),
        "txl_cells": {k: len(v) for k, v in txl.items()},
        "legs": legs,
    }
    if args.out:
        write_result(args.out, result)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
