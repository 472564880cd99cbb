"""What are the red cells a detector counts on Chula's fully labelled test smears that match no
label? (issue #11: Chula's interior precision, 0.938 against a target of 0.94.)

    .venv/bin/python bench/chula_extras.py --detector models/detector \\
        --sheet docs/detection/chula-extras.jpg

Runs the detector on the fully labelled smears among the classifier's test smears (as
`evaluate-detector` does, at Chula's 0.19 um per pixel) and draws each counted red cell that
matches no labelled point (within 3.8 um, one to one): a window around it, the labelled points
(green dots), the other counted red cells (yellow) and the unmatched one (red box). A person
looks at the sheet and says what they are: a cell the labels leave out, a second detection of
one cell, or something that is not a red cell. Prints the counts per smear.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.white_as_red import save_sheet
from core.detect.learned import CellDetector
from training.detection_eval import CHULA_MICRONS_PER_PIXEL, POINT_RADIUS_UM, load_fields, match

TILE = 200  # px per case on the sheet
WINDOW = 120  # px of the field around each case


def tile_of(rgb: np.ndarray, item: Any, red: list[Any], extra: Any, title: str) -> Image.Image:
    image = Image.fromarray(rgb).convert("RGB")
    draw = ImageDraw.Draw(image)
    for d in red:
        if d is not extra and not d.at_border:
            draw.rectangle(d.box, outline=(255, 220, 0), width=1)
    draw.rectangle(extra.box, outline=(255, 0, 0), width=2)
    for o in item.of_kind("red_cell"):
        draw.ellipse((o.x - 3, o.y - 3, o.x + 3, o.y + 3), fill=(0, 200, 0))
    x, y = extra.x, extra.y
    crop = image.crop(
        (int(x - WINDOW / 2), int(y - WINDOW / 2), int(x + WINDOW / 2), int(y + WINDOW / 2))
    )
    crop = crop.resize((TILE, TILE - 12))
    out = Image.new("RGB", (TILE, TILE), "white")
    out.paste(crop, (0, 12))
    ImageDraw.Draw(out).text((2, 0), title, fill=(0, 0, 0))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--detector", type=Path, default=Path("models/detector"))
    ap.add_argument("--chula", type=Path, default=Path("../shared/datasets/chula-rbc-12"))
    ap.add_argument("--classifier", type=Path, default=Path("models/default"))
    ap.add_argument("--sheet", type=Path, required=True)
    args = ap.parse_args()
    card = json.loads((args.classifier / "model_card.json").read_text())
    stems = [Path(s).stem for s in card["dataset"]["test_smears"]]
    fields, _ = load_fields(chula=args.chula, chula_stems=stems, progress=False)
    detector = CellDetector.load(args.detector)
    radius = POINT_RADIUS_UM / CHULA_MICRONS_PER_PIXEL
    tiles: list[Image.Image] = []
    counts: dict[str, tuple[int, int]] = {}
    for item in (f for f in fields if f.complete):
        with Image.open(item.image) as opened:
            rgb = np.asarray(opened.convert("RGB"))
        red = [
            d for d in detector.detect(rgb, CHULA_MICRONS_PER_PIXEL).objects if d.kind == "red_cell"
        ]
        matched = {i for i, _ in match(red, item.of_kind("red_cell"), radius)}
        counted = [i for i, d in enumerate(red) if not d.at_border]
        extras = [i for i in counted if i not in matched]
        counts[item.image.stem] = (len(extras), len(counted))
        for i in extras:
            tiles.append(tile_of(rgb, item, red, red[i], f"{item.image.stem} #{i}"))
    total_extra = sum(e for e, _ in counts.values())
    total = sum(n for _, n in counts.values())
    print(f"{len(counts)} fully labelled test smears: {total_extra} of {total} counted red cells")
    print(f"match no label (precision {1 - total_extra / max(total, 1):.3f})")
    print(json.dumps(counts))
    save_sheet(tiles, args.sheet, columns=6)


if __name__ == "__main__":
    main()
