"""Would nuclei that no detection covers find the white cells the detector missed? (issue #11)

On a laboratory it never saw, the detector finds nothing at some whole white cells (deep purple
neutrophils, lymphocytes, monocytes: docs/detection.md, "White cells missed altogether"). Their
nucleus is what the nucleus check (core/detect/nucleus.py) already recognises inside a red
detection: darker in green optical density than the field's red cells by `darkness`, and bluer
(blue/green OD under `blueness` of theirs). This probe looks for such pixels **outside every
detected object's box** (core.detect.nucleus.nuclear_regions; the detector itself adds the
regions of FREE_NUCLEUS_MIN_UM2 and more as white cells, turned off here), joins them into
connected regions, and keeps regions of at least an area (um^2, at the field's scale). For
each area it counts, per source and split:

- white cells recovered: labelled white cells that no detected white cell matches and that
  hold a kept region's centre;
- false finds: kept regions in no labelled white cell's box (on Chula, which labels no white
  cell, every find; some may be real white cells there, so it is an upper bound);
- second finds: kept regions in the box of a labelled white cell that the detector did find
  (a piece of its nucleus outside the detected box), which would report that cell twice.

And, to show the threshold's margin on both sides, the largest region of nuclear pixels inside
each labelled platelet and white cell (clear of the edge) whether or not a detection covers it:
a platelet, or a clump of them, would be taken for a white cell only with one region of the
threshold's area, and a white cell the network misses is recovered only with one.

Choose on validation fields only.

    python research/free_nuclei.py --detector runs/detector-loso-raabin-sized/detector [--out F]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from core.detect.learned import CellDetector
from core.detect.nucleus import FREE_NUCLEUS_MIN_UM2, SHIPPED_RULE, nuclear_regions
from research.probe_fields import add_field_arguments, command_line, probe_fields, write_result
from training.detect.evaluate import Found, in_box, match

AREAS_UM2 = (4.0, 8.0, 12.0, 16.0, 24.0, 32.0)


def free_regions(
    rgb: np.ndarray, objects: list[Any], microns_per_pixel: float
) -> list[tuple[float, float, float]]:
    """(x, y, area in um^2) of each region of nuclear pixels outside every detected object's box
    (core.detect.nucleus.nuclear_regions, the shipped rule's pixel test)."""
    reference = [o.box for o in objects if o.kind == "red_cell"]
    boxes = [o.box for o in objects]
    if SHIPPED_RULE is None:  # the service runs without the nucleus check: no colours to test
        return []
    return [
        ((b[0] + b[2]) / 2, (b[1] + b[3]) / 2, area)
        for b, area in nuclear_regions(rgb, boxes, reference, SHIPPED_RULE, microns_per_pixel)
    ]


def largest_regions(
    rgb: np.ndarray, objects: list[Any], labelled: list[Any], microns_per_pixel: float
) -> list[float]:
    """For each of `labelled` (objects with a box), the area (um^2) of the largest region of
    nuclear pixels whose centre lies in its box, every detection's box included in the search
    (0.0 where there is none): what the free-nucleus step would see there if the network had
    found nothing."""
    if SHIPPED_RULE is None or not labelled:
        return [0.0] * len(labelled)
    reference = [o.box for o in objects if o.kind == "red_cell"]
    regions = nuclear_regions(rgb, [], reference, SHIPPED_RULE, microns_per_pixel)
    centres = [((b[0] + b[2]) / 2, (b[1] + b[3]) / 2, area) for b, area in regions]
    return [
        max((a for x, y, a in centres if in_box(x, y, item.box)), default=0.0) for item in labelled
    ]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_field_arguments(ap, chula_per_split=40)
    ap.add_argument("--out", type=Path)
    args = ap.parse_args(argv)
    started = time.perf_counter()
    detector = CellDetector.load(args.detector)
    detector.free_nucleus_um2 = None  # the regions it would add are what is measured
    fields, scales = probe_fields(args.yolo, args.chula, args.chula_fields)
    # (source, split) -> counts per area
    tally: dict[str, dict[str, Any]] = {}
    for n, (item, split) in enumerate(fields, 1):
        with Image.open(item.image) as opened:
            rgb = np.asarray(opened.convert("RGB"))
        scale = scales[item.source]
        objects = detector.detect(rgb, scale).objects
        whites = [w for w in item.of_kind("white_cell") if w.box is not None]
        found_white = [
            Found(o.kind, o.x, o.y, o.box, o.at_border) for o in objects if o.kind == "white_cell"
        ]
        matched = {j for _, j in match(found_white, whites, 0.0)}
        missed = [w for j, w in enumerate(whites) if j not in matched and not item.at_border(w)]
        regions = free_regions(rgb, objects, scale)
        row = tally.setdefault(
            f"{item.source}:{split}",
            {
                "fields": 0,
                "whites": 0,
                "missed_whole": 0,
                "by_area": {},
                "largest_region_um2": {"platelet": [], "white_cell": []},
            },
        )
        for kind, areas in row["largest_region_um2"].items():
            labelled = [
                o for o in item.of_kind(kind) if o.box is not None and not item.at_border(o)
            ]
            areas.extend(round(a, 1) for a in largest_regions(rgb, objects, labelled, scale))
        row["fields"] += 1
        row["whites"] += len(whites)
        row["missed_whole"] += len(missed)
        for area in AREAS_UM2:
            kept = [(x, y) for x, y, a in regions if a >= area]
            recovered = sum(any(in_box(x, y, w.box) for x, y in kept) for w in missed)
            false = sum(not any(in_box(x, y, w.box) for w in whites) for x, y in kept)
            found_boxes = [w.box for j, w in enumerate(whites) if j in matched]
            second = sum(any(in_box(x, y, b) for b in found_boxes) for x, y in kept)
            counts = row["by_area"].setdefault(
                str(area), {"recovered": 0, "false_finds": 0, "second_finds": 0}
            )
            counts["recovered"] += recovered
            counts["false_finds"] += false
            counts["second_finds"] += second
        if n % 50 == 0:
            print(f"  {n}/{len(fields)} fields", flush=True)
    print("\nwhole white cells missed, recovered / missed; false finds; second finds (fields)")
    print(f"{'source:split':14s} " + " ".join(f"{f'>= {a:g} um2':>15s}" for a in AREAS_UM2))
    for key in sorted(tally):
        row = tally[key]
        cells = [
            f"{c['recovered']}/{row['missed_whole']}; {c['false_finds']}; {c['second_finds']}"
            for c in (row["by_area"][str(a)] for a in AREAS_UM2)
        ]
        print(f"{key:14s} " + " ".join(f"{c:>15s}" for c in cells) + f"  ({row['fields']})")
    print(
        "\nlargest nuclear region inside each labelled object (um^2): n, median, max, "
        f">= {FREE_NUCLEUS_MIN_UM2:g}"
    )
    for key in sorted(tally):
        for kind, areas in tally[key]["largest_region_um2"].items():
            if areas:
                print(
                    f"{key:14s} {kind:10s} {len(areas):4d} {np.median(areas):6.1f} "
                    f"{max(areas):6.1f} {sum(a >= FREE_NUCLEUS_MIN_UM2 for a in areas):4d}"
                )
    if args.out:
        write_result(
            args.out,
            {
                "command": command_line("research/free_nuclei.py", argv),
                "detector": str(args.detector),
                "pixel_rule": (SHIPPED_RULE.key() if SHIPPED_RULE else None),
                "areas_um2": list(AREAS_UM2),
                "by_source_split": tally,
                "seconds": time.perf_counter() - started,
            },
        )
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
