"""On other laboratories' real fields, what does a label-free colour map per laboratory change?

    .venv/bin/python research/lab_colour_map_txl.py --data /tmp/chula-crops \
        --out research/results/adapt/lab-colour-map-txl.json

research/lab_wide_shift_probe.py measured, on simulated laboratories, a label-free correction:
the laboratory's CIELAB cell and background statistics, measured on its unlabelled fields, mapped
to Chula's by one Reinhard map. Its simulated shift is itself a Reinhard map; here the shifts are
real. txl-pbc's three sources (bccd, bcd, raabin) have no morphology labels, but their fields
are routine smears, most of whose red cells are normal: the share of red cells the shipped model
calls normal, calls abnormal without a review flag, and flags, is the figure a clinic of
healthy donors sees (issue 27: 43 % normal on one such laboratory, >= 60 % wanted without
review). For each source the map is estimated on its train fields and measured on its test
fields, which are used for nothing else; nothing is chosen on them.

Each test field goes through the service's own path (`core.smear.analysis.analyze_smear` with
the learned detector, the scale estimated from the field's red cells, as `POST /analyze/smear`
without microns_per_pixel), before and after the map; the figures are over the counted red
cells, with the share of fields judged unfamiliar.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.bench_shift import FIELDS_PER_SOURCE, STATS_SEED, recolour  # noqa: E402
from core.classify.predictor import Predictor  # noqa: E402
from core.detect.learned import CellDetector  # noqa: E402
from core.smear.analysis import analyze_smear  # noqa: E402
from research.crops import fields_of  # noqa: E402
from research.lab_wide_shift_probe import chula_field_stats, field_stats  # noqa: E402


def read(txl: Path, rel: str) -> np.ndarray:
    with Image.open(txl / rel) as opened:
        return np.asarray(opened.convert("RGB"))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--txl", type=Path, default=ROOT.parent / "shared/datasets/txl-pbc")
    parser.add_argument("--chula", type=Path, default=ROOT.parent / "shared/datasets/chula-rbc-12")
    parser.add_argument(
        "--data",
        type=Path,
        required=True,
        help="an import-chula crop set (which Chula fields are train)",
    )
    parser.add_argument("--model", type=Path, default=ROOT / "models" / "default")
    parser.add_argument("--detector", type=Path, default=ROOT / "models" / "detector")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    started = time.time()
    predictor = Predictor.load(args.model, device="cpu")
    manifest = pd.read_csv(args.data / "manifest.csv")
    rng = np.random.default_rng(STATS_SEED)
    chula = chula_field_stats(manifest, args.chula, FIELDS_PER_SOURCE, rng)
    detector = CellDetector.load(args.detector)

    def figures(fields: list[np.ndarray]) -> dict[str, object]:
        predictions, unfamiliar = [], 0
        for rgb in fields:
            result = analyze_smear(Image.fromarray(rgb), predictor, None, detector=detector).result
            predictions += result.counted
            unfamiliar += bool(result.familiarity.unfamiliar)
        normal = np.asarray([p.label == "normal" for p in predictions])
        flagged = np.asarray([p.needs_review for p in predictions])
        return {
            "red_cells": len(predictions),
            "normal": round(float(normal.mean()), 3),
            "normal_unflagged": round(float((normal & ~flagged).mean()), 3),
            "abnormal_unflagged": round(float((~normal & ~flagged).mean()), 3),
            "flagged": round(float(flagged.mean()), 3),
            "called": dict(Counter(p.label for p in predictions).most_common()),
            "fields_unfamiliar": f"{unfamiliar} of {len(fields)}",
        }

    rows = []
    for source in ("bccd", "bcd", "raabin"):
        train = fields_of(args.txl, source, "train")
        picked = sorted(
            rng.choice(train, size=min(FIELDS_PER_SOURCE, len(train)), replace=False).tolist()
        )
        lab = field_stats([read(args.txl, rel) for rel in picked])
        before = [read(args.txl, rel) for rel in fields_of(args.txl, source, "test")]
        after = [np.asarray(recolour(Image.fromarray(rgb), chula, own=lab)) for rgb in before]
        row = {
            "source": source,
            "test_fields": len(before),
            "shipped": figures(before),
            "colour_mapped": figures(after),
            "lab_stats": lab.__dict__,
        }
        rows.append(row)
        print(json.dumps({k: v for k, v in row.items() if k != "lab_stats"}), flush=True)
    result = {
        "command": " ".join(sys.argv),
        "chula_stats": chula.__dict__,
        "rows": rows,
        "seconds": round(time.time() - started, 1),
    }
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
