"""Label-free: re-estimating a laboratory's mix of cells (its class prior) from its own cells.

    .venv/bin/python research/prior_shift_probe.py --data /tmp/chula-crops \
        --out research/results/adapt/prior-shift.json

A clinic of healthy donors sees ~95 % normal cells, Chula's smears 30 %: the classifier's
posteriors carry Chula's mix (and its class weighting). Saerens et al. (2002) re-estimate a new
domain's class prior by EM on the unlabelled posteriors and reweight them, p'(y|x) proportional
to p(y|x) * prior'(y) / prior(y): label-free, per laboratory, a per-class offset of the logits at
no serving cost. It is exact for a pure change of mix, and known to go wrong where the
posteriors themselves are wrong (a stain shift): it then strengthens whatever the model
over-calls. This probe measures both sides:

- simulated laboratories (Chula's test smears, clean or recoloured laboratory-wide to a txl-pbc
  source's stain, bench/bench_shift.py `recolour(..., own=...)`), in three mixes of cells: as
  Chula's smears hold them, a clinic of healthy donors (normal cells and 5 % abnormal ones) and a
  clinic of patients (abnormal cells only). The prior is estimated on the unlabelled crops of
  half the test smears, in that mix, and applied to the other half's, in the same mix: accuracy,
  normal cells called normal, abnormal cells called normal;
- txl-pbc's real fields (no morphology labels; routine smears, most cells expected normal): the
  prior is estimated on each source's train fields' crops (the service's own path, scale
  estimated) and applied to its test fields' crops: the share called normal, and each class's
  share, before and after.

Chula's prior, what the posteriors carry, is their mean on Chula's clean crops of the first half
(in their own mix). Nothing is tuned: EM runs to convergence.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.bench_shift import FIELDS_PER_SOURCE, STATS_SEED, ColourStats, colour_stats, recolour  # noqa: E402
from core.classify.predictor import Predictor  # noqa: E402
from research.crops import load_crops, txl_counted_crops  # noqa: E402
from research.lab_wide_shift_probe import chula_field_stats  # noqa: E402
from research.probe_fields import command_line, write_result  # noqa: E402

NORMAL = "normal"
HEALTHY_ABNORMAL_SHARE = 0.05
SOURCES = ("bccd", "bcd", "raabin")


def em_prior(
    probs: np.ndarray, source_prior: np.ndarray, iterations: int = 200, tol: float = 1e-6
) -> np.ndarray:
    """The class prior of the cells behind `probs` (cells x classes, posteriors under
    `source_prior`), by Saerens' EM."""
    prior = source_prior.copy()
    for _ in range(iterations):
        adjusted = reweighted(probs, source_prior, prior)
        new = adjusted.mean(axis=0)
        if np.abs(new - prior).max() < tol:
            return new
        prior = new
    return prior


def reweighted(probs: np.ndarray, source_prior: np.ndarray, prior: np.ndarray) -> np.ndarray:
    """Posteriors moved from `source_prior` to `prior`."""
    out = probs * (prior / np.maximum(source_prior, 1e-12))[None, :]
    return out / out.sum(axis=1, keepdims=True)


def mix_rows(rows: pd.DataFrame, mix: str, seed: int) -> pd.DataFrame:
    """The cells of `rows` in a mix: "chula" (as they are), "healthy" (every normal cell and
    abnormal ones for 5 % of the total), "patients" (abnormal cells only)."""
    normal = rows[rows.label == NORMAL]
    abnormal = rows[rows.label != NORMAL]
    if mix == "chula":
        return rows
    if mix == "patients":
        return abnormal
    k = round(len(normal) * HEALTHY_ABNORMAL_SHARE / (1 - HEALTHY_ABNORMAL_SHARE))
    return pd.concat([normal, abnormal.sample(n=min(k, len(abnormal)), random_state=seed)])


def figures(probs: np.ndarray, truth: np.ndarray, classes: np.ndarray) -> dict[str, Any]:
    called = classes[probs.argmax(1)]
    normal = truth == NORMAL
    return {
        "accuracy": round(float((called == truth).mean()), 4),
        "normal_called_normal": round(float((called[normal] == NORMAL).mean()), 4)
        if normal.any()
        else None,
        "abnormal_called_normal": round(float((called[~normal] == NORMAL).mean()), 4)
        if (~normal).any()
        else None,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, required=True, help="an import-chula crop set")
    parser.add_argument("--chula", type=Path, default=ROOT.parent / "shared/datasets/chula-rbc-12")
    parser.add_argument("--txl", type=Path, default=ROOT.parent / "shared/datasets/txl-pbc")
    parser.add_argument("--model", type=Path, default=ROOT / "models" / "default")
    parser.add_argument("--detector", type=Path, default=ROOT / "models" / "detector")
    parser.add_argument("--colour-stats", type=Path, default=Path("/tmp/rbc-colour-stats.json"))
    parser.add_argument("--skip-txl", action="store_true")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    started = time.perf_counter()
    predictor = Predictor.load(args.model, device="cpu", tta_views=1)
    classes = np.asarray(predictor.classes)

    def posteriors(images: list[Image.Image]) -> np.ndarray:
        out = [
            predictor.forward(predictor.preprocess.batch(images[s : s + 256]), 1)
            for s in range(0, len(images), 256)
        ]
        return np.concatenate(out) if out else np.empty((0, len(classes)))

    manifest = pd.read_csv(args.data / "manifest.csv")
    test = manifest[(manifest.split == "test") & manifest.label.isin(classes)]
    smears = sorted(test.source_image.unique())
    lab_half = test[test.source_image.isin(smears[0::2])].reset_index(drop=True)
    measured = test[test.source_image.isin(smears[1::2])].reset_index(drop=True)

    lab_images = load_crops(args.data, lab_half.path)
    measured_images = load_crops(args.data, measured.path)
    source_prior = posteriors(lab_images).mean(axis=0)
    print("Chula's prior:", dict(zip(classes, source_prior.round(3), strict=True)), flush=True)
    chula = chula_field_stats(
        manifest, args.chula, FIELDS_PER_SOURCE, np.random.default_rng(STATS_SEED)
    )
    sources, _, _ = colour_stats(args.txl, args.colour_stats, FIELDS_PER_SOURCE, STATS_SEED, False)
    shifts: dict[str, Callable[[Image.Image], Image.Image]] = {"none": lambda image: image}
    for source in SOURCES:
        target = ColourStats.from_dict(sources[source]["stats"])
        shifts[source] = lambda image, t=target: recolour(image, t, own=chula)

    simulated: dict[str, Any] = {}
    for shift, apply in shifts.items():
        lab_probs = posteriors([apply(i) for i in lab_images])
        measured_probs = posteriors([apply(i) for i in measured_images])
        simulated[shift] = {}
        for mix in ("chula", "healthy", "patients"):
            lab_rows = mix_rows(lab_half, mix, 0).index.to_numpy()
            rows = mix_rows(measured, mix, 1).index.to_numpy()
            prior = em_prior(lab_probs[lab_rows], source_prior)
            truth = measured.label.to_numpy()[rows]
            before = figures(measured_probs[rows], truth, classes)
            after = figures(reweighted(measured_probs[rows], source_prior, prior), truth, classes)
            simulated[shift][mix] = {
                "cells": len(rows),
                "estimated_normal_share": round(float(prior[list(classes).index(NORMAL)]), 3),
                "true_normal_share": round(float((truth == NORMAL).mean()), 3),
                "before": before,
                "after": after,
            }
            print(f"{shift} {mix}: {json.dumps(simulated[shift][mix])}", flush=True)

    txl: dict[str, Any] = {}
    if not args.skip_txl:
        from core.detect.learned import CellDetector

        detector = CellDetector.load(args.detector)

        def field_crops(source: str, split: str) -> list[Image.Image]:
            return txl_counted_crops(args.txl, source, split, predictor, detector)

        for source in SOURCES:
            prior = em_prior(posteriors(field_crops(source, "train")), source_prior)
            test_probs = posteriors(field_crops(source, "test"))
            after = reweighted(test_probs, source_prior, prior)
            txl[source] = {
                "cells": len(test_probs),
                "estimated_prior": dict(zip(classes, prior.round(3).tolist(), strict=True)),
                "called_before": share_called(test_probs, classes),
                "called_after": share_called(after, classes),
            }
            print(
                f"txl {source}: normal {txl[source]['called_before'][NORMAL]:.3f} -> "
                f"{txl[source]['called_after'][NORMAL]:.3f}; {json.dumps(txl[source])}",
                flush=True,
            )
    result = {
        "command": command_line("research/prior_shift_probe.py", None),
        "seconds": round(time.perf_counter() - started, 1),
        "chula_prior": dict(zip(classes, source_prior.round(4).tolist(), strict=True)),
        "simulated": simulated,
        "txl": txl,
    }
    if args.out:
        write_result(args.out, result)
    return 0


def share_called(probs: np.ndarray, classes: np.ndarray) -> dict[str, float]:
    called = classes[probs.argmax(1)]
    return {str(c): round(float((called == c).mean()), 4) for c in classes}


if __name__ == "__main__":
    raise SystemExit(main())
