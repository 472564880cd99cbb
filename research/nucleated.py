"""Which red detections does the nucleus check move to white cells, and are they white cells?

    .venv/bin/python research/nucleated.py --detector models/detector [--split test] \
        [--sheet research/results/detection/nucleated-test.jpg]

Runs a detector with the nucleus check off (the network's own red cells) on one split of
txl-pbc's fields and on the classifier's 82 Chula test smears (each source's scale given),
applies core/detect/nucleus.py's shipped rule to the counted red detections (clear of the
border, as the detector does), and sorts every one it would move as in white_as_red.py: a
labelled red cell (a red cell lost), a white cell taken for red (caught), or a stray. Prints
the counts per source; `--sheet` draws each moved detection for a person to look at: labelled
red cells in green, labelled white cells in blue, the detector's white cells in magenta, the
moved detection as a red box, its group, source and nuclear share in the title.
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
from core.detect.nucleus import SHIPPED_RULE, nuclear_shares  # noqa: E402
from research.white_as_red import case_tile, red_groups, save_sheet  # noqa: E402
from training.detect.data import load_fields  # noqa: E402
from training.detect.evaluate import POINT_RADIUS_UM  # noqa: E402

SOURCES = ("bccd", "bcd", "raabin", "chula")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--detector", type=Path, default=ROOT / "models" / "detector")
    ap.add_argument("--yolo", type=Path, default=ROOT.parent / "shared/datasets/txl-pbc")
    ap.add_argument("--chula", type=Path, default=ROOT.parent / "shared/datasets/chula-rbc-12")
    ap.add_argument("--model", type=Path, default=ROOT / "models" / "default", help="test smears")
    ap.add_argument("--split", default="test")
    ap.add_argument("--sheet", type=Path, help="draw every moved detection into this image")
    args = ap.parse_args(argv)
    assert SHIPPED_RULE is not None, "no nucleus rule is shipped"
    detector = CellDetector.load(args.detector)
    detector.nucleus_rule = None
    card = json.loads((args.model / "model_card.json").read_text())
    stems = [Path(s).stem for s in card.get("dataset", {}).get("test_smears", [])]
    fields, scales = load_fields([args.yolo], [], args.chula, stems, progress=False)
    fields = [f for f in fields if f.split == args.split or f.source == "chula"]
    counts: dict[str, dict[str, int]] = {s: {} for s in SOURCES}
    tiles: list[Image.Image] = []
    for item in fields:
        with Image.open(item.image) as image:
            rgb = np.asarray(image.convert("RGB"))
        found = detector.detect(rgb, scales[item.source]).objects
        red = [d for d in found if d.kind == "red_cell"]
        groups = red_groups(red, item, POINT_RADIUS_UM / scales[item.source])
        # The border's red cells are not counted, and the detector leaves them as they are.
        counted = [(d, g) for d, g in zip(red, groups, strict=True) if g is not None]
        every_red = [d.box for d in red]
        shares = nuclear_shares(rgb, [d.box for d, _ in counted], [SHIPPED_RULE], every_red)[:, 0]
        for (d, key), share in zip(counted, shares, strict=True):
            mine = counts[item.source]
            mine[f"{key}:all"] = mine.get(f"{key}:all", 0) + 1
            if share <= SHIPPED_RULE.share:
                continue
            mine[f"{key}:moved"] = mine.get(f"{key}:moved", 0) + 1
            if args.sheet is not None:
                pad = 1.5 * max(d.box[2] - d.box[0], d.box[3] - d.box[1])
                window = (d.x - pad, d.y - pad, d.x + pad, d.y + pad)
                title = f"{item.source} {key} share {share:.2f} {item.image.name[:14]}"
                tiles.append(case_tile(rgb, item, found, d, window, title))
    print(f"rule {SHIPPED_RULE.key()}; per source, detections moved / detections, by group:")
    for source, mine in counts.items():
        print(source, json.dumps(mine, sort_keys=True))
    if args.sheet is not None:
        save_sheet(tiles, args.sheet, columns=4)
    return 0


if __name__ == "__main__":
    sys.exit(main())
