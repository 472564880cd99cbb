"""Does the classifier read other laboratories' cells better when each crop shows one cell?

    .venv/bin/python research/isolate_cell_probe.py --data /tmp/chula-crops \
        --out research/results/classification/isolate-cell.json

research/txl_calls_sheet.py showed that most of txl-pbc's red cells the shipped model calls
abnormal are ordinary discocytes in a crowded window: a neighbour, or a white cell, fills part of
the 72 px crop. Chula's crops mostly hold one cell on its background. This probe fills
everything outside the detected cell's box (an ellipse in the box, widened by --margins, a
feathered edge) with the field's plasma colour (median of the pixels no detection covers), then
classifies as the service does, and compares with the crops as cut today:

- Chula's test smears (labelled; the scale given, 0.19 um/px, as bench/bench_lab_loop.py sends
  them): accuracy on the counted red cells that match a label point, the share flagged. This is
  where a margin is chosen: the one that loses nothing here.
- txl-pbc's test fields of each source (no morphology labels, routine smears: most red cells
  are expected normal; scale estimated, as `POST /analyze/smear` without microns_per_pixel):
  the share called normal, called abnormal without a review flag, flagged, and fields judged
  unfamiliar. Measured, never tuned on.

No network is retrained: the question is how much of the foreign misreading is the window's
neighbours.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from core.classify.predictor import Predictor  # noqa: E402
from core.detect.field import Detected, FieldDetection  # noqa: E402
from core.detect.learned import CellDetector  # noqa: E402
from core.smear.analysis import (  # noqa: E402
    NORMAL,
    _classify,
    _detect,
    check_working_size,
    judge_familiarity,
    scale_factor,
)
from core.smear.result import FieldCell  # noqa: E402
from research.probe_fields import command_line, write_result  # noqa: E402
from training.smear import MATCH_RADIUS_PX, match_points  # noqa: E402

SOURCES = ("bccd", "bcd", "raabin")
CHULA_MPP = 0.19
FEATHER_PX = 2.0
MAX_WORKING_PIXELS = 4096 * 4096  # analyze_smear's default
Box = tuple[float, float, float, float]


def plasma_colour(work: np.ndarray, boxes: list[tuple[float, float, float, float]]) -> np.ndarray:
    """Median colour of the pixels no detected object covers: the plasma, even on a crowded
    field where the whole image's median is a red cell's colour."""
    free = np.ones(work.shape[:2], dtype=bool)
    for x0, y0, x1, y1 in boxes:
        free[
            max(int(y0), 0) : max(int(np.ceil(y1)), 0), max(int(x0), 0) : max(int(np.ceil(x1)), 0)
        ] = False
    pixels = work[free] if free.sum() > 500 else work.reshape(-1, 3)
    return np.median(pixels, axis=0)


def isolate(
    crop: Image.Image, box: tuple[float, float, float, float], fill: np.ndarray, margin: float
) -> Image.Image:
    """`crop` with everything outside an ellipse in `box` (crop pixels), its half-axes widened
    by `margin` of themselves, blended to `fill` over a feathered edge."""
    x0, y0, x1, y1 = box
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    ax = max((x1 - x0) / 2 * (1 + margin), 2.0)
    ay = max((y1 - y0) / 2 * (1 + margin), 2.0)
    side = crop.size[0]
    yy, xx = np.mgrid[0:side, 0:side] + 0.5
    r = np.hypot((xx - cx) / ax, (yy - cy) / ay)
    outside_px = (r - 1.0) * min(ax, ay)
    alpha = np.clip(1.0 - outside_px / FEATHER_PX, 0.0, 1.0)[..., None]
    rgb = np.asarray(crop, dtype=np.float32)
    out = alpha * rgb + (1 - alpha) * fill[None, None, :]
    return Image.fromarray(np.clip(out + 0.5, 0, 255).astype(np.uint8))


class Isolating:
    """The predictor, shown each field's crops with everything outside the cell filled
    (`isolate`, the cells' boxes in crop pixels, in the order the field's crops come); the rest
    (classes, calibration, card) is the predictor's."""

    def __init__(
        self, predictor: Predictor, boxes: list[Box], plasma: np.ndarray, margin: float
    ) -> None:
        self.predictor, self.boxes, self.plasma, self.margin = predictor, boxes, plasma, margin

    def __getattr__(self, name: str) -> Any:
        return getattr(self.predictor, name)

    def predict(
        self, images: list[Image.Image], heatmap: bool = False, check: Any = None
    ) -> list[Any]:
        shown = [
            isolate(crop, box, self.plasma, self.margin)
            for crop, box in zip(images, self.boxes, strict=True)
        ]
        return self.predictor.predict(shown, check=check)


def field_cells(
    image: Image.Image,
    found: FieldDetection,
    predictor: Predictor,
    margins: list[float | None],
    window: int,
) -> dict[str, tuple[list[FieldCell], Any]]:
    """For each margin (None: the crops as cut today), the field's cells and its familiarity,
    through the service's own cropping and classifying (`_classify`)."""
    red: list[Detected] = found.of_kind("red_cell")
    work_size = check_working_size(image.size, found.microns_per_pixel, MAX_WORKING_PIXELS)
    factor = scale_factor(found.microns_per_pixel)
    work = image if factor == 1.0 else image.resize(work_size, Image.Resampling.LANCZOS)
    plasma = plasma_colour(
        np.asarray(work), [tuple(v * factor for v in o.box) for o in found.objects]
    )
    boxes: list[Box] = []
    for d in red:  # each box in its crop's pixels, the crop centred as `_classify` centres it
        left, top = round(d.x * factor) - window // 2, round(d.y * factor) - window // 2
        x0, y0, x1, y1 = (v * factor for v in d.box)
        boxes.append((x0 - left, y0 - top, x1 - left, y1 - top))
    out = {}
    for margin in margins:
        classifier = predictor if margin is None else Isolating(predictor, boxes, plasma, margin)
        cells, _ = _classify(image, red, found, classifier, window, MAX_WORKING_PIXELS, None)
        familiarity = judge_familiarity(classifier, cells, image)
        out["plain" if margin is None else f"margin {margin}"] = (cells, familiarity)
    return out


def chula_points(chula: Path, smear: str) -> list[tuple[float, float, str]]:
    from training.datasets.chula import read_label_file

    labels = read_label_file(chula / "Label" / (Path(smear).stem + ".txt"))
    return [(float(p.x), float(p.y), p.label) for p in labels.points]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, required=True, help="an import-chula crop set")
    parser.add_argument("--chula", type=Path, default=ROOT.parent / "shared/datasets/chula-rbc-12")
    parser.add_argument("--txl", type=Path, default=ROOT.parent / "shared/datasets/txl-pbc")
    parser.add_argument("--model", type=Path, default=ROOT / "models" / "default")
    parser.add_argument("--detector", type=Path, default=ROOT / "models" / "detector")
    parser.add_argument("--margins", default="0.1,0.25,0.5")
    parser.add_argument("--chula-smears", type=int, default=60)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    started = time.perf_counter()
    predictor = Predictor.load(args.model, device="cpu")
    detector = CellDetector.load(args.detector)
    window = predictor.card.crop_window_px or 72
    margins: list[float | None] = [None, *(float(m) for m in args.margins.split(","))]
    names = ["plain" if m is None else f"margin {m}" for m in margins]
    classes = list(predictor.classes)

    manifest = pd.read_csv(args.data / "manifest.csv")
    smears = sorted(manifest[manifest["split"] == "test"]["source_image"].unique())
    np.random.default_rng(0).shuffle(smears)
    smears = smears[: args.chula_smears]
    truth: list[str] = []
    called: dict[str, list[str]] = {n: [] for n in names}
    flagged: dict[str, list[bool]] = {n: [] for n in names}
    for k, smear in enumerate(smears):
        with Image.open(args.chula / "Dataset" / smear) as opened:
            image = opened.convert("RGB")
        found = _detect(image, detector, CHULA_MPP)
        per = field_cells(image, found, predictor, margins, window)
        points = chula_points(args.chula, smear)
        for name in names:
            counted = [c for c in per[name][0] if c.counted]
            pairs = match_points(
                [(c.x, c.y) for c in counted], [p[:2] for p in points], MATCH_RADIUS_PX
            )
            for i, j in pairs:
                if points[j][2] not in classes:
                    continue
                if name == names[0]:
                    truth.append(points[j][2])
                called[name].append(counted[i].label)
                flagged[name].append(counted[i].needs_review)
        print(f"chula {k + 1}/{len(smears)}", file=sys.stderr, flush=True)
    t = np.asarray(truth)
    chula: dict[str, Any] = {"smears": len(smears), "cells": len(t)}
    for name in names:
        c = np.asarray(called[name])
        chula[name] = {
            "accuracy": round(float((c == t).mean()), 4),
            "flagged": round(float(np.mean(flagged[name])), 4),
            "recall": {
                cls: round(float((c[t == cls] == cls).mean()), 3)
                for cls in classes
                if (t == cls).sum() >= 20
            },
        }
        print(f"chula {name}: accuracy {chula[name]['accuracy']:.3f} on {len(t)} cells")

    table = pd.read_csv(args.txl / "sources.csv", dtype=str)
    txl: dict[str, Any] = {}
    for source in SOURCES:
        rels = sorted(table[(table.source == source) & (table.split == "test")].image)
        labels: dict[str, list[str]] = {n: [] for n in names}
        review: dict[str, list[bool]] = {n: [] for n in names}
        unfamiliar: Counter[str] = Counter()
        for rel in rels:
            with Image.open(args.txl / rel) as opened:
                image = opened.convert("RGB")
            found = _detect(image, detector, None)
            per = field_cells(image, found, predictor, margins, window)
            for name in names:
                cells, familiarity = per[name]
                unfamiliar[name] += bool(familiarity.unfamiliar)
                for cell in cells:
                    if cell.counted:
                        labels[name].append(cell.label)
                        review[name].append(cell.needs_review)
        txl[source] = {"fields": len(rels)}
        for name in names:
            lab, rev = np.asarray(labels[name]), np.asarray(review[name])
            txl[source][name] = {
                "cells": len(lab),
                "called_normal": round(float((lab == NORMAL).mean()), 4),
                "abnormal_unflagged": round(float(((lab != NORMAL) & ~rev).mean()), 4),
                "flagged": round(float(rev.mean()), 4),
                "unfamiliar_fields": unfamiliar[name],
                "called": dict(Counter(labels[name]).most_common()),
            }
            r = txl[source][name]
            print(
                f"{source} {name}: normal {r['called_normal']:.3f}, abnormal unflagged "
                f"{r['abnormal_unflagged']:.3f}, flagged {r['flagged']:.3f}, unfamiliar "
                f"{r['unfamiliar_fields']}/{len(rels)}",
                flush=True,
            )
    result = {
        "command": command_line("research/isolate_cell_probe.py", None),
        "seconds": round(time.perf_counter() - started, 1),
        "chula_test_smears": chula,
        "txl_test_fields": txl,
    }
    if args.out:
        write_result(args.out, result)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
