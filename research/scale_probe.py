"""What scale does a detector's size head imply for a field, when the field is assumed to be at
each of several scales? (issue #11: the scale estimate when no microns_per_pixel is given.)

    .venv/bin/python research/scale_probe.py --detector models/detector \\
        --detector runs/X/detector \\
        --fields ../shared/datasets/chula-rbc-12/Dataset/1.jpg ... --true 0.19

For each detector and field: at each assumed scale, the scale implied by the median size of the
red cells found (CellDetector.try_scale: a normal red cell taken as 7.5 um) and their number.
A size head that measures the field's cells right implies the true scale from any assumed scale
near it; one that measures them k times too small implies true / k, and the estimate drifts there.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from core.detect.learned import CellDetector

ASSUMED = (0.5, 0.7, 0.85, 1.0, 1.05, 1.25)  # times the true scale


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--detector", type=Path, action="append", required=True)
    ap.add_argument("--fields", type=Path, nargs="+", required=True)
    ap.add_argument("--true", type=float, required=True, help="the fields' scale, um per pixel")
    args = ap.parse_args()
    for folder in args.detector:
        detector = CellDetector.load(folder)
        ratios = []
        for path in args.fields:
            with Image.open(path) as image:
                rgb = np.asarray(image.convert("RGB"))
            row = []
            for k in ASSUMED:
                implied = detector.try_scale(rgb, k * args.true).implied
                row.append(f"{k:.2f}x -> {implied / args.true if implied else float('nan'):.2f}x")
                if k == 1.0 and implied:
                    ratios.append(implied / args.true)
            estimate, _ = detector.estimate_scale(rgb)
            print(f"{folder} {path.name}: {'; '.join(row)}; estimate {estimate / args.true:.2f}x")
        print(f"{folder}: at the true scale, implied / true = {np.median(ratios):.2f} (median)\n")


if __name__ == "__main__":
    main()
