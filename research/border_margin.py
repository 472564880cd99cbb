"""How close to the image's edge may a red cell's box come before it counts as cut? (issue #11)

    .venv/bin/python research/border_margin.py --detector models/detector [--split val]

A cell cut by the edge is set aside, not counted or classified: its crop is part of a cell, and
its shape (and with it its class) is not its own. The detector's boxes of cut cells often stop a
few pixels short of the edge, so a margin of 2 pixels misses many of them. This runs a detector
on txl-pbc's fields of one split (each source's derived scale given), matches its red cells to the
labelled ones, and for each margin (in the field's microns) reports per source how many
detections of **cut** cells (matched to a labelled box that touches the edge) it sets aside,
how many of **whole** cells (matched to a labelled box clear of it) it sets aside too, and
Youden's J (the first share minus the second). Choose on the validation split: the margin with
the highest J averaged over the sources.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from core.detect.learned import CellDetector  # noqa: E402
from training.detect.data import load_fields  # noqa: E402
from training.detect.evaluate import POINT_RADIUS_UM, match  # noqa: E402

MARGINS_UM = (0.0, 0.2, 0.4, 0.6, 0.8, 1.0, 1.2, 1.5)
SOURCES = ("bccd", "bcd", "raabin")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--detector", type=Path, default=ROOT / "models" / "detector")
    ap.add_argument("--yolo", type=Path, default=ROOT.parent / "shared/datasets/txl-pbc")
    ap.add_argument("--split", default="val")
    args = ap.parse_args(argv)
    detector = CellDetector.load(args.detector)
    fields, scales = load_fields([args.yolo], progress=False)
    fields = [f for f in fields if f.split == args.split and f.source in SOURCES]
    # (source, truth) -> gaps (um) from each detection's box to the nearest image edge
    gaps: dict[tuple[str, str], list[float]] = {}
    for item in fields:
        with Image.open(item.image) as image:
            rgb = np.asarray(image.convert("RGB"))
        mpp = scales[item.source]
        red = [d for d in detector.detect(rgb, mpp).objects if d.kind == "red_cell"]
        labels = item.of_kind("red_cell")
        label_of = dict(match(red, labels, POINT_RADIUS_UM / mpp))
        for i, d in enumerate(red):
            if i not in label_of:
                continue
            truth = "cut" if item.at_border(labels[label_of[i]]) else "whole"
            x0, y0, x1, y1 = d.box
            gap = min(x0, y0, item.width - x1, item.height - y1) * mpp
            if gap <= CellDetector.BORDER_MARGIN_PX * mpp:
                gap = 0.0  # within the 2-pixel margin, which applies at any scale
            gaps.setdefault((item.source, truth), []).append(gap)
    table: dict[str, dict[str, dict[str, float]]] = {}
    print("margin um   " + "   ".join(f"{s:>24}" for s in SOURCES))
    for m in MARGINS_UM:
        row = {}
        for source in SOURCES:
            cut = np.array(gaps.get((source, "cut"), []))
            whole = np.array(gaps.get((source, "whole"), []))
            tpr = float((cut <= m).mean()) if len(cut) else 0.0
            fpr = float((whole <= m).mean()) if len(whole) else 0.0
            row[source] = {"cut_set_aside": tpr, "whole_set_aside": fpr, "youden_j": tpr - fpr}
        table[str(m)] = row
        print(
            f"{m:9.1f}   "
            + "   ".join(
                f"cut {r['cut_set_aside']:.3f} whole {r['whole_set_aside']:.3f} "
                f"J {r['youden_j']:.3f}"
                for r in row.values()
            )
        )
    counts = {f"{s}:{t}": len(v) for (s, t), v in sorted(gaps.items())}
    best = {s: max(table, key=lambda m: table[m][s]["youden_j"]) for s in SOURCES}
    mean_j = {m: float(np.mean([table[m][s]["youden_j"] for s in SOURCES])) for m in table}
    print("matched detections:", json.dumps(counts))
    print("highest J per source (um):", json.dumps(best))
    print(f"highest mean J: {max(mean_j, key=mean_j.__getitem__)} um ({max(mean_j.values()):.3f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
