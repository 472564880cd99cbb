"""Inference cost of exported models on this CPU: ms per cell at batch 1, cells/s at batch 64.

    python bench/bench_models.py runs/<run>/model models/<name> ... [--threads 2] [--json OUT]

Each model runs its own input size (from its card) on random normalised input, in eval mode under
torch.inference_mode, after warm-up; figures are medians over repeats. The first model is also
timed through `learn.predict` on one PNG crop, the simplest alternative, so the ratio shows what
the bare forward saves on the same machine in the same run.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from training.classify.learner import load_exported


def _median_seconds(fn, repeats: int) -> float:  # type: ignore[no-untyped-def]
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def bench_model(model_dir: Path, repeats: int) -> dict[str, object]:
    learn, card = load_exported(model_dir)
    model = learn.model.eval()
    size = card.input_size
    one = torch.randn(1, 3, size, size)
    batch = torch.randn(64, 3, size, size)
    with torch.inference_mode():
        for _ in range(3):
            model(one)
        model(batch)
        ms_batch1 = 1000 * _median_seconds(lambda: model(one), repeats)
        s_batch64 = _median_seconds(lambda: model(batch), max(3, repeats // 10))
    return {
        "model": str(model_dir),
        "architecture": card.architecture,
        "input_size": size,
        "ms_per_cell_batch1": round(ms_batch1, 2),
        "cells_per_s_batch64": round(64 / s_batch64, 1),
        "weights_mb": round((model_dir / card.weights_file).stat().st_size / 1e6, 1),
    }


def bench_learn_predict(model_dir: Path, repeats: int) -> float:
    """ms per cell of fastai's `learn.predict` on a PNG file (the thesis's way)."""
    learn, card = load_exported(model_dir)
    side = card.crop_window_px or card.input_size
    pixels = np.random.default_rng(0).integers(0, 255, (side, side, 3), dtype=np.uint8)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "cell.png"
        Image.fromarray(pixels).save(path)
        with learn.no_bar():
            learn.predict(path)
            return 1000 * _median_seconds(lambda: learn.predict(path), repeats)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("models", nargs="+", type=Path)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=50)
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    rows = [bench_model(m, args.repeats) for m in args.models]
    predict_ms = bench_learn_predict(args.models[0], max(5, args.repeats // 5))
    print(f"torch threads: {torch.get_num_threads()}")
    header = ("model", "arch", "size", "ms/cell b1", "cells/s b64", "MB")
    print("{:50s} {:20s} {:>4s} {:>10s} {:>11s} {:>6s}".format(*header))
    for r in rows:
        print(
            "{:50s} {:20s} {:>4} {:>10} {:>11} {:>6}".format(
                *(
                    str(r[k])
                    for k in (
                        "model",
                        "architecture",
                        "input_size",
                        "ms_per_cell_batch1",
                        "cells_per_s_batch64",
                        "weights_mb",
                    )
                )
            )
        )
    batch1_ms = float(str(rows[0]["ms_per_cell_batch1"]))
    print(
        f"learn.predict on {rows[0]['model']}: {predict_ms:.1f} ms per cell, "
        f"{predict_ms / batch1_ms:.1f}x the bare forward at batch 1"
    )
    if args.json:
        args.json.write_text(json.dumps({"rows": rows, "learn_predict_ms": predict_ms}, indent=2))


if __name__ == "__main__":
    main()
