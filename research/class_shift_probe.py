"""With a laboratory's reviews, does moving its features by the difference between its cells and
the training cells of the same class win back a stain shift, whatever its mix of cells?

    .venv/bin/python research/class_shift_probe.py --data /tmp/chula-crops \
        --out research/results/adapt/class-shift.json

The label-free mean shift (research/feature_alignment_probe.py) lost because a laboratory's mean
mixes its stain with its mix of cells. Reviewed cells carry their class, so the stain's
displacement of the 512 features the last layer reads can be measured class by class:

- `shift`: d = sum over the reviewed classes of n_c (mean of the training cells of class c -
  mean of the laboratory's reviewed cells of class c) / sum n_c (classes with at least
  MIN_CLASS_CELLS reviewed cells); every cell's features are moved by d before the unchanged
  last layer. A clinic that reviews only normal cells measures d on its normal cells alone.
- `shift+scale`: and each feature's within-class spread scaled to the training cells'.
- `fit l2=...`: the product's answer today for comparison (training/adapt/head.py: the last
  layer refitted on the reviewed cells with the replayed cells, at each pull strength, the
  laboratory at full weight; no gate).
- `shift, fit l2=...`: the shift, then that fit on the moved features.

The training cells are the shipped model's replay set (250 training cells of every class). The
laboratory is simulated as in bench/bench_adapt.py: Chula's test smears recoloured to a txl-pbc
source's stain, split in two by smear (seeded); the laboratory reviews `--reviewed` cells of the
first half (`random`: as met; `normal`: a clinic of healthy donors, only normal cells), each
method is measured on the second half. A served model moves every cell it sees, so
`chula_change` is the method, as estimated on the laboratory, applied to the clean crops of the
second half (what it would cost on Chula's own smears), and `at_home` the method estimated from
clean reviews (a laboratory with Chula's stain; for the shift alone).
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

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.bench_shift import FIELDS_PER_SOURCE, STATS_SEED, ColourStats, colour_stats, recolour  # noqa: E402
from core.classify.predictor import Predictor  # noqa: E402
from research.crops import load_crops  # noqa: E402
from research.feature_alignment_probe import features  # noqa: E402
from training.adapt.head import fit_last_layer  # noqa: E402
from training.adapt.replay import load_replay  # noqa: E402

MIN_CLASS_CELLS = 10
Move = Callable[[np.ndarray], np.ndarray]


def class_shift(
    lab: np.ndarray, lab_y: np.ndarray, ref: np.ndarray, ref_y: np.ndarray, scale: bool
) -> Move:
    """The move of the laboratory's features onto the training cells', measured class by class
    on the classes it reviewed (weighted by their counts)."""
    classes = [c for c in np.unique(lab_y) if (lab_y == c).sum() >= MIN_CLASS_CELLS]
    if not classes:
        return lambda f: f
    n = np.array([(lab_y == c).sum() for c in classes], dtype=np.float64)
    w = n / n.sum()
    mu_lab = np.stack([lab[lab_y == c].mean(0) for c in classes])
    mu_ref = np.stack([ref[ref_y == c].mean(0) for c in classes])
    centre_lab, centre_ref = w @ mu_lab, w @ mu_ref
    if not scale:
        return lambda f: f - centre_lab + centre_ref
    var_lab = sum(wi * lab[lab_y == c].var(0) for wi, c in zip(w, classes, strict=True))
    var_ref = sum(wi * ref[ref_y == c].var(0) for wi, c in zip(w, classes, strict=True))
    s = np.sqrt((var_ref + 1e-4) / (var_lab + 1e-4))
    return lambda f: (f - centre_lab) * s + centre_ref


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, required=True, help="an import-chula crop set")
    parser.add_argument("--txl", type=Path, default=ROOT.parent / "shared/datasets/txl-pbc")
    parser.add_argument("--model", type=Path, default=ROOT / "models" / "default")
    parser.add_argument("--colour-stats", type=Path, default=Path("/tmp/rbc-colour-stats.json"))
    parser.add_argument("--reviewed", type=int, default=500)
    parser.add_argument("--draws", type=int, default=3, help="review sets drawn per laboratory")
    parser.add_argument("--l2", type=float, nargs="*", default=[0.01, 0.1, 1.0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    predictor = Predictor.load(args.model, device="cpu", tta_views=1)
    classes = list(predictor.classes)
    normal = classes.index("normal")
    head = predictor.model[1]
    assert isinstance(head, torch.nn.Sequential)
    last = head[len(head) - 1]
    assert isinstance(last, torch.nn.Linear)
    weight = last.weight.detach().double()
    replay = load_replay(args.model, predictor.card)
    assert replay is not None, f"{args.model} carries no replay set"
    ref, ref_y = replay.part(train=True)
    ref, ref_y = ref.astype(np.float64), ref_y.astype(np.int64)
    manifest = pd.read_csv(args.data / "manifest.csv")
    test = manifest[(manifest.split == "test") & manifest.label.isin(classes)]

    smears = sorted(test.source_image.unique())
    rng = np.random.default_rng(args.seed)
    rng.shuffle(smears)
    first = set(smears[: len(smears) // 2])
    pool_rows, measured_rows = (
        test[test.source_image.isin(first)],
        test[~test.source_image.isin(first)],
    )
    pool_y = np.array([classes.index(c) for c in pool_rows.label])
    y = np.array([classes.index(c) for c in measured_rows.label])
    pool_clean = load_crops(args.data, pool_rows.path)
    measured_clean = load_crops(args.data, measured_rows.path)
    clean_f = features(predictor, measured_clean).astype(np.float64)
    pool_clean_f = features(predictor, pool_clean).astype(np.float64)

    def figures(w: torch.Tensor, f: np.ndarray) -> dict[str, float]:
        called = (torch.from_numpy(f) @ w.T).argmax(1).numpy()
        is_normal = y == normal
        return {
            "accuracy": round(float((called == y).mean()), 4),
            "normal_called_normal": round(float((called[is_normal] == normal).mean()), 4),
            "abnormal_called_normal": round(float((called[~is_normal] == normal).mean()), 4),
        }

    clean = figures(weight, clean_f)
    rows: list[dict[str, object]] = [{"condition": "clean", **clean}]
    print(json.dumps(rows[0]), flush=True)
    sources, _, _ = colour_stats(args.txl, args.colour_stats, FIELDS_PER_SOURCE, STATS_SEED, False)
    for source, entry in sources.items():
        stats = ColourStats.from_dict(entry["stats"])
        pool_f = features(predictor, [recolour(i, stats) for i in pool_clean]).astype(np.float64)
        shifted_f = features(predictor, [recolour(i, stats) for i in measured_clean]).astype(
            np.float64
        )
        shifted = figures(weight, shifted_f)
        for mode in ("random", "normal"):
            candidates = (
                np.flatnonzero(pool_y == normal) if mode == "normal" else np.arange(len(pool_y))
            )
            for draw in range(args.draws):
                pick = np.random.default_rng(args.seed + 1 + draw).choice(
                    candidates, size=min(args.reviewed, len(candidates)), replace=False
                )
                lab_f, lab_y = pool_f[pick], pool_y[pick]
                home_f = pool_clean_f[pick]
                row: dict[str, object] = {
                    "source": source,
                    "reviews": mode,
                    "draw": draw,
                    "clean": clean,
                    "shifted": shifted,
                }

                def measure(
                    w: torch.Tensor,
                    move: Move,
                    home_move: Move | None,
                    shifted_f: np.ndarray = shifted_f,
                    shifted: dict[str, float] = shifted,
                ) -> dict[str, object]:
                    got = figures(w, move(shifted_f))
                    cost = clean["accuracy"] - shifted["accuracy"]
                    return {
                        **got,
                        "recovered": round((got["accuracy"] - shifted["accuracy"]) / cost, 2)
                        if cost > 0
                        else None,
                        "chula_change": round(
                            figures(w, move(clean_f))["accuracy"] - clean["accuracy"], 4
                        ),
                        "at_home_change": None
                        if home_move is None
                        else round(
                            figures(w, home_move(clean_f))["accuracy"] - clean["accuracy"], 4
                        ),
                    }

                identity: Move = lambda f: f  # noqa: E731
                for scale in (False, True):
                    name = "shift+scale" if scale else "shift"
                    move = class_shift(lab_f, lab_y, ref, ref_y, scale)
                    home = class_shift(home_f, lab_y, ref, ref_y, scale)
                    row[name] = measure(weight, move, home)
                if draw == 0:
                    shift = class_shift(lab_f, lab_y, ref, ref_y, False)
                    for l2 in args.l2:
                        fitted = fit_last_layer(
                            weight.float(), (lab_f, lab_y), (ref, ref_y), l2=l2
                        ).weight.double()
                        row[f"fit l2={l2:g}"] = measure(fitted, identity, None)
                        fitted = fit_last_layer(
                            weight.float(), (shift(lab_f), lab_y), (ref, ref_y), l2=l2
                        ).weight.double()
                        row[f"shift, fit l2={l2:g}"] = measure(fitted, shift, None)
                rows.append(row)
                print(json.dumps(row), flush=True)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        document = {"command": " ".join(sys.argv), "rows": rows}
        args.out.write_text(json.dumps(document, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
