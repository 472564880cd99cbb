"""Would a lower threshold for small red-cell peaks find the schistocytes the detector misses?
(issue #11, stop 23)

    .venv/bin/python research/small_cell_threshold.py --detector models/detector \
        [--out research/results/detection/small-cell-threshold.json]

The shipped detector finds 0.98 of Chula's red cells but 0.71 of its schistocytes
(research/chula_extras.py --missed-sheet): at a missed fragment no red-cell peak reaches the
red-cell threshold, though the heatmap is raised there. This probe keeps the network and its
thresholds and varies one rule (`CellDetector.small_red`, core/detect/learned.py): a red-cell
peak whose box is under `size` um across (the mean of its sides) is kept from `low` up, the
others from the card's threshold. The first row (low 1.0) is the card's threshold alone, the
detector before stop 23. For each (low,
size) it runs the detector, nucleus check and free-nucleus step included, at each field's
scale on **validation fields only** (txl-pbc's val split, and the Chula smears that detector
training holds out for validation: not the classifier's test smears, 15 % of the rest by a hash
of the name, as training/detect/data.py splits them), and reports:

- red-cell recall (interior) and one-to-one precision per source (evaluate-detector's figures);
- on Chula, recall per morphology class (schistocyte, spherocyte, all others).

A rule worth shipping raises schistocyte recall without lowering any source's precision by
more than a point; it is then measured on the test fields as the shipped detector is.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import zlib
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from core.detect.learned import CellDetector
from training.detect.data import load_fields
from training.detect.evaluate import POINT_RADIUS_UM, Found, LearnedDetector, evaluate_fields, match

LOWS = (0.35, 0.3, 0.25, 0.2)
SIZES_UM = (4.5, 5.5, 6.5, 100.0)  # 100: every red peak (a lower threshold for all)
SOURCES = ("bccd", "bcd", "raabin", "chula")


def validation_fields(yolo: Path, chula: Path, classifier: Path) -> tuple[list[Any], Any]:
    """txl-pbc's val fields and Chula's detector-validation smears, and the scales."""
    card = json.loads((classifier / "model_card.json").read_text())
    test = {Path(s).stem for s in card["dataset"]["test_smears"]}
    fields, scales = load_fields([yolo], chula=chula, progress=False)
    chosen = [f for f in fields if f.source != "chula" and f.split == "val"]
    chosen += [
        f
        for f in fields
        if f.source == "chula"
        and f.image.stem not in test
        and zlib.crc32(f.image.stem.encode()) % 100 < 15
    ]
    return chosen, scales


def class_recall(fields: list[Any], found_per_field: list[list[Found]], scale: float) -> dict:
    """Recall of Chula's labelled points per morphology class: schistocyte, spherocyte, other."""
    got: dict[str, list[int]] = {"schistocyte": [0, 0], "spherocyte": [0, 0], "other": [0, 0]}
    radius = POINT_RADIUS_UM / scale
    for item, found in zip(fields, found_per_field, strict=True):
        labels = item.of_kind("red_cell")
        red = [d for d in found if d.kind == "red_cell"]
        hit = {j for _, j in match(red, labels, radius)}
        for j, label in enumerate(labels):
            group = label.label if label.label in ("schistocyte", "spherocyte") else "other"
            got[group][1] += 1
            got[group][0] += j in hit
    return {g: (h / n if n else None, n) for g, (h, n) in got.items()}


class Recording(LearnedDetector):
    """LearnedDetector that keeps what it found on each field."""

    def __init__(self, detector: Any) -> None:
        super().__init__(detector)
        self.found: list[list[Found]] = []

    def __call__(self, rgb: np.ndarray, microns_per_pixel: float | None) -> list[Found]:
        found = super().__call__(rgb, microns_per_pixel)
        self.found.append(found)
        return found


def measure(detector: CellDetector, fields: list[Any], scales: dict[str, float]) -> dict:
    recording = Recording(detector)
    summary, _ = evaluate_fields(
        fields, recording, lambda f: scales[f.source], give_scale=True, progress=False
    )
    chula = [(f, found) for f, found in zip(fields, recording.found, strict=True)]
    chula = [(f, found) for f, found in chula if f.source == "chula"]
    out: dict[str, Any] = {
        s: {
            "recall": summary[s]["red_recall_interior"],
            "precision": summary[s]["red_precision_one_to_one"],
        }
        for s in SOURCES
        if s in summary
    }
    out["chula_by_class"] = class_recall(
        [f for f, _ in chula], [found for _, found in chula], scales["chula"]
    )
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    root = Path(__file__).resolve().parent.parent
    ap.add_argument("--detector", type=Path, default=root / "models" / "detector")
    ap.add_argument("--yolo", type=Path, default=root.parent / "shared/datasets/txl-pbc")
    ap.add_argument("--chula", type=Path, default=root.parent / "shared/datasets/chula-rbc-12")
    ap.add_argument("--classifier", type=Path, default=root / "models" / "default")
    ap.add_argument("--out", type=Path)
    args = ap.parse_args(argv)
    started = time.perf_counter()
    fields, scales = validation_fields(args.yolo, args.chula, args.classifier)
    detector = CellDetector.load(args.detector)
    settings: list[tuple[float, float]] = [(1.0, 0.0)]  # the card's threshold for every peak
    settings += [(low, size) for low in LOWS for size in SIZES_UM]
    results = []
    print("low  size_um  " + "  ".join(f"{s:>13s}" for s in SOURCES) + "  schisto  sphero  other")
    for low, size in settings:
        detector.small_red = (low, size)
        figures = measure(detector, fields, scales)
        results.append({"low": low, "size_um": size, **figures})
        by_class = figures["chula_by_class"]
        print(
            f"{low:4.2f} {size:7.1f}  "
            + "  ".join(
                f"{figures[s]['recall']:.3f}/{figures[s]['precision']:.3f}"
                for s in SOURCES
                if s in figures
            )
            + "  "
            + "  ".join(f"{by_class[g][0]:.3f}" for g in ("schistocyte", "spherocyte", "other")),
            flush=True,
        )
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        result = {
            "command": " ".join(["research/small_cell_threshold.py", *(argv or sys.argv[1:])]),
            "detector": str(args.detector),
            "red_threshold": detector.card.thresholds["red_cell"],
            "fields": {s: sum(f.source == s for f in fields) for s in SOURCES},
            "chula_labels_by_class": {g: n for g, (_, n) in results[0]["chula_by_class"].items()},
            "results": results,
            "seconds": round(time.perf_counter() - started, 1),
        }
        args.out.write_text(json.dumps(result, indent=2) + "\n")
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
