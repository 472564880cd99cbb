"""Label-free adaptation at the last layer: does aligning a laboratory's features with the
training cells' win back what a stain shift costs (issue 27's label-free target: >= 30 %)?

    .venv/bin/python research/feature_alignment_probe.py --data /tmp/chula-crops \
        --out research/results/adapt/feature-alignment.json

The last layer reads 512 features; a stain the network never saw moves them. From a
laboratory's unreviewed cells (no label), each method maps its features back toward the training
cells' before the unchanged last layer:
- `mean`: shift by (training mean - laboratory mean);
- `scale`: and divide each feature's spread by the laboratory's, times the training cells'
  (AdaBN at the last layer);
- `coral`: whiten with the laboratory's covariance, recolour with the training cells' (CORAL,
  Sun et al. 2016), shrunk toward the diagonal.
The training statistics come from the shipped model's replay set (models/default/replay.npz:
250 training cells of every class, so a class-balanced mix) or, with `--reference train`, from
Chula's training crops in their own mix (the laboratory in this simulation has Chula's mix, so
that reference flatters every method: a real laboratory's mix differs).

The laboratory is simulated as in bench/bench_adapt.py: Chula's test smears recoloured to a
txl-pbc source's stain (bench/bench_shift.py), split in two by smear (seeded): the first half's
cells are its unlabelled pool, the methods are measured on the second half. Figures per source:
accuracy clean, shifted, and shifted then aligned; `recovered` = (aligned - shifted) /
(clean - shifted); and `chula_change`, the same map applied to clean Chula test cells, as if
the laboratory's statistics had been Chula's (a label-free method must also do no harm there).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.bench_shift import FIELDS_PER_SOURCE, STATS_SEED, ColourStats, colour_stats, recolour  # noqa: E402
from core.classify.predictor import Predictor  # noqa: E402

Align = Callable[[np.ndarray], np.ndarray]
METHODS = ("mean", "scale", "coral")


def features(predictor: Predictor, images: list[Image.Image]) -> np.ndarray:
    out = []
    for start in range(0, len(images), 256):
        batch = predictor.preprocess.batch(images[start : start + 256])
        out.append(predictor.outputs(batch, 1)[1])
    return np.concatenate(out)


def fit_align(method: str, lab: np.ndarray, ref: np.ndarray, shrink: float = 0.1) -> Align:
    """The map of `method` from the laboratory's features `lab` to the reference `ref`."""
    mu_lab, mu_ref = lab.mean(0), ref.mean(0)
    if method == "mean":
        return lambda f: f - mu_lab + mu_ref
    if method == "scale":
        sd_lab, sd_ref = lab.std(0) + 1e-6, ref.std(0) + 1e-6
        return lambda f: (f - mu_lab) / sd_lab * sd_ref + mu_ref

    def covariance(x: np.ndarray) -> np.ndarray:
        c = np.cov(x, rowvar=False)
        return (1 - shrink) * c + shrink * np.diag(np.diag(c)) + 1e-4 * np.eye(len(c))

    def power(c: np.ndarray, p: float) -> np.ndarray:
        w, v = np.linalg.eigh(c)
        return (v * np.clip(w, 1e-8, None) ** p) @ v.T

    m = power(covariance(lab), -0.5) @ power(covariance(ref), 0.5)
    return lambda f: (f - mu_lab) @ m + mu_ref


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, required=True, help="an import-chula crop set")
    parser.add_argument("--txl", type=Path, default=ROOT.parent / "shared/datasets/txl-pbc")
    parser.add_argument("--model", type=Path, default=ROOT / "models" / "default")
    parser.add_argument("--colour-stats", type=Path, default=Path("/tmp/rbc-colour-stats.json"))
    parser.add_argument("--reference", choices=("replay", "train"), default="replay")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    predictor = Predictor.load(args.model, device="cpu", tta_views=1)
    classes = np.asarray(predictor.classes)
    head = predictor.model[1]
    assert isinstance(head, torch.nn.Sequential)
    last = head[len(head) - 1]
    assert isinstance(last, torch.nn.Linear)
    weight = last.weight.detach().float().numpy()  # (classes, 512): the last layer
    manifest = pd.read_csv(args.data / "manifest.csv")
    manifest = manifest[manifest.label.isin(predictor.classes)]
    test = manifest[manifest.split == "test"]

    def load(rows: pd.DataFrame) -> list[Image.Image]:
        out = []
        for rel in rows.path:
            with Image.open(args.data / rel) as image:
                out.append(image.convert("RGB"))
        return out

    if args.reference == "replay":
        with np.load(args.model / "replay.npz", allow_pickle=False) as replay:
            ref = replay["features"][replay["is_train"]].astype(np.float64)
    else:
        ref = features(predictor, load(manifest[manifest.split == "train"])).astype(np.float64)
    smears = sorted(test.source_image.unique())
    rng = np.random.default_rng(args.seed)
    rng.shuffle(smears)
    pool_rows = test[test.source_image.isin(set(smears[: len(smears) // 2]))]
    measured = test[~test.source_image.isin(set(smears[: len(smears) // 2]))]
    labels = measured.label.to_numpy()
    pool_clean, measured_clean = load(pool_rows), load(measured)
    clean_f = features(predictor, measured_clean).astype(np.float64)
    pool_clean_f = features(predictor, pool_clean).astype(np.float64)

    def accuracy(f: np.ndarray) -> float:
        return round(float((classes[(f @ weight.T).argmax(1)] == labels).mean()), 4)

    clean = accuracy(clean_f)
    rows: list[dict[str, object]] = [{"condition": "clean", "accuracy": clean}]
    sources, _, _ = colour_stats(args.txl, args.colour_stats, FIELDS_PER_SOURCE, STATS_SEED, False)
    for source, entry in sources.items():
        stats = ColourStats.from_dict(entry["stats"])
        pool = features(predictor, [recolour(i, stats) for i in pool_clean]).astype(np.float64)
        shifted_f = features(predictor, [recolour(i, stats) for i in measured_clean])
        shifted = accuracy(shifted_f.astype(np.float64))
        row: dict[str, object] = {"condition": source, "clean": clean, "shifted": shifted}
        for method in METHODS:
            aligned = accuracy(fit_align(method, pool, ref)(shifted_f.astype(np.float64)))
            # The same method on a laboratory that is Chula itself: no harm allowed.
            at_home = accuracy(fit_align(method, pool_clean_f, ref)(clean_f))
            row[method] = {
                "aligned": aligned,
                "recovered": round((aligned - shifted) / (clean - shifted), 2)
                if clean > shifted
                else None,
                "chula_change": round(at_home - clean, 4),
            }
        rows.append(row)
        print(json.dumps(row), flush=True)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        document = {"command": " ".join(sys.argv), "reference": args.reference, "rows": rows}
        args.out.write_text(json.dumps(document, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    torch.set_grad_enabled(False)
    sys.exit(main())
