"""Which counted red cells are white cells, and would their size give them away? (issue #11)

    .venv/bin/python research/white_as_red.py --detector models/detector [--split val] \
        [--sheet research/results/detection/white-as-red-val.png]

Runs a detector on the labelled fields of one split of txl-pbc (each source's derived scale
given) and sorts every counted red cell (clear of the border) into: a real red cell (matches a
labelled one), a white cell taken for red (unmatched, its centre inside a labelled white cell's
box) or another stray. For each it takes the detection's side over the median side of the
field's red detections, its score, and whether its centre lies inside a detected white cell's
box (the central 80 % of each side). Prints, per threshold on that ratio, how many of each
group a rule "a red detection larger than ratio x the field's median is not a red cell" would
drop. Choose on the validation split only; the test split is for reporting.

`--sheet` also draws every white cell taken for red, for a person to look at: a window around the
labelled white cell, labelled red cells in green, labelled white cells in blue, the detector's
white cells in magenta, its counted red cells as yellow boxes and the one taken for red as a red
box with a cross; the title says whether the detector found that white cell as a white cell.
`--missed-sheet` draws every labelled white cell that no detected white cell matches (one to one,
as `evaluate-detector`'s white-cell recall), its title saying what the detector put there
instead: a counted red cell, a red cell set aside at the border, a platelet, or nothing.
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
from core.detect.learned import CellDetector
from training.detect.data import load_fields
from training.detect.evaluate import in_box, in_ellipse, match

RATIOS = (1.3, 1.4, 1.5, 1.6, 1.7, 1.8, 2.0, 2.2)
INNER = 0.8  # the central share of a detected white cell's box (each side) that a red centre is in


def inside_box(x: float, y: float, box: tuple[float, float, float, float], inner: float) -> bool:
    """(x, y) within the central `inner` share of the box along each side."""
    cx, cy = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
    hw, hh = (box[2] - box[0]) * inner / 2, (box[3] - box[1]) * inner / 2
    return abs(x - cx) <= hw and abs(y - cy) <= hh


def red_groups(red: list[Any], item: Any, radius: float) -> list[str | None]:
    """Each red detection of a labelled field as "red" (matched one-to-one to a labelled red
    cell), "white" (unmatched, its centre in a labelled white cell's box), "stray" (neither), or
    None at the image border (not counted)."""
    matched = {i for i, _ in match(red, item.of_kind("red_cell"), radius)}
    whites = [w.box for w in item.of_kind("white_cell") if w.box is not None]
    groups: list[str | None] = []
    for i, d in enumerate(red):
        if d.at_border:
            groups.append(None)
        elif i in matched:
            groups.append("red")
        elif any(in_box(d.x, d.y, b) for b in whites):
            groups.append("white")
        else:
            groups.append("stray")
    return groups


SHEET_TILE = 400  # px per case on the sheet


def holder_of(item: Any, d: Any) -> tuple[float, float, float, float]:
    """The labelled white cell's box that holds detection `d`'s centre."""
    whites = [w.box for w in item.of_kind("white_cell") if w.box is not None]
    return next(b for b in whites if in_box(d.x, d.y, b))


def case_tile(
    rgb: np.ndarray,
    item: Any,
    found: list[Any],
    culprit: Any | None,
    holder: tuple[float, float, float, float],
    title: str,
) -> Image.Image:
    """A window of the field around `holder`, a labelled white cell (holding `culprit`'s centre,
    when one is given), drawn."""
    whites = [w.box for w in item.of_kind("white_cell") if w.box is not None]
    side = 2.2 * max(holder[2] - holder[0], holder[3] - holder[1])
    cx, cy = (holder[0] + holder[2]) / 2, (holder[1] + holder[3]) / 2
    x0, y0 = max(0, int(cx - side / 2)), max(0, int(cy - side / 2))
    x1, y1 = min(rgb.shape[1], int(cx + side / 2)), min(rgb.shape[0], int(cy + side / 2))
    tile = Image.fromarray(rgb).convert("RGB")
    draw = ImageDraw.Draw(tile)
    for o in item.of_kind("red_cell"):
        if o.box is not None:
            draw.rectangle(o.box, outline=(0, 200, 0), width=2)
    for b in whites:
        draw.rectangle(b, outline=(0, 90, 255), width=3)
    for d in found:
        if d.kind == "white_cell":
            draw.rectangle(d.box, outline=(255, 0, 255), width=2)
        elif d.kind == "red_cell" and not d.at_border and d is not culprit:
            draw.rectangle(d.box, outline=(255, 220, 0), width=1)
    if culprit is not None:
        draw.rectangle(culprit.box, outline=(255, 0, 0), width=3)
        x, y, r = culprit.x, culprit.y, 6
        draw.line((x - r, y - r, x + r, y + r), fill=(255, 0, 0), width=3)
        draw.line((x - r, y + r, x + r, y - r), fill=(255, 0, 0), width=3)
    tile = tile.crop((x0, y0, x1, y1))
    tile.thumbnail((SHEET_TILE, SHEET_TILE - 14))
    out = Image.new("RGB", (SHEET_TILE, SHEET_TILE), "white")
    out.paste(tile, (0, 14))
    ImageDraw.Draw(out).text((2, 1), title, fill=(0, 0, 0))
    return out


def in_place_of(box: tuple[float, float, float, float], found: list[Any], spare: set[int]) -> str:
    """What the detector put inside a labelled white cell's box that it did not find as white:
    of its red cells only those that match no labelled red cell (`spare`, indices into
    `found`), so that red cells in the box's corners are not taken for the white cell."""
    inside = [
        (i, d) for i, d in enumerate(found) if in_box(d.x, d.y, box) and d.kind != "white_cell"
    ]
    if any(d.kind == "red_cell" and not d.at_border and i in spare for i, d in inside):
        return "counted as red"
    if any(d.kind == "red_cell" and i in spare for i, d in inside):
        return "red, set aside at the border"
    if any(d.kind == "platelet" for _, d in inside):
        return "platelet"
    return "nothing"


def missed_white_tiles(
    rgb: np.ndarray, item: Any, found: list[Any], radius: float
) -> list[tuple[str, Image.Image]]:
    """(what happened, a drawn tile) for each labelled white cell that no detected white cell
    matches: whether the label is cut by the image's edge and what the detector put there."""
    whites = item.of_kind("white_cell")
    matched = {j for _, j in match([d for d in found if d.kind == "white_cell"], whites, radius)}
    red_at = [i for i, d in enumerate(found) if d.kind == "red_cell"]
    red_pairs = match([found[i] for i in red_at], item.of_kind("red_cell"), radius)
    spare = set(red_at) - {red_at[i] for i, _ in red_pairs}
    tiles: list[tuple[str, Image.Image]] = []
    for j, w in enumerate(whites):
        if j in matched or w.box is None:
            continue
        edge = "cut by the edge, " if item.at_border(w) else ""
        what = f"{edge}{in_place_of(w.box, found, spare)}"
        title = f"{item.source} {item.image.name[:8]} missed ({what})"
        tiles.append((f"{item.source}: {what}", case_tile(rgb, item, found, None, w.box, title)))
    return tiles


def save_sheet(tiles: list[Image.Image], path: Path, columns: int = 3) -> None:
    """The tiles (all of one size) in rows of `columns`, saved as one image."""
    side = tiles[0].width if tiles else 1
    rows = max(1, -(-len(tiles) // columns))
    sheet = Image.new("RGB", (columns * side, rows * side), "white")
    for k, tile in enumerate(tiles):
        sheet.paste(tile, ((k % columns) * side, (k // columns) * side))
    path.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(path)
    print(f"wrote {path} ({len(tiles)} cases)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--detector", type=Path, default=Path("models/detector"))
    ap.add_argument("--yolo", type=Path, default=Path("../shared/datasets/txl-pbc"))
    ap.add_argument("--split", default="val")
    ap.add_argument(
        "--sheet", type=Path, help="draw each white cell taken for red into this image (.png, .jpg)"
    )
    ap.add_argument(
        "--missed-sheet", type=Path, help="draw each white cell not found as white into this image"
    )
    args = ap.parse_args()
    tiles: list[Image.Image] = []
    missed: list[tuple[str, Image.Image]] = []
    detector = CellDetector.load(args.detector)
    fields, scales = load_fields(yolo=[args.yolo], progress=False)
    # source, group, size ratio, score, centre inside a detected white cell
    rows: list[tuple[str, str, float, float, bool]] = []
    for item in (f for f in fields if f.split == args.split):
        with Image.open(item.image) as image:
            rgb = np.asarray(image.convert("RGB"))
        found = detector.detect(rgb, scales[item.source]).objects
        red = [d for d in found if d.kind == "red_cell"]
        found_whites = [d.box for d in found if d.kind == "white_cell"]
        if args.missed_sheet is not None:
            missed += missed_white_tiles(rgb, item, found, 0.0)
        if len(red) < 3:
            continue
        sides = np.asarray([((d.box[2] - d.box[0]) + (d.box[3] - d.box[1])) / 2 for d in red])
        median = float(np.median(sides))
        for i, (d, group) in enumerate(zip(red, red_groups(red, item, 0.0), strict=True)):
            if group is None:
                continue
            inside = any(inside_box(d.x, d.y, b, INNER) for b in found_whites)
            if group == "white" and args.sheet is not None:
                holder = holder_of(item, d)
                seen = any(in_box(w.x, w.y, holder) for w in found if w.kind == "white_cell")
                where = "within" if in_ellipse(d.x, d.y, holder) else "box corner"
                title = (
                    f"{item.source} {item.image.name[:8]} {where}; white cell"
                    f" {'found' if seen else 'missed'}"
                )
                tiles.append(case_tile(rgb, item, found, d, holder, title))
            rows.append((item.source, group, float(sides[i] / median), d.score, inside))
    sources = sorted({r[0] for r in rows})
    print(f"split {args.split}: counted red detections per group and source")
    for source in sources:
        mine = [r for r in rows if r[0] == source]
        counts = {g: sum(r[1] == g for r in mine) for g in ("red", "white", "stray")}
        whites = sorted(round(r[2], 2) for r in mine if r[1] == "white")
        in_white = {g: sum(r[4] for r in mine if r[1] == g) for g in ("red", "white", "stray")}
        print(f"  {source}: {counts}; white-as-red size ratios {whites}")
        print(f"    centre inside a detected white cell (central {INNER:.0%}): {in_white}")
    print("\nratio  " + "  ".join(f"{s:>24}" for s in sources) + "   (red dropped / white dropped)")
    table = {}
    for cut in RATIOS:
        line = []
        for source in sources:
            mine = [r for r in rows if r[0] == source]
            reds = [r for r in mine if r[1] == "red"]
            taken = [r for r in mine if r[1] == "white"]
            dr = sum(r[2] > cut for r in reds)
            dw = sum(r[2] > cut for r in taken)
            table[f"{cut}:{source}"] = {"red": [dr, len(reds)], "white": [dw, len(taken)]}
            line.append(f"{dr:>5}/{len(reds):<5} {dw:>3}/{len(taken):<3}")
        print(f"{cut:>5}  " + "  ".join(f"{c:>24}" for c in line))
    print(json.dumps(table))
    if args.sheet is not None:
        save_sheet(tiles, args.sheet)
    if args.missed_sheet is not None:
        in_split = [f for f in fields if f.split == args.split]
        labelled = {
            source: sum(len(f.of_kind("white_cell")) for f in in_split if f.source == source)
            for source in sorted({f.source for f in in_split})
        }
        print(
            f"white cells not found as white (of those labelled, split {args.split}: {labelled}):"
        )
        for what in sorted({w for w, _ in missed}):
            print(f"  {what}: {sum(w == what for w, _ in missed)}")
        save_sheet([tile for _, tile in missed], args.missed_sheet)


if __name__ == "__main__":
    main()
