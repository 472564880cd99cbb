"""Can a field's own pixels say it is out of focus? (issue #11)

    .venv/bin/python research/focus_probe.py [--chula-fields 60] \
        [--out research/results/detection/focus-probe.json]

The detector misses red cells on a defocused field (research/detector_shift.py: blurred by 1 um,
recall 0.79-0.95) while its precision holds, so the answer looks sound and is not. This
measures `core.detect.focus.sharpness` (at the detector's working scale, as `CellDetector`
does) on txl-pbc's validation and test fields and a seeded sample of Chula fields, each as it
is and blurred by a Gaussian of sigma
0.25, 0.5, 0.75 and 1.0 um (at its own scale), and chooses on the validation fields a threshold
under which a field is called out of focus: the highest that flags at most 2 % of the fields as
they are on every source. It reports, per source and split, the share of fields flagged at each
blur.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image, ImageFilter
from tqdm import tqdm

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from core.detect.focus import sharpness  # noqa: E402
from core.detect.learned import DetectorCard, resample  # noqa: E402
from research.probe_fields import (  # noqa: E402
    add_field_arguments,
    command_line,
    probe_fields,
    write_result,
)

BLURS_UM = (0.0, 0.25, 0.5, 0.75, 1.0)
SOURCES = ("bccd", "bcd", "raabin", "chula")
MAX_FLAGGED = 0.02


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_field_arguments(ap, chula_per_split=60)
    ap.add_argument("--out", type=Path, default=ROOT / "docs" / "detection" / "focus-probe.json")
    args = ap.parse_args(argv)
    started = time.perf_counter()
    working = DetectorCard.load(args.detector).microns_per_pixel
    chosen, scales = probe_fields(args.yolo, args.chula, args.chula_fields)
    # (source, split) -> blur -> sharpness of each field
    values: dict[str, dict[str, list[float]]] = {}
    for item, split in tqdm(chosen, desc="fields", mininterval=5):
        with Image.open(item.image) as image:
            rgb = image.convert("RGB")
        mpp = scales[item.source]
        for blur in BLURS_UM:
            shown = rgb.filter(ImageFilter.GaussianBlur(blur / mpp)) if blur else rgb
            value = sharpness(resample(np.asarray(shown), mpp / working))
            values.setdefault(f"{item.source}:{split}", {}).setdefault(str(blur), []).append(value)

    def flagged(where: str, blur: float, threshold: float) -> float:
        return float(np.mean(np.array(values[where][str(blur)]) < threshold))

    # The highest threshold that flags at most MAX_FLAGGED of each source's sharp fields.
    candidates = sorted({v for w in values for v in values[w]["0.0"] if w.endswith(":val")})
    threshold = max(
        (t for t in candidates if all(flagged(f"{s}:val", 0.0, t) <= MAX_FLAGGED for s in SOURCES)),
        default=0.0,
    )
    table = {
        where: {
            str(blur): {
                "flagged": flagged(where, blur, threshold),
                "median_sharpness": float(np.median(values[where][str(blur)])),
            }
            for blur in BLURS_UM
        }
        for where in sorted(values)
    }
    print(f"threshold (chosen on validation): {threshold:.4f}")
    print("source:split   " + "  ".join(f"blur {b} um" for b in BLURS_UM))
    for where, row in table.items():
        print(
            f"{where:13s}  "
            + "  ".join(
                f"{row[str(b)]['flagged']:5.2f} ({row[str(b)]['median_sharpness']:.3f})"
                for b in BLURS_UM
            )
        )
    result = {
        "command": command_line("research/focus_probe.py", argv),
        "working_microns_per_pixel": working,
        "max_flagged_sharp": MAX_FLAGGED,
        "threshold": threshold,
        "by_source": table,
        "seconds": round(time.perf_counter() - started, 1),
    }
    write_result(args.out, result)
    print(f"wrote {args.out}; {result['seconds']} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
