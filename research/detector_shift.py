"""How the detector holds up under shifts beyond its training augmentation (issue #11).

    .venv/bin/python research/detector_shift.py --detector models/detector \
        [--shifts clean,stain-strong,...] [--without-scale clean,low-res,...] \
        [--nucleus-rule KEY|off] [--out research/results/detection/shift.json]

The detector is checked on laboratories in none of our data sets. Their microscopes and stains
differ from ours in ways the training augmentation covers only so far (training/augment.py: each
stain's density x0.75-1.25, gamma 0.7-1.4, blur sigma up to 1.5 px at the working scale, JPEG
quality 30-90). This takes the test fields that `evaluate-detector` measures (txl-pbc's test
split, the classifier card's Chula test smears), applies each shift below to every field at its
own scale (so labels stay where they are), runs the detector with the field's scale given (and,
for the shifts named by --without-scale, without one) and reports per source what
`evaluate-detector` reports: red-cell recall away from the border, one-to-one precision, white
cells counted as red (box), platelet recall, found / there; and, without a scale, the scale
estimate's median error.

Shifts (each further than training goes, or not in training at all):
- `stain-strong`, `stain-weak`: both stains' optical density x1.6 / x0.5 (over- and under-
  stained, washed out);
- `stain-basic`: haematoxylin x1.6 and eosin x0.7 (a bluish stain: red cells bluer, the nucleus
  check's risk); `stain-acid`: haematoxylin x0.6 and eosin x1.6 (pink, pale nuclei);
- `blur`: Gaussian blur, sigma 0.5 um (defocus);
- `low-res`: down to 0.6 um per pixel and back up (a coarse camera or a 40x objective);
- `noise`: Gaussian noise, sigma 12 grey levels (a dim, high-gain camera);
- `vignette`: brightness falling to 55 % in the corners (uneven illumination);
- `dark`: every channel x0.6; `jpeg-15`: a JPEG round trip at quality 15.

And, named with --shifts, harsher ones to find where it breaks: `stain-basic-2.5` (haematoxylin
x2.5, eosin x0.5), `stain-weak-0.3` (both x0.3), `blur-1um`, `low-res-0.9` (0.9 um per pixel,
a red cell ~8 px across), `jpeg-5`.
"""

from __future__ import annotations

import argparse
import io
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageFilter
from tqdm import tqdm

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from core.detect.learned import CellDetector  # noqa: E402
from core.detect.nucleus import NucleusRule  # noqa: E402
from training.augment import _HED_FROM_RGB, _RGB_FROM_HED  # noqa: E402
from training.detect.data import load_fields  # noqa: E402
from training.detect.evaluate import LearnedDetector, evaluate_fields, scale_errors  # noqa: E402

Shift = Callable[[np.ndarray, float, np.random.Generator], np.ndarray]


def stains(h: float, e: float) -> Shift:
    """Scale haematoxylin's and eosin's optical density (Ruifrok-Johnston vectors)."""

    def shift(rgb: np.ndarray, mpp: float, rng: np.random.Generator) -> np.ndarray:
        od = -np.log(np.clip(rgb.astype(np.float64), 1, 255) / 255.0)
        hed = od @ _HED_FROM_RGB
        hed[..., 0] *= h
        hed[..., 1] *= e
        return np.clip(255.0 * np.exp(-(hed @ _RGB_FROM_HED)), 0, 255).astype(np.uint8)

    return shift


def blur(sigma_um: float) -> Shift:
    def shift(rgb: np.ndarray, mpp: float, rng: np.random.Generator) -> np.ndarray:
        radius = sigma_um / mpp  # Pillow's GaussianBlur radius is the standard deviation
        return np.asarray(Image.fromarray(rgb).filter(ImageFilter.GaussianBlur(radius)))

    return shift


def low_res(um_per_px: float) -> Shift:
    def shift(rgb: np.ndarray, mpp: float, rng: np.random.Generator) -> np.ndarray:
        height, width = rgb.shape[:2]
        factor = min(1.0, mpp / um_per_px)
        small = Image.fromarray(rgb).resize(
            (max(1, round(width * factor)), max(1, round(height * factor))), Image.Resampling.BOX
        )
        return np.asarray(small.resize((width, height), Image.Resampling.BILINEAR))

    return shift


def noise(rgb: np.ndarray, mpp: float, rng: np.random.Generator) -> np.ndarray:
    return np.clip(rgb + rng.normal(0, 12, rgb.shape), 0, 255).astype(np.uint8)


def vignette(rgb: np.ndarray, mpp: float, rng: np.random.Generator) -> np.ndarray:
    height, width = rgb.shape[:2]
    y, x = np.mgrid[0:height, 0:width]
    r2 = ((x - width / 2) / (width / 2)) ** 2 + ((y - height / 2) / (height / 2)) ** 2
    gain = 1 - 0.45 * r2 / 2  # 1 in the middle, 0.55 in the corners
    return np.clip(rgb * gain[..., None], 0, 255).astype(np.uint8)


def dark(rgb: np.ndarray, mpp: float, rng: np.random.Generator) -> np.ndarray:
    return (rgb * 0.6).astype(np.uint8)


def jpeg(quality: int) -> Shift:
    def shift(rgb: np.ndarray, mpp: float, rng: np.random.Generator) -> np.ndarray:
        buffer = io.BytesIO()
        Image.fromarray(rgb).save(buffer, format="JPEG", quality=quality)
        return np.asarray(Image.open(io.BytesIO(buffer.getvalue())).convert("RGB"))

    return shift


SHIFTS: dict[str, Shift] = {
    "clean": lambda rgb, mpp, rng: rgb,
    "stain-strong": stains(1.6, 1.6),
    "stain-weak": stains(0.5, 0.5),
    "stain-basic": stains(1.6, 0.7),
    "stain-acid": stains(0.6, 1.6),
    "blur": blur(0.5),
    "low-res": low_res(0.6),
    "noise": noise,
    "vignette": vignette,
    "dark": dark,
    "jpeg-15": jpeg(15),
    # Harsher still: where does it break?
    "stain-basic-2.5": stains(2.5, 0.5),
    "stain-weak-0.3": stains(0.3, 0.3),
    "blur-1um": blur(1.0),
    "low-res-0.9": low_res(0.9),
    "jpeg-5": jpeg(5),
}
# The default run: the first eleven (the harsher ones on request, --shifts).
DEFAULT_SHIFTS = list(SHIFTS)[:11]
FIGURES = (
    "red_recall_interior",
    "red_precision_one_to_one",
    "white_counted_as_red",
    "white_missed_counted_as_red",
    "platelet_recall",
    "found_over_there_mean",
)


def run(
    fields: list[Any],
    scales: dict[str, float],
    detector: CellDetector,
    shift: Shift,
    give_scale: bool,
) -> dict[str, Any]:
    learned = LearnedDetector(detector)
    position = {id(item): k for k, item in enumerate(fields)}  # each field's own noise seed

    def shifted(rgb: np.ndarray, item: Any) -> np.ndarray:
        return shift(rgb, scales[item.source], np.random.default_rng(position[id(item)]))

    measured, rows = evaluate_fields(
        fields, learned, lambda f: scales[f.source], give_scale, progress=False, prepare=shifted
    )
    by_source = {s: figures for s, figures in measured.items() if s != "all"}
    if not give_scale:
        for source, err in scale_errors(rows, learned.scales_used, scales).items():
            by_source[source]["scale_median_error"] = err["median_relative_error"]
    return by_source


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--detector", type=Path, default=ROOT / "models" / "detector")
    ap.add_argument("--yolo", type=Path, default=ROOT.parent / "shared/datasets/txl-pbc")
    ap.add_argument("--chula", type=Path, default=ROOT.parent / "shared/datasets/chula-rbc-12")
    ap.add_argument(
        "--model",
        type=Path,
        default=ROOT / "models" / "default",
        help="the classifier whose card lists Chula's test smears",
    )
    ap.add_argument("--shifts", default=",".join(DEFAULT_SHIFTS), help="of: " + ", ".join(SHIFTS))
    ap.add_argument("--without-scale", default="", help="shifts to run without a scale too")
    ap.add_argument(
        "--nucleus-rule",
        help='the nucleus check\'s rule by key (research/nucleus_probe.py) or "off"; '
        "default: shipped",
    )
    ap.add_argument(
        "--no-free-nuclei",
        action="store_true",
        help="leave out the step that reports nuclei no detection covers as white cells",
    )
    ap.add_argument("--out", type=Path, default=ROOT / "docs" / "detection" / "shift.json")
    args = ap.parse_args(argv)
    names = [s for s in args.shifts.split(",") if s]
    unscaled = [s for s in args.without_scale.split(",") if s]
    if unknown := set(names + unscaled) - set(SHIFTS):
        ap.error(f"unknown shift(s) {sorted(unknown)}; known: {', '.join(SHIFTS)}")
    started = time.perf_counter()
    card = json.loads((args.model / "model_card.json").read_text())
    stems = [Path(s).stem for s in card["dataset"]["test_smears"]]
    fields, scales = load_fields([args.yolo], chula=args.chula, chula_stems=stems, progress=False)
    fields = [f for f in fields if f.split == "test" or f.source == "chula"]
    detector = CellDetector.load(args.detector)
    if args.nucleus_rule is not None:
        off = args.nucleus_rule == "off"
        detector.nucleus_rule = None if off else NucleusRule.from_key(args.nucleus_rule)
    if args.no_free_nuclei:
        detector.free_nucleus_um2 = None
    results: dict[str, Any] = {}
    for name in tqdm(names + [n for n in unscaled if n not in names], desc="shifts"):
        shift = SHIFTS[name]
        results[name] = {}
        if name in names:
            results[name]["with scale"] = run(fields, scales, detector, shift, True)
        if name in unscaled:
            results[name]["without scale"] = run(fields, scales, detector, shift, False)
    head = "| shift | run | source | " + " | ".join(FIGURES) + " |"
    lines = [head, "|" + "---|" * (3 + len(FIGURES))]
    for name, by_mode in results.items():
        for mode, by_source in by_mode.items():
            for source, fig in by_source.items():
                cells = ["-" if fig.get(k) is None else f"{fig[k]:.3f}" for k in FIGURES]
                if "scale_median_error" in fig:
                    cells[-1] += f" (scale error {fig['scale_median_error']:.3f})"
                lines.append(f"| {name} | {mode} | {source} | " + " | ".join(cells) + " |")
    table = "\n".join(lines)
    print(table)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "command": " ".join(
            ["research/detector_shift.py", *(sys.argv[1:] if argv is None else argv)]
        ),
        "detector": str(args.detector),
        "nucleus_rule": None if detector.nucleus_rule is None else detector.nucleus_rule.key(),
        "free_nucleus_um2": detector.free_nucleus_um2,
        "results": results,
        "seconds": round(time.perf_counter() - started, 1),
    }
    args.out.write_text(json.dumps(payload, indent=1) + "\n")
    args.out.with_suffix(".md").write_text(table + "\n")
    print(f"wrote {args.out}; {payload['seconds']} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
