"""What test-time augmentation and ensembling add to exported models, on an imported data set.

For every model and split it computes the probabilities of all 8 square symmetries of each crop
once (core/classify/tta.py), then scores 1, 2, 4 and 8 views, and the mean of all the models'
probabilities
(an ensemble) at each view count. Choose on "valid"; "test" is only reported.

    .venv/bin/python research/tta_ensemble.py --data data/chula models/default [runs/x/model ...]

The last stdout line is one JSON object: {model or "ensemble": {split: {views: {accuracy,
macro_f1}}}}. --save-probs DIR also writes each model's (8, N, classes) probabilities as .npy.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from core.classify.predictor import Predictor
from core.classify.preprocess import Preprocessor
from core.classify.tta import TTA_VIEWS, dihedral_view, view_indices
from training.classify.evaluate import classification_metrics


def all_view_probs(predictor: Predictor, batch: np.ndarray) -> np.ndarray:
    """(8, N, classes) softmax probabilities, one slice per symmetry of the square."""
    return np.stack([predictor.forward(dihedral_view(batch, i), tta_views=1) for i in range(8)])


def scores(probs: np.ndarray, targets: np.ndarray, classes: list[str]) -> dict[str, dict]:
    out = {}
    for views in TTA_VIEWS:
        mean = probs[view_indices(views)].mean(axis=0)
        m = classification_metrics(targets, mean.argmax(axis=1), classes)
        out[str(views)] = {"accuracy": round(m["accuracy"], 4), "macro_f1": round(m["macro_f1"], 4)}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("models", nargs="+", type=Path, help="exported model folders")
    parser.add_argument("--data", type=Path, required=True, help="import-chula output (manifest)")
    parser.add_argument("--splits", nargs="+", default=["valid", "test"])
    parser.add_argument("--device", default="auto")
    parser.add_argument("--save-probs", type=Path, help="folder for the probabilities (.npy)")
    args = parser.parse_args()

    manifest = pd.read_csv(args.data / "manifest.csv")
    predictors = [Predictor.load(m, device=args.device, batch_size=256) for m in args.models]
    classes = predictors[0].classes
    if any(p.classes != classes for p in predictors):
        sys.exit("the models do not share one class list; an ensemble needs the same classes")
    names = [f"{m.parent.name}/{m.name}" if m.name == "model" else m.name for m in args.models]
    result: dict[str, dict] = {name: {} for name in [*names, "ensemble"]}
    for split in args.splits:
        items = manifest[(manifest["split"] == split) & manifest["label"].isin(classes)]
        targets = items["label"].map({c: i for i, c in enumerate(classes)}).to_numpy()
        per_model = []
        batches: dict[Preprocessor, np.ndarray] = {}  # read the crops once per input size
        for name, predictor in zip(names, predictors, strict=True):
            started = time.perf_counter()
            pre = predictor.preprocess
            if pre not in batches:
                batches[pre] = np.stack(
                    [pre(Image.open(args.data / p).convert("RGB")) for p in items.path]
                )
            batch = batches[pre]
            probs = all_view_probs(predictor, batch)
            per_model.append(probs)
            result[name][split] = scores(probs, targets, classes)
            took = time.perf_counter() - started
            print(f"{name} {split} n={len(items)} ({took:.0f} s): {result[name][split]}")
            if args.save_probs:
                args.save_probs.mkdir(parents=True, exist_ok=True)
                stem = name.replace("/", "__")
                np.save(args.save_probs / f"{stem}.{split}.npy", probs)
                np.save(args.save_probs / f"targets.{split}.npy", targets)
        if len(per_model) > 1:
            result["ensemble"][split] = scores(np.mean(per_model, axis=0), targets, classes)
            print(f"ensemble {split}: {result['ensemble'][split]}", flush=True)
    if len(predictors) == 1:
        del result["ensemble"]
    print(json.dumps(result))


if __name__ == "__main__":
    main()
