"""Where does a detector's scale search go wrong? (issue #11)

    .venv/bin/python bench/scale_search.py --detector models/detector \
        --detector runs/detector-blur/detector [--source raabin] [--split test]

Without a scale, `CellDetector.estimate_scale` runs the network at each candidate scale and
starts from the one where it finds the most red cells, most confidently. For each detector this
runs the search on a txl-pbc source's fields (its derived scale as the truth) and prints the
fields whose estimate is more than 50 % off, with the red cells found at each candidate scale,
and how many fields that is.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from core.detect.learned import CellDetector  # noqa: E402
from training.detection_eval import load_fields  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--detector", type=Path, action="append", required=True)
    ap.add_argument("--yolo", type=Path, default=ROOT.parent / "shared/datasets/txl-pbc")
    ap.add_argument("--source", default="raabin")
    ap.add_argument("--split", default="test")
    args = ap.parse_args(argv)
    fields, scales = load_fields([args.yolo], progress=False)
    chosen = [f for f in fields if f.source == args.source and f.split == args.split]
    if not chosen:
        ap.error(f"no {args.source} fields in the {args.split} split")
    true = scales[args.source]
    for path in args.detector:
        detector = CellDetector.load(path)
        wrong = 0
        for item in chosen:
            with Image.open(item.image) as image:
                rgb = np.asarray(image.convert("RGB"))
            estimate, tried = detector.estimate_scale(rgb)
            if abs(estimate / true - 1) > 0.5:
                wrong += 1
                found = ", ".join(f"{c}: {n}" for c, n in tried)
                print(f"{path} {item.image.name}: {estimate:.3f} (true {true:.4f}); {found}")
        where = f"{args.source} {args.split}"
        print(f"{path}: {wrong} of {len(chosen)} {where} fields more than 50 % off")
    return 0


if __name__ == "__main__":
    sys.exit(main())
