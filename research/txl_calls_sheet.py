"""What does the shipped classifier see in other laboratories' red cells, and call them?

    .venv/bin/python research/txl_calls_sheet.py \
        --out research/results/classification/txl-calls-sheet.jpg

On txl-pbc's routine smears the shipped model calls only 11-38 % of the red cells normal
(research/lab_colour_map_txl.py), where most are expected to be. This draws, for each source's
test fields sent through the service's own path (learned detector, scale estimated, as `POST
/analyze/smear` without microns_per_pixel), the crops as the classifier saw them: one block per
source, one row per class called (most called first), up to --per-row crops a row, each with its
confidence; and one row of Chula's own test crops called normal, for comparison. Writes the
sheet and a JSON of the counts beside it. A picture to look at, not a figure to tune on.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image, ImageDraw

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from core.classify.predictor import Predictor  # noqa: E402
from core.detect.learned import CellDetector  # noqa: E402
from core.smear.analysis import analyze_smear  # noqa: E402

TILE = 72
LABEL_W = 130
SOURCES = ("bccd", "bcd", "raabin")


def row_image(title: str, crops: list[tuple[Image.Image, str]], per_row: int) -> Image.Image:
    row = Image.new("RGB", (LABEL_W + per_row * TILE, TILE + 12), "white")
    draw = ImageDraw.Draw(row)
    draw.text((4, TILE // 2), title, fill="black")
    for i, (crop, caption) in enumerate(crops[:per_row]):
        row.paste(crop.resize((TILE, TILE)), (LABEL_W + i * TILE, 0))
        draw.text((LABEL_W + i * TILE + 2, TILE), caption, fill="black")
    return row


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--txl", type=Path, default=ROOT.parent / "shared/datasets/txl-pbc")
    parser.add_argument("--model", type=Path, default=ROOT / "models" / "default")
    parser.add_argument("--detector", type=Path, default=ROOT / "models" / "detector")
    parser.add_argument("--data", type=Path, help="an import-chula crop set: a row of its normals")
    parser.add_argument("--per-row", type=int, default=12)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    predictor = Predictor.load(args.model, device="cpu")
    detector = CellDetector.load(args.detector)
    table = pd.read_csv(args.txl / "sources.csv", dtype=str)
    rng = np.random.default_rng(0)
    rows: list[Image.Image] = []
    counts: dict[str, dict[str, int]] = {}
    for source in SOURCES:
        called: dict[str, list[tuple[Image.Image, str]]] = defaultdict(list)
        names = sorted(table[(table.source == source) & (table.split == "test")].image)
        for rel in names:
            with Image.open(args.txl / rel) as opened:
                field = opened.convert("RGB")
            analysed = analyze_smear(field, predictor, None, detector=detector, keep_crops=True)
            for cell in analysed.result.counted:
                crop = analysed.crops.get(cell.id)
                if crop is not None:
                    called[cell.label].append((crop, f"{cell.confidence:.2f}"))
        counts[source] = dict(Counter({k: len(v) for k, v in called.items()}).most_common())
        rows.append(row_image(f"{source} ({sum(counts[source].values())} cells)", [], 0))
        for label, _ in Counter({k: len(v) for k, v in called.items()}).most_common():
            picks = called[label]
            order = rng.permutation(len(picks))[: args.per_row]
            rows.append(row_image(f"{label} {len(picks)}", [picks[i] for i in order], args.per_row))
    if args.data is not None:
        manifest = pd.read_csv(args.data / "manifest.csv")
        normals = manifest[(manifest.split == "test") & (manifest.label == "normal")]
        sample = normals.sample(n=args.per_row, random_state=0)
        crops = []
        for rel in sample.path:
            with Image.open(args.data / rel) as opened:
                crops.append((opened.convert("RGB"), "label"))
        rows.append(row_image("Chula, normal", [], 0))
        rows.append(row_image("labelled normal", crops, args.per_row))
    width = max(r.width for r in rows)
    sheet = Image.new("RGB", (width, sum(r.height for r in rows)), "white")
    y = 0
    for r in rows:
        sheet.paste(r, (0, y))
        y += r.height
    args.out.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(args.out, quality=90)
    args.out.with_suffix(".json").write_text(
        json.dumps({"command": " ".join(sys.argv), "called": counts}, indent=2) + "\n"
    )
    print(json.dumps(counts))
    return 0


if __name__ == "__main__":
    sys.exit(main())
