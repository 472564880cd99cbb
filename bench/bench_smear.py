"""Benchmark whole-smear analysis end to end, against classifying the same cells one
`learn.predict` call at a time (the thesis's way), in one run.

    .venv/bin/python bench/bench_smear.py --model models/default \
        --chula ../shared/datasets/chula-rbc-12

For each of --smears smear images (the model card's test smears, 640x480): decode the JPEG, find
the cells, crop, classify (batched), count, grade, draw the overlay — `core.smear.analyze_smear`,
as `POST /analyze/smear` and `python -m app analyze-smear` run it. Then the same crops through
`learn.predict` one by one (the exported fastai learner) on --predict-smears of them. Prints a
table, then one JSON line with every figure. The target of issue #5: under 1 s per 640x480 smear
on 2 CPU cores.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from core.classify.predictor import Predictor
from core.smear.analysis import analyze_smear

ROOT = Path(__file__).resolve().parent.parent

TARGET_S = 1.0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", type=Path, default=ROOT / "models" / "default")
    parser.add_argument("--chula", type=Path, default=ROOT.parent / "shared/datasets/chula-rbc-12")
    parser.add_argument("--smears", type=int, default=20, help="smears timed through the pipeline")
    parser.add_argument("--predict-smears", type=int, default=3, help="smears via learn.predict")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument(
        "--engine", choices=("auto", "onnx", "torch"), default="auto", help="as RBC_ENGINE"
    )
    parser.add_argument(
        "--compare-views",
        type=int,
        nargs="*",
        default=[4],
        help="also time the pipeline with these test-time view counts, on the same smears",
    )
    parser.add_argument(
        "--detector",
        type=Path,
        help="also time the pipeline with this learned detector (core/detect/learned.py) on the "
        "same smears, scale given (0.19) and scale estimated, against the classical segmentation",
    )
    args = parser.parse_args(argv)

    torch.set_num_threads(args.threads)
    predictor = Predictor.load(args.model, device="cpu", threads=args.threads, engine=args.engine)
    stems = [Path(s).stem for s in predictor.card.dataset.get("test_smears", [])]
    paths = [args.chula / "Dataset" / f"{s}.jpg" for s in stems]
    paths = [p for p in paths if p.is_file()][: args.smears]
    if not paths:
        print(f"no test smears of {args.model}'s card found under {args.chula}", file=sys.stderr)
        return 2

    def analyse(path: Path) -> Any:
        with Image.open(path) as opened:
            return analyze_smear(opened.convert("RGB"), predictor).result

    analyse(paths[0])  # warm-up: first-call allocations, lazy imports
    totals, parts, cells = [], [], []
    for path in paths:
        started = time.perf_counter()
        result = analyse(path)
        totals.append(time.perf_counter() - started)
        parts.append(result.timings_ms)
        cells.append(len(result.cells))

    # The same smears again with other test-time view counts (core/classify/tta.py).
    served_views = predictor.tta_views
    by_views: dict[str, dict[str, float]] = {}
    for views in args.compare_views:
        predictor.tta_views = views
        analyse(paths[0])
        view_totals, view_classify = [], []
        for path in paths:
            started = time.perf_counter()
            result = analyse(path)
            view_totals.append(time.perf_counter() - started)
            view_classify.append(result.timings_ms["classify"])
        by_views[str(views)] = {
            "seconds_per_smear_mean": float(np.mean(view_totals)),
            "seconds_per_smear_p50": float(np.percentile(view_totals, 50)),
            "ms_classify_mean": float(np.mean(view_classify)),
        }
    predictor.tta_views = served_views

    # The same smears with the learned detector: scale given, then estimated from the field.
    by_detector: dict[str, dict[str, float]] = {}
    if args.detector is not None:
        from core.detect.learned import CellDetector

        detector = CellDetector.load(args.detector, engine=args.engine)
        for label, scale in (("scale given", 0.19), ("scale estimated", None)):
            with Image.open(paths[0]) as opened:
                analyze_smear(opened.convert("RGB"), predictor, scale, detector=detector)
            det_totals, det_detect, det_cells = [], [], []
            for path in paths:
                with Image.open(path) as opened:
                    image = opened.convert("RGB")
                started = time.perf_counter()
                result = analyze_smear(image, predictor, scale, detector=detector).result
                det_totals.append(time.perf_counter() - started)
                det_detect.append(result.timings_ms["detect"])
                det_cells.append(len(result.cells))
            by_detector[label] = {
                "seconds_per_smear_mean": float(np.mean(det_totals)),
                "seconds_per_smear_p50": float(np.percentile(det_totals, 50)),
                "seconds_per_smear_max": float(np.max(det_totals)),
                "ms_detect_mean": float(np.mean(det_detect)),
                "cells_per_smear_mean": float(np.mean(det_cells)),
            }

    from training.classify.learner import load_exported

    learn, card = load_exported(args.model)
    predict_times, predict_cells = [], []
    for path in paths[: args.predict_smears]:
        with Image.open(path) as opened:
            image = opened.convert("RGB")
        started = time.perf_counter()
        # The same cells, found and cropped the same way; only the classification differs.
        analysed = analyze_smear(image, predictor, keep_crops=True)
        found = time.perf_counter() - started - analysed.result.timings_ms["classify"] / 1000
        crops = list(analysed.crops.values())
        started = time.perf_counter()
        with learn.no_bar(), learn.no_logging():
            for crop in crops:
                learn.predict(np.asarray(crop))
        predict_times.append(found + time.perf_counter() - started)
        predict_cells.append(len(crops))

    mean_total = float(np.mean(totals))
    mean_predict = float(np.mean(predict_times))
    figures = {
        "model": card.name,
        "smears": len(paths),
        "cells_per_smear_mean": float(np.mean(cells)),
        "seconds_per_smear_mean": mean_total,
        "seconds_per_smear_p50": float(np.percentile(totals, 50)),
        "seconds_per_smear_max": float(np.max(totals)),
        "ms_segment_mean": float(np.mean([p["segment"] for p in parts])),
        "ms_classify_mean": float(np.mean([p["classify"] for p in parts])),
        "ms_overlay_mean": float(np.mean([p["overlay"] for p in parts])),
        "learn_predict_smears": len(predict_times),
        "learn_predict_seconds_per_smear_mean": mean_predict,
        "learn_predict_cells_per_smear_mean": float(np.mean(predict_cells)),
        "speedup_vs_learn_predict": mean_predict / mean_total,
        "tta_views": served_views,
        "with_other_views": by_views,
        "learned_detector": by_detector,
        "target_seconds": TARGET_S,
        "meets_target": bool(np.percentile(totals, 50) < TARGET_S),
        "threads": args.threads,
        "cpus": os.cpu_count(),
        "machine": platform.processor() or platform.machine(),
        "torch": torch.__version__,
    }
    f = figures
    rows = [
        ("smears timed (640x480)", f"{len(paths)}, {f['cells_per_smear_mean']:.0f} cells each"),
        (
            "pipeline s/smear mean/p50/max",
            f"{mean_total:.3f} / {f['seconds_per_smear_p50']:.3f} / "
            f"{f['seconds_per_smear_max']:.3f}",
        ),
        (
            "  segment/classify/overlay ms",
            f"{f['ms_segment_mean']:.0f} / {f['ms_classify_mean']:.0f} / "
            f"{f['ms_overlay_mean']:.0f}",
        ),
        ("learn.predict loop s/smear", f"{mean_predict:.3f} ({len(predict_times)} smears)"),
        ("speed-up", f"{f['speedup_vs_learn_predict']:.1f}x"),
        ("target < 1 s/smear (p50)", "pass" if f["meets_target"] else "FAIL"),
    ]
    rows[1:1] = [("test-time views", str(served_views))]
    for views, other in by_views.items():
        rows.append(
            (
                f"with {views} views: s/smear, classify",
                f"{other['seconds_per_smear_mean']:.3f} mean, "
                f"{other['ms_classify_mean']:.0f} ms "
                f"({other['ms_classify_mean'] / f['ms_classify_mean']:.1f}x)",
            )
        )
    for label, other in by_detector.items():
        rows.append(
            (
                f"learned detector, {label}",
                f"{other['seconds_per_smear_mean']:.3f} s mean, p50 "
                f"{other['seconds_per_smear_p50']:.3f}, max {other['seconds_per_smear_max']:.3f}; "
                f"detect {other['ms_detect_mean']:.0f} ms; {other['cells_per_smear_mean']:.0f} "
                "cells",
            )
        )
    for name, value in rows:
        print(f"{name:32s} {value}")
    print(json.dumps(figures))
    return 0


if __name__ == "__main__":
    sys.exit(main())
