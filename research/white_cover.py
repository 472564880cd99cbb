"""Should a red cell lying on a white cell be set aside? Measured, and not done (issue #11).

    .venv/bin/python research/white_cover.py --detector models/detector [--chula-fields 60] \
        [--out research/results/detection/white-cover.json]

A smear is read where cells do not overlap: a red cell lying on a white cell has the white
cell's cytoplasm in its crop, and a piece of a white cell that the network took for a red cell
lies there too. This runs a detector (with its nucleus check) on txl-pbc's validation and test
fields and on a seeded sample of Chula fields (halved into "val" and "test"), each source's
scale given, and measures for every counted red detection the share of its ellipse under a
detected white cell's ellipse (`white_cell_cover`). Detections
are sorted as in white_as_red.py: red (matched to a labelled red cell), white (unmatched, its
centre in a labelled white cell's box: what evaluate-detector charges as a white cell counted
as red) or stray. For each share it reports per source and split how many of each group a rule
"more than that share under a white cell: set aside" would set aside.

A share would be chosen on validation fields only, as the border margin is
(research/border_margin.py): the highest Youden's J, white detections set aside (pooled over the
sources, since they are few) minus matched red cells set aside (the mean of each source's share,
Chula included); ties go to the larger share. On the shipped detector that is 0.1, which sets
aside 3 of the 4 white detections of the validation fields and 6-19 % of the real red cells
(raabin's fields are centred on a white cell): too dear, so the detector does not do it
(docs/detection.md, "Red cells lying on a white cell, measured and not set aside").
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from tqdm import tqdm

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from core.detect.learned import CellDetector  # noqa: E402
from research.probe_fields import (  # noqa: E402
    add_field_arguments,
    command_line,
    probe_fields,
    write_result,
)
from research.white_as_red import red_groups  # noqa: E402
from training.detect.evaluate import POINT_RADIUS_UM  # noqa: E402

SHARES = (0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.8)
SOURCES = ("bccd", "bcd", "raabin")
GROUPS = ("red", "white", "stray")
Box = tuple[float, float, float, float]


def white_cell_cover(box: Box, whites: list[Box]) -> float:
    """The share of the ellipse inscribed in `box` that lies within the ellipse inscribed in any
    of the boxes `whites` (cells are round: a box's corners are not the cell)."""
    if not whites:
        return 0.0
    x0, y0, x1, y1 = box
    n = 16
    u = (np.arange(n) + 0.5) / n * 2 - 1  # sample points across the box, in [-1, 1]
    ux, uy = np.meshgrid(u, u)
    inside = ux**2 + uy**2 <= 1
    px = (x0 + x1) / 2 + ux[inside] * (x1 - x0) / 2
    py = (y0 + y1) / 2 + uy[inside] * (y1 - y0) / 2
    covered = np.zeros(px.shape, dtype=bool)
    for wx0, wy0, wx1, wy1 in whites:
        hw, hh = (wx1 - wx0) / 2, (wy1 - wy0) / 2
        if hw <= 0 or hh <= 0:
            continue
        dx, dy = (px - (wx0 + wx1) / 2) / hw, (py - (wy0 + wy1) / 2) / hh
        covered |= dx * dx + dy * dy <= 1
    return float(covered.mean())


def tally(rows: list[tuple[str, str, str, float]], share: float) -> dict[str, Any]:
    """Per "source:split", per group: [set aside, detections]."""
    out: dict[str, Any] = {}
    for source in (*SOURCES, "chula"):
        for split in ("val", "test"):
            out[f"{source}:{split}"] = {
                group: [
                    sum(1 for r in rows if r[:3] == (source, split, group) and r[3] > share),
                    sum(1 for r in rows if r[:3] == (source, split, group)),
                ]
                for group in GROUPS
            }
    return out


def youden(table: dict[str, Any], split: str) -> float:
    """White detections set aside (pooled over txl-pbc) minus the mean share of matched red cells
    set aside per source (Chula included)."""
    white = [table[f"{s}:{split}"]["white"] for s in SOURCES]
    caught, n = sum(w[0] for w in white), sum(w[1] for w in white)
    tpr = caught / n if n else 0.0
    fprs = [
        table[f"{s}:{split}"]["red"][0] / table[f"{s}:{split}"]["red"][1]
        for s in (*SOURCES, "chula")
        if table[f"{s}:{split}"]["red"][1]
    ]
    return tpr - (float(np.mean(fprs)) if fprs else 0.0)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_field_arguments(ap, chula_per_split=60)
    ap.add_argument("--out", type=Path, default=ROOT / "docs" / "detection" / "white-cover.json")
    args = ap.parse_args(argv)
    started = time.perf_counter()
    detector = CellDetector.load(args.detector)
    chosen, scales = probe_fields(args.yolo, args.chula, args.chula_fields)
    rows: list[tuple[str, str, str, float]] = []  # (source, split, group, share under a white)
    for item, split in tqdm(chosen, desc="fields", mininterval=5):
        with Image.open(item.image) as image:
            rgb = np.asarray(image.convert("RGB"))
        found = detector.detect(rgb, scales[item.source]).objects
        red = [d for d in found if d.kind == "red_cell"]
        whites = [d.box for d in found if d.kind == "white_cell"]
        radius = POINT_RADIUS_UM / scales[item.source]
        for d, group in zip(red, red_groups(red, item, radius), strict=True):
            if group is not None:
                rows.append((item.source, split, group, white_cell_cover(d.box, whites)))

    tables = {str(share): tally(rows, share) for share in SHARES}
    j_val = {s: youden(t, "val") for s, t in tables.items()}
    best = max(tables, key=lambda s: (round(j_val[s], 6), float(s)))
    print("share   J(val)  " + "  ".join(f"{s + ':val':>26}" for s in (*SOURCES, "chula")))
    for s, t in tables.items():
        cells = [
            f"red {t[f'{src}:val']['red'][0]:>3}/{t[f'{src}:val']['red'][1]:<4} "
            f"white {t[f'{src}:val']['white'][0]}/{t[f'{src}:val']['white'][1]}"
            for src in (*SOURCES, "chula")
        ]
        print(f"{float(s):5.2f}  {j_val[s]:6.3f}  " + "  ".join(f"{c:>26}" for c in cells))
    print(f"chosen on validation: {best}; on test:", json.dumps(tables[best]))
    result = {
        "command": command_line("research/white_cover.py", argv),
        "detector": str(args.detector),
        "shares": tables,
        "youden_j_val": j_val,
        "youden_j_test": {s: youden(t, "test") for s, t in tables.items()},
        "chosen_on_val": float(best),
        "seconds": round(time.perf_counter() - started, 1),
    }
    write_result(args.out, result)
    print(f"wrote {args.out}; {result['seconds']} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
