"""Would a higher review threshold for the cells called normal cut the abnormal cells the shipped
model passes as normal without a flag, and at what cost in review work?

    .venv/bin/python research/normal_threshold_probe.py --data /tmp/chula-crops \
        [--model models/default] [--out research/results/classification/normal-threshold.json]

The model shipped since stop 38 calls more cells normal than the one before, and more of the
abnormal cells too: without a flag, 1.5 % of Chula's abnormal test crops (0.9 % before) and 2-3 %
in another laboratory's stain. A cell is flagged when its calibrated confidence is under the
review threshold or it is unlike the training cells. Here a cell called normal is flagged under a
threshold of its own, `t_normal` (never under the model's); the other classes keep the model's.
Measured on Chula's validation and test crops, as taken and recoloured to each txl-pbc source's
stain by one laboratory-wide map (bench/bench_shift.py's `recolour(..., own=...)`):
- `missed`: of the abnormal crops, the share called normal without a flag;
- `normal_flagged`: of the normal crops, the share flagged (review work);
- `unflagged`: of all crops, the share not flagged.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.bench_shift import FIELDS_PER_SOURCE, STATS_SEED, ColourStats, colour_stats, recolour  # noqa: E402
from core.classify.calibration import Calibration, calibrated_probabilities  # noqa: E402
from research.crops import load_crops  # noqa: E402
from research.lab_wide_shift_probe import chula_field_stats  # noqa: E402
from research.probe_fields import command_line, write_result  # noqa: E402

SOURCES = ("raabin", "bccd", "bcd")
T_NORMAL = (0.90, 0.93, 0.95, 0.97)
NORMAL = "normal"


def figures(
    logits: np.ndarray,
    distances: np.ndarray,
    truth: np.ndarray,
    calibration: Calibration,
    normal: int,
    t_normal: float,
) -> dict[str, float]:
    """The crops' figures when a cell called normal needs `t_normal` (at least the model's
    threshold) to pass unflagged."""
    probs = calibrated_probabilities(logits, calibration.temperature)
    called, confidence = probs.argmax(1), probs.max(1)
    needed = np.where(
        called == normal, max(t_normal, calibration.review_threshold), calibration.review_threshold
    )
    flagged = (confidence < needed) | (distances > calibration.cell_threshold)
    abnormal = truth != normal
    return {
        "missed": round(float(((called == normal) & ~flagged)[abnormal].mean()), 4),
        "normal_flagged": round(float(flagged[~abnormal].mean()), 4),
        "unflagged": round(float((~flagged).mean()), 4),
        "accuracy": round(float((called == truth).mean()), 4),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, required=True, help="an import-chula crop set")
    parser.add_argument("--model", type=Path, default=ROOT / "models" / "default")
    parser.add_argument("--chula", type=Path, default=ROOT.parent / "shared/datasets/chula-rbc-12")
    parser.add_argument("--txl", type=Path, default=ROOT.parent / "shared/datasets/txl-pbc")
    parser.add_argument("--colour-stats", type=Path, default=Path("/tmp/rbc-colour-stats.json"))
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    from core.classify.predictor import Predictor
    from training.classify.calibrate import model_crops

    started = time.perf_counter()
    predictor = Predictor.load(args.model, device="cpu", tta_views=1)
    calibration = predictor.calibration
    if calibration is None or calibration.familiarity is None:
        raise SystemExit(f"{args.model} is not calibrated")
    classes = list(predictor.classes)
    normal = classes.index(NORMAL)
    rows = model_crops(args.data, classes)
    manifest = pd.read_csv(args.data / "manifest.csv")
    own = chula_field_stats(
        manifest, args.chula, FIELDS_PER_SOURCE, np.random.default_rng(STATS_SEED)
    )
    stats, _, _ = colour_stats(args.txl, args.colour_stats, FIELDS_PER_SOURCE, STATS_SEED, False)
    result: dict[str, Any] = {
        "command": command_line("research/normal_threshold_probe.py", argv),
        "model": str(args.model),
        "review_threshold": calibration.review_threshold,
        "t_normal": list(T_NORMAL),
    }
    for split in ("valid", "test"):
        part = rows[rows.split == split]
        truth = part.target.to_numpy(dtype=np.int64)
        images = load_crops(args.data, part.path)
        stains = {"clean": images} | {
            s: [recolour(i, ColourStats.from_dict(stats[s]["stats"]), own=own) for i in images]
            for s in SOURCES
        }
        for stain, crops in stains.items():
            logits, feats = predictor.raw_outputs(predictor.preprocess.batch(crops), 1)
            distances = calibration.familiarity.distance(feats)
            rows_out = {
                "model": figures(logits, distances, truth, calibration, normal, 0.0),
                **{
                    str(t): figures(logits, distances, truth, calibration, normal, t)
                    for t in T_NORMAL
                },
            }
            result[f"{split}/{stain}"] = rows_out
            print(split, stain, rows_out, flush=True)
    result["seconds"] = round(time.perf_counter() - started, 1)
    if args.out:
        write_result(args.out, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
