"""What one whole-field request costs as the field grows: the measure behind the service's
smear budget (RBC_MAX_SMEAR_PIXELS, RBC_MAX_SMEAR_CELLS).

    .venv/bin/python bench/bench_smear_budget.py --model models/default \
        --chula ../shared/datasets/chula-rbc-12 [--sides 640 1024 1448 2048 2896 4096]

For each side, a square field tiled from real Chula fields (640x480 each, edge to edge) goes
through `core.smear.analyze_smear` as POST /analyze/smear runs it (detection, classification,
overlay), in a fresh process, so that its peak resident memory (ru_maxrss) above the process's
resident memory before the call is the request's own. Prints seconds, cells and memory per side,
then one JSON line with every figure.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def tiled_field(chula: Path, side: int) -> object:
    """A side x side RGB image tiled from consecutive Chula fields."""
    from PIL import Image

    paths = sorted((chula / "Dataset").glob("*.jpg"), key=lambda p: int(p.stem))
    canvas = Image.new("RGB", (side, side))
    index = 0
    for top in range(0, side, 480):
        for left in range(0, side, 640):
            with Image.open(paths[index % len(paths)]) as tile:
                canvas.paste(tile.convert("RGB"), (left, top))
            index += 1
    return canvas


def rss_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def one(model: Path, chula: Path, side: int, threads: int) -> dict[str, float]:
    """Run in a child process: build the field, then analyse it once."""
    import torch

    from core.classify.predictor import Predictor
    from core.smear.analysis import analyze_smear

    torch.set_num_threads(threads)
    predictor = Predictor.load(model, device="cpu", threads=threads)
    warm = tiled_field(chula, 640)
    analyze_smear(warm, predictor)  # first-call allocations, lazy imports
    field = tiled_field(chula, side)
    before = rss_mib()
    peak_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    started = time.perf_counter()
    analysed = analyze_smear(field, predictor, max_working_pixels=side * side)
    seconds = time.perf_counter() - started
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {
        "side": side,
        "megapixels": side * side / 1e6,
        "seconds": seconds,
        "cells": len(analysed.result.cells),
        "rss_before_mib": before,
        "peak_growth_mib": max(0.0, peak - max(before, peak_before)),
        "overlay_mib": len(analysed.overlay_png) / (1 << 20),
        **{f"ms_{k}": v for k, v in analysed.result.timings_ms.items()},
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", type=Path, default=ROOT / "models" / "default")
    parser.add_argument("--chula", type=Path, default=ROOT.parent / "shared/datasets/chula-rbc-12")
    parser.add_argument("--sides", type=int, nargs="+", default=[640, 1024, 1448, 2048, 2896])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--child", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(one(args.model, args.chula, args.child, args.threads)))
        return 0
    rows = []
    print(
        f"{'side':>6} {'MP':>6} {'cells':>6} {'seconds':>8} {'+MiB peak':>10} {'overlay MiB':>12}"
    )
    for side in args.sides:
        out = (
            subprocess.run(
                [
                    sys.executable,
                    __file__,
                    "--model",
                    str(args.model),
                    "--chula",
                    str(args.chula),
                    "--threads",
                    str(args.threads),
                    "--child",
                    str(side),
                ],
                capture_output=True,
                text=True,
                check=True,
                env={**os.environ},
            )
            .stdout.strip()
            .splitlines()[-1]
        )
        row = json.loads(out)
        rows.append(row)
        print(
            f"{side:>6} {row['megapixels']:>6.2f} {row['cells']:>6} {row['seconds']:>8.2f} "
            f"{row['peak_growth_mib']:>10.0f} {row['overlay_mib']:>12.2f}"
        )
    print(json.dumps({"threads": args.threads, "cpus": os.cpu_count(), "rows": rows}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
