"""What are the red cells a detector counts on Chula's fully labelled test smears that match no
label, and what is at the labelled cells it misses? (issue #11: Chula's interior precision and
recall.)

    .venv/bin/python research/chula_extras.py --detector models/detector \\
        --sheet research/results/detection/chula-extras.jpg [--missed-sheet F] [--out F.json]

Runs the detector on the fully labelled smears among the classifier's test smears (as
`evaluate-detector` does, at Chula's 0.19 um per pixel) and draws each counted red cell that
matches no labelled point (within 3.8 um, one to one): a window around it, the labelled points
(green dots), the other counted red cells (yellow) and the unmatched one (red box). A person
looks at the sheet and says what they are: a cell the labels leave out, a second detection of
one cell, or something that is not a red cell. Prints the counts per smear.

With --missed-sheet, every labelled point of the 82 test smears that no red detection matches
(what red-cell recall counts as missed) is drawn too (a green box around the point), and sorted
by what the detector put within the match radius (`missed_as`): a white cell (the network's or
the nucleus check's), a platelet, a red cell matched to another point (two labels, one
detection), or nothing; and recall is given per morphology class of the labels.
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
from core.detect.learned import CellDetector, parse_small_red
from research.white_as_red import save_sheet
from training.detect.config import CHULA_MICRONS_PER_PIXEL
from training.detect.data import load_fields
from training.detect.evaluate import POINT_RADIUS_UM, match

TILE = 200  # px per case on the sheet
WINDOW = 120  # px of the field around each case
MISSED_AS = ("white_cell", "platelet", "red_cell_taken", "nothing")


def missed_as(x: float, y: float, objects: list[Any], radius: float) -> str:
    """What the detector put within `radius` of a labelled point that no red detection matched:
    the nearest object's kind ("red_cell_taken": a red detection matched to another point), or
    "nothing"."""
    near = [(np.hypot(o.x - x, o.y - y), o.kind) for o in objects]
    inside = [(d, kind) for d, kind in near if d <= radius]
    if not inside:
        return "nothing"
    kind = min(inside)[1]
    return "red_cell_taken" if kind == "red_cell" else kind


def tile_of(
    rgb: np.ndarray, item: Any, red: list[Any], extra: Any | None, title: str, at: Any = None
) -> Image.Image:
    """A window of the field around `extra` (a red detection, red box) or, without one, around
    the labelled point `at` (green box); every other counted red cell in yellow, every labelled
    point as a green dot."""
    image = Image.fromarray(rgb).convert("RGB")
    draw = ImageDraw.Draw(image)
    for d in red:
        if d is not extra and not d.at_border:
            draw.rectangle(d.box, outline=(255, 220, 0), width=1)
    if extra is not None:
        draw.rectangle(extra.box, outline=(255, 0, 0), width=2)
    for o in item.of_kind("red_cell"):
        draw.ellipse((o.x - 3, o.y - 3, o.x + 3, o.y + 3), fill=(0, 200, 0))
    x, y = (extra.x, extra.y) if extra is not None else (at.x, at.y)
    if extra is None:
        draw.rectangle((x - 20, y - 20, x + 20, y + 20), outline=(0, 160, 0), width=2)
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
    ap.add_argument("--missed-sheet", type=Path, help="also draw the labelled cells missed")
    ap.add_argument("--out", type=Path, help="JSON of the counts")
    ap.add_argument(
        "--small-red",
        metavar="THRESHOLD,UM",
        help="the candidate rule for small red-cell peaks (core/detect/learned.py)",
    )
    args = ap.parse_args()
    card = json.loads((args.classifier / "model_card.json").read_text())
    stems = [Path(s).stem for s in card["dataset"]["test_smears"]]
    fields, _ = load_fields(chula=args.chula, chula_stems=stems, progress=False)
    detector = CellDetector.load(args.detector)
    if args.small_red:
        try:
            detector.small_red = parse_small_red(args.small_red)
        except ValueError as exc:
            ap.error(str(exc))
    radius = POINT_RADIUS_UM / CHULA_MICRONS_PER_PIXEL
    tiles: list[Image.Image] = []
    missed_tiles: list[Image.Image] = []
    counts: dict[str, tuple[int, int]] = {}
    missed: dict[str, int] = dict.fromkeys(MISSED_AS, 0)
    by_class: dict[str, int] = {}  # labelled points per morphology class
    missed_by_class: dict[str, int] = {}
    for item in fields:
        if not (item.complete or args.missed_sheet):
            continue
        with Image.open(item.image) as opened:
            rgb = np.asarray(opened.convert("RGB"))
        objects = detector.detect(rgb, CHULA_MICRONS_PER_PIXEL).objects
        red: list[Any] = [d for d in objects if d.kind == "red_cell"]
        labels = item.of_kind("red_cell")
        pairs = match(red, labels, radius)
        if args.missed_sheet:
            for label in labels:
                name = label.label or "?"
                by_class[name] = by_class.get(name, 0) + 1
            found_labels = {j for _, j in pairs}
            for j, label in enumerate(labels):
                if j in found_labels:
                    continue
                what = missed_as(label.x, label.y, objects, radius)
                missed[what] += 1
                name = label.label or "?"
                missed_by_class[name] = missed_by_class.get(name, 0) + 1
                title = f"{item.image.stem} pt {j}: {what}"
                missed_tiles.append(tile_of(rgb, item, red, None, title, at=label))
        if not item.complete:
            continue
        matched = {i for i, _ in pairs}
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
    if args.missed_sheet:
        print(
            f"labelled red cells missed, of {sum(by_class.values())}, by what is there: "
            f"{json.dumps(missed)}"
        )
        print("recall per class (labelled):")
        for name in sorted(by_class, key=lambda c: -by_class[c]):
            recall = 1 - missed_by_class.get(name, 0) / by_class[name]
            print(f"  {name:14s} {recall:.3f} ({by_class[name]})")
        save_sheet(missed_tiles, args.missed_sheet, columns=6)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        result = {
            "command": " ".join(["research/chula_extras.py", *sys.argv[1:]]),
            "detector": str(args.detector),
            "extras_per_smear": counts,
            "labels": sum(by_class.values()) if args.missed_sheet else None,
            "missed_as": missed if args.missed_sheet else None,
            "labels_by_class": by_class if args.missed_sheet else None,
            "missed_by_class": missed_by_class if args.missed_sheet else None,
        }
        args.out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
