"""Would a white cell's nucleus give away the white cells the detector counts as red? (issue #11)

    .venv/bin/python bench/nucleus_probe.py --detector models/detector [--chula-fields 120]

The white cells still counted as red are not detected as white cells at all
(bench/white_as_red.py), and their size is a red cell's. What a red cell never has is a nucleus:
a region stained far darker than any red cell of the same field. For every counted red
detection this measures the share of the pixels inside its box's central ellipse (INNER of each
side) that are "nucleus-dark": darker, in green (where the stains absorb most), than the field's
red cells by a margin relative to the field's own contrast,

    darkness = (background green - pixel green) / (background green - red-cell green),

1 at a typical red cell's colour, 0 at the background; "nucleus-dark" is darkness > T. Field
references: the background is the 90th percentile of the field's green, the red-cell level the
median over its red detections of each one's median green inside its ellipse. A rule "a red
detection with more than a share F of nucleus-dark pixels is a white cell" is scored per (T, F).

Detections are sorted as in white_as_red.py: red (matched to a labelled red cell), white (its
centre in a labelled white cell's box) or stray. Chula fields (points, no white cells labelled)
count only red cells lost. The rule is chosen leaving one txl-pbc source out: on the validation
fields of the other two sources and Chula's, the (T, F) that drops the most white-as-red while
dropping at most MAX_RED_LOSS of the red cells of each; reported on the left-out source's test
fields and on Chula's.
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

from bench.white_as_red import red_groups  # noqa: E402
from core.detect.learned import CellDetector  # noqa: E402
from training.detection_eval import POINT_RADIUS_UM, load_fields  # noqa: E402

INNER = 0.8
DARKNESS = (1.4, 1.6, 1.8, 2.0, 2.3)
SHARES = (0.05, 0.1, 0.15, 0.2, 0.3)
MAX_RED_LOSS = 0.005
SOURCES = ("bccd", "bcd", "raabin")


def ellipse_mask(shape: tuple[int, int], box: tuple[float, float, float, float]) -> np.ndarray:
    h, w = shape
    x0, y0, x1, y1 = box
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    rx, ry = max((x1 - x0) / 2 * INNER, 1.0), max((y1 - y0) / 2 * INNER, 1.0)
    ys, xs = np.ogrid[:h, :w]
    return ((xs - cx) / rx) ** 2 + ((ys - cy) / ry) ** 2 <= 1.0


def dark_shares(green: np.ndarray, boxes: list[tuple[float, float, float, float]]) -> np.ndarray:
    """(detections, len(DARKNESS)): each detection's share of nucleus-dark pixels per T."""
    if not boxes:
        return np.zeros((0, len(DARKNESS)))
    masks = [ellipse_mask(green.shape, b) for b in boxes]
    background = float(np.percentile(green, 90))
    red = float(np.median([np.median(green[m]) for m in masks if m.any()]))
    contrast = max(background - red, 1.0)
    out = np.zeros((len(boxes), len(DARKNESS)))
    for i, m in enumerate(masks):
        if not m.any():
            continue
        darkness = (background - green[m]) / contrast
        out[i] = [(darkness > t).mean() for t in DARKNESS]
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--detector", type=Path, default=ROOT / "models" / "detector")
    ap.add_argument("--yolo", type=Path, default=ROOT.parent / "shared/datasets/txl-pbc")
    ap.add_argument("--chula", type=Path, default=ROOT.parent / "shared/datasets/chula-rbc-12")
    ap.add_argument("--chula-fields", type=int, default=120, help="a seeded sample per split")
    ap.add_argument("--out", type=Path, default=ROOT / "docs" / "detection" / "nucleus-probe.json")
    args = ap.parse_args(argv)
    started = time.perf_counter()
    detector = CellDetector.load(args.detector)
    fields, scales = load_fields(yolo=[args.yolo], chula=args.chula, progress=False)
    # txl-pbc's own val and test splits; Chula's fields (no split of their own here) a seeded
    # sample halved into "val" and "test".
    chosen: list[tuple[Any, str]] = [
        (f, f.split) for f in fields if f.source in SOURCES and f.split in ("val", "test")
    ]
    chula = [f for f in fields if f.source == "chula"]
    order = np.random.default_rng(0).permutation(len(chula))[: 2 * args.chula_fields]
    chosen += [(chula[i], "val" if k % 2 == 0 else "test") for k, i in enumerate(order)]
    # (source, split, group, shares per T)
    rows: list[tuple[str, str, str, np.ndarray]] = []
    for item, split in tqdm(chosen, desc="fields", mininterval=5):
        with Image.open(item.image) as image:
            rgb = np.asarray(image.convert("RGB"))
        red = [d for d in detector.detect(rgb, scales[item.source]).objects if d.kind == "red_cell"]
        if len(red) < 3:
            continue
        shares = dark_shares(rgb[..., 1].astype(np.float64), [d.box for d in red])
        radius = POINT_RADIUS_UM / scales[item.source]
        for i, group in enumerate(red_groups(red, item, radius)):
            if group is not None:
                rows.append((item.source, split, group, shares[i]))

    def dropped(source: str, split: str, group: str, t: int, f: float) -> tuple[int, int]:
        mine = [r for r in rows if r[0] == source and r[1] == split and r[2] == group]
        return int(sum(bool(r[3][t] > f) for r in mine)), len(mine)

    rules = [(t, f) for t in range(len(DARKNESS)) for f in SHARES]
    table: dict[str, Any] = {}
    for t, f in rules:
        key = f"T{DARKNESS[t]}-F{f}"
        table[key] = {
            f"{source}:{split}": {
                "red": dropped(source, split, "red", t, f),
                "white": dropped(source, split, "white", t, f),
                "stray": dropped(source, split, "stray", t, f),
            }
            for source in (*SOURCES, "chula")
            for split in ("val", "test")
        }

    def red_loss(key: str, where: str) -> float:
        d, n = table[key][where]["red"]
        return d / n if n else 0.0

    leave_one_out: dict[str, dict[str, Any]] = {}
    for held in SOURCES:
        others = [s for s in SOURCES if s != held] + ["chula"]
        allowed = [
            key for key in table if all(red_loss(key, f"{s}:val") <= MAX_RED_LOSS for s in others)
        ]
        if not allowed:
            leave_one_out[held] = {"chosen": None}
            continue
        best = max(
            allowed,
            key=lambda k: (
                sum(table[k][f"{s}:val"]["white"][0] for s in others),
                -sum(table[k][f"{s}:val"]["red"][0] for s in others),
            ),
        )
        leave_one_out[held] = {
            "chosen": best,
            "chosen_on": [f"{s}:val" for s in others],
            "white_dropped_on_the_others": sum(table[best][f"{s}:val"]["white"][0] for s in others),
            "left_out_test": table[best][f"{held}:test"],
            "chula_test": table[best]["chula:test"],
        }
    result = {
        "command": " ".join(["bench/nucleus_probe.py", *(sys.argv[1:] if argv is None else argv)]),
        "detector": str(args.detector),
        "counted_red_detections": {
            f"{s}:{sp}:{g}": sum(1 for r in rows if r[:3] == (s, sp, g))
            for s in (*SOURCES, "chula")
            for sp in ("val", "test")
            for g in ("red", "white", "stray")
        },
        "max_red_loss": MAX_RED_LOSS,
        "rules": table,
        "leave_one_source_out": leave_one_out,
        "seconds": round(time.perf_counter() - started, 1),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result["counted_red_detections"]))
    for held, row in leave_one_out.items():
        print(held, json.dumps(row))
    print(f"wrote {args.out}; {result['seconds']} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
