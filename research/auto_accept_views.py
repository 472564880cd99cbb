"""Do more test-time views buy more auto-accepted cells? (issue #12's auto-accept target)

    .venv/bin/python research/auto_accept_views.py [--model models/default] [--views 1 4]

For each view count: the raw logits of the validation and test crops (`Predictor.raw_outputs`,
the service's own path), a temperature fitted on validation, the review threshold chosen on
validation for --target accuracy among cells not flagged (core/classify/calibration.py, as
`python -m training calibrate` does), and on the test crops: accuracy, expected calibration
error, the share of cells not flagged and their accuracy. The cell familiarity flag is applied
as the service does (the model's cell threshold on the views' mean features). Nothing is written
to the model folder.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from core.classify.calibration import (  # noqa: E402
    calibrated_probabilities,
    choose_review_threshold,
    expected_calibration_error,
    fit_temperature,
)
from core.classify.predictor import Predictor  # noqa: E402
from training.classify.calibrate import crop_outputs, model_crops  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", type=Path, default=ROOT / "models" / "default")
    ap.add_argument("--data", type=Path, default=ROOT / "data" / "chula")
    ap.add_argument("--views", type=int, nargs="+", default=[1, 4])
    ap.add_argument("--target", type=float, default=0.97)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument(
        "--out", type=Path, default=ROOT / "docs" / "classification" / "auto-accept-views.json"
    )
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    predictor = Predictor.load(args.model, device="cpu", threads=args.threads)
    calibration = predictor.calibration
    crops = model_crops(args.data, predictor.classes)
    splits = {split: crops[crops["split"] == split] for split in ("valid", "test")}
    results = {}
    for views in args.views:
        started = time.perf_counter()
        outputs = {
            split: crop_outputs(predictor, args.data, list(part["path"]), split, False, views)
            for split, part in splits.items()
        }
        (v_logits, _), (t_logits, t_feats) = outputs["valid"], outputs["test"]
        v_y, t_y = (torch.tensor(splits[k]["target"].to_numpy()) for k in ("valid", "test"))
        temperature = fit_temperature(v_logits, v_y)
        v_conf, v_pred = calibrated_probabilities(v_logits, temperature).max(dim=1)
        threshold = choose_review_threshold(v_conf, v_pred == v_y, args.target)
        t_conf, t_pred = calibrated_probabilities(t_logits, temperature).max(dim=1)
        ok = t_pred == t_y
        unflagged = t_conf >= threshold
        if calibration is not None and calibration.familiarity is not None:
            unflagged &= torch.from_numpy(
                calibration.familiarity.distance(t_feats) <= calibration.cell_threshold
            )
        results[views] = {
            "temperature": round(temperature, 4),
            "review_threshold": round(threshold, 4),
            "test_accuracy": round(float(ok.float().mean()), 4),
            "test_ece": round(expected_calibration_error(t_conf, ok), 4),
            "test_unflagged_share": round(float(unflagged.float().mean()), 4),
            "test_unflagged_accuracy": round(float(ok[unflagged].float().mean()), 4),
            "seconds": round(time.perf_counter() - started, 1),
        }
        print(views, "views:", json.dumps(results[views]), flush=True)
    result = {
        "command": " ".join(
            ["research/auto_accept_views.py", *(sys.argv[1:] if argv is None else argv)]
        ),
        "model": str(args.model),
        "target_accuracy_on_valid": args.target,
        "test_cells": len(splits["test"]),
        "by_views": results,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
