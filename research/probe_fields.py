"""The fields the probes choose a threshold on (research/nucleus_probe.py, white_cover.py,
focus_probe.py): txl-pbc's own validation and test splits, and a seeded sample of Chula's
fields (which have no split of their own here) halved into "val" and "test"."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

from training.detect.data import load_fields

TXL_SOURCES = ("bccd", "bcd", "raabin")
ROOT = Path(__file__).resolve().parent.parent


def add_field_arguments(ap: argparse.ArgumentParser, chula_per_split: int) -> None:
    """--detector, --yolo, --chula and --chula-fields, as every probe takes them."""
    ap.add_argument("--detector", type=Path, default=ROOT / "models" / "detector")
    ap.add_argument("--yolo", type=Path, default=ROOT.parent / "shared/datasets/txl-pbc")
    ap.add_argument("--chula", type=Path, default=ROOT.parent / "shared/datasets/chula-rbc-12")
    ap.add_argument(
        "--chula-fields", type=int, default=chula_per_split, help="a seeded sample per split"
    )


def probe_fields(
    yolo: Path, chula: Path, chula_per_split: int
) -> tuple[list[tuple[Any, str]], dict[str, float]]:
    """[(field, "val" or "test")] and each source's scale (um per pixel)."""
    fields, scales = load_fields(yolo=[yolo], chula=chula, progress=False)
    chosen: list[tuple[Any, str]] = [
        (f, f.split) for f in fields if f.source in TXL_SOURCES and f.split in ("val", "test")
    ]
    chula_fields = [f for f in fields if f.source == "chula"]
    order = np.random.default_rng(0).permutation(len(chula_fields))[: 2 * chula_per_split]
    chosen += [(chula_fields[i], "val" if k % 2 == 0 else "test") for k, i in enumerate(order)]
    return chosen, scales


def command_line(script: str, argv: list[str] | None) -> str:
    """How a probe was run, as its JSON records it: `script` and its arguments."""
    return " ".join([script, *(sys.argv[1:] if argv is None else argv)])


def write_result(path: Path, result: dict[str, Any]) -> None:
    """A probe's JSON, its folder made if need be."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2) + "\n")
