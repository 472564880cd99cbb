"""Objects labelled twice: pairs of same-kind boxes in one field that overlap by more than an IoU
threshold (issue #11).

One white cell labelled twice counts as two white cells in `evaluate-detector`, and the one-to-one
match can pair only one of them with the detector's white cell, so the other reads as a white
cell missed. This lists such pairs per source, split and kind, and names the fields.

    python research/duplicate_labels.py --yolo ../shared/datasets/txl-pbc [--iou 0.5] [--out F.json]
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from training.datasets.fields import Field, read_yolo  # noqa: E402


def iou(a: tuple[float, float, float, float], b: tuple[float, float, float, float]) -> float:
    x0, y0 = max(a[0], b[0]), max(a[1], b[1])
    x1, y1 = min(a[2], b[2]), min(a[3], b[3])
    inter = max(0.0, x1 - x0) * max(0.0, y1 - y0)
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def duplicate_pairs(item: Field, threshold: float) -> list[tuple[str, float]]:
    """(kind, IoU) of every same-kind pair of boxes overlapping by more than `threshold`."""
    pairs = []
    boxed = [o for o in item.objects if o.box is not None]
    for i, first in enumerate(boxed):
        for second in boxed[i + 1 :]:
            if first.kind == second.kind:
                overlap = iou(first.box, second.box)  # type: ignore[arg-type]
                if overlap > threshold:
                    pairs.append((first.kind, overlap))
    return pairs


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--yolo", type=Path, default=ROOT.parent / "shared/datasets/txl-pbc")
    parser.add_argument("--iou", type=float, default=0.5)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    report = read_yolo(args.yolo, progress=False)
    counts: Counter[str] = Counter()
    listed: list[dict[str, Any]] = []
    for item in report.fields:
        for kind, overlap in duplicate_pairs(item, args.iou):
            key = f"{item.source}/{item.split}/{kind}"
            counts[key] += 1
            listed.append({"field": item.image.name, "where": key, "iou": round(overlap, 3)})
    for key, n in sorted(counts.items()):
        print(f"{key:28s} {n}")
    for row in listed:
        if "/test/" in row["where"]:
            print(f"  test: {row['where']} {row['field']} IoU {row['iou']}")
    if args.out:
        args.out.write_text(
            json.dumps({"iou_over": args.iou, "pairs": dict(counts), "listed": listed}, indent=1)
        )
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
