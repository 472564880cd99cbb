"""The architecture / method comparison table (issue #3), from finished runs.

    python research/comparison_table.py runs/<run>=configs/<config>.yaml ... \
        [--out docs/comparison.md]

Each argument pairs a run folder with the committed config that produced it, so every row names
the one command that reproduces it. Accuracy and macro-F1 come from the run's model card (the
test split, never used for a choice); losses from its history.csv (the last epoch); training time
from the card; inference cost is measured now, on this machine (bench_models.bench_model).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import pandas as pd
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.bench_models import bench_model
from core.modelcard import ModelCard

COLUMNS = (
    "architecture",
    "method",
    "input",
    "epochs (frozen + unfrozen)",
    "train time",
    "train / valid loss",
    "test accuracy",
    "test macro-F1",
    "ms/cell, batch 1",
    "cells/s, batch 64",
    "command",
)


def row(run: Path, config: Path, repeats: int) -> dict[str, str]:
    card = ModelCard.load(run / "model")
    cfg = card.training_config
    history = pd.read_csv(run / "history.csv")
    last = history.iloc[-1]
    frozen = int((history["stage"] != "unfrozen").sum())
    unfrozen = int((history["stage"] == "unfrozen").sum())
    weights = "scratch" if cfg["weights"] == "random" else cfg["weights"]
    method = cfg["method"] + (" (cached features)" if cfg.get("cache_features") else "")
    speed = bench_model(run / "model", repeats)
    return {
        "architecture": f"{card.architecture} ({weights})",
        "method": method,
        "input": f"{card.input_size} px",
        "epochs (frozen + unfrozen)": f"{frozen} + {unfrozen}",
        "train time": f"{float(cfg['train_seconds']) / 60:.0f} min",
        "train / valid loss": f"{last['train_loss']:.3f} / {last['valid_loss']:.3f}",
        "test accuracy": f"{card.metrics['accuracy']:.3f}",
        "test macro-F1": f"{card.metrics['macro_f1']:.3f}",
        "ms/cell, batch 1": f"{speed['ms_per_cell_batch1']}",
        "cells/s, batch 64": f"{speed['cells_per_s_batch64']}",
        "command": f"`python -m training {cfg['method']} --config {config} --data data/chula`",
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("pairs", nargs="+", help="RUN_DIR=CONFIG_FILE")
    parser.add_argument("--repeats", type=int, default=50)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, help="write the Markdown table here too")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    rows = []
    for pair in args.pairs:
        run, _, config = pair.partition("=")
        if not config:
            parser.error(f"{pair!r}: expected RUN_DIR=CONFIG_FILE")
        rows.append(row(Path(run), Path(config), args.repeats))
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(r[c] for c in COLUMNS) + " |" for r in rows]
    table = "\n".join(lines)
    print(table)
    if args.out:
        args.out.write_text(table + "\n")
        args.out.with_suffix(".json").write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
