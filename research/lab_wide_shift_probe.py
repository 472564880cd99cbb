"""Is the simulated laboratory's stain shift a laboratory's? And what does one cost, and win back?

    .venv/bin/python research/lab_wide_shift_probe.py --data /tmp/chula-crops \
        --out research/results/adapt/lab-wide-shift.json

bench/bench_shift.py's `recolour` (used by bench/bench_adapt.py, bench/bench_lab_loop.py and the
label-free probes) maps each crop's own cell and background colour statistics to a txl-pbc
source's. Every crop then has the same mean colour and spread: a pale hypochromic cell and a
dense spherocyte are made alike along with the stain. A laboratory's stain is one map for all
its cells. This probe measures the shipped model under both:

- `per-crop`: `recolour(crop, source)` as the benches do;
- `lab-wide`: `recolour(crop, source, own=chula)`: one map, from Chula's statistics (its train
  fields, measured as the sources' are) to the source's, for every crop;

and, for the lab-wide shift, two label-free corrections estimated from the laboratory's fields
(half of Chula's test smears, recoloured the same way, no label) and measured on the crops of
the other half:

- `two-point`: each RGB channel mapped by the line through the laboratory's median cell and
  background colours to the training fields' (research/lab_colour_correction.py's map);
- `reinhard-back`: the laboratory's CIELAB statistics (measured on its fields as Chula's are)
  mapped back to Chula's, one map for every crop. The shift is itself a Reinhard map, so this
  is the correction made for it: an upper bound, not a result. A laboratory's cell colours
  depend on its patients (pale hypochromic cells, dense spherocytes) as well as its stain, so
  the same correction is also estimated from a third of its fields only: those with the most
  normal cells (a clinic of healthy donors) and those with the fewest.

Accuracy is over the crops whose label the model knows.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.bench_shift import (  # noqa: E402
    FIELDS_PER_SOURCE,
    STATS_SEED,
    ColourStats,
    _to_lab,
    cell_mask,
    colour_stats,
    recolour,
)
from core.classify.calibration import field_colour_descriptor  # noqa: E402
from core.classify.predictor import Predictor  # noqa: E402
from research.lab_colour_correction import rgb_of, two_point_map  # noqa: E402


def field_stats(fields: list[np.ndarray]) -> ColourStats:
    """CIELAB statistics of fields as bench_shift measures a source's: the mean over fields of
    each field's mean, the pooled within-field std; cells are the pixels darker than Otsu's
    threshold on green (`cell_mask`: Chula has label points, not boxes)."""
    means: dict[str, list[np.ndarray]] = {"cell": [], "background": []}
    variances: dict[str, list[np.ndarray]] = {"cell": [], "background": []}
    for rgb in fields:
        cells = cell_mask(rgb)
        for name, region in (("cell", cells), ("background", ~cells)):
            lab = _to_lab(rgb[region][:, None, :])[:, 0, :]
            means[name].append(lab.mean(axis=0))
            variances[name].append(lab.var(axis=0))

    def three(values: np.ndarray) -> tuple[float, float, float]:
        return (float(values[0]), float(values[1]), float(values[2]))

    return ColourStats(
        cell_mean=three(np.mean(means["cell"], axis=0)),
        cell_std=three(np.sqrt(np.mean(variances["cell"], axis=0))),
        background_mean=three(np.mean(means["background"], axis=0)),
        background_std=three(np.sqrt(np.mean(variances["background"], axis=0))),
    )


def chula_field_stats(
    manifest: pd.DataFrame, chula: Path, n_fields: int, rng: np.random.Generator
) -> ColourStats:
    """`field_stats` of `n_fields` of Chula's train smears (`rng`'s choice), the reference
    every laboratory here is mapped from or back to."""
    smears = sorted(manifest[manifest.split == "train"].source_image.unique())
    fields = []
    for name in sorted(rng.choice(smears, size=n_fields, replace=False).tolist()):
        with Image.open(chula / "Dataset" / name) as opened:
            fields.append(np.asarray(opened.convert("RGB")))
    return field_stats(fields)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, required=True, help="an import-chula crop set")
    parser.add_argument("--chula", type=Path, default=ROOT.parent / "shared/datasets/chula-rbc-12")
    parser.add_argument("--txl", type=Path, default=ROOT.parent / "shared/datasets/txl-pbc")
    parser.add_argument("--model", type=Path, default=ROOT / "models" / "default")
    parser.add_argument("--colour-stats", type=Path, default=Path("/tmp/rbc-colour-stats.json"))
    parser.add_argument("--chula-fields", type=int, default=FIELDS_PER_SOURCE)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    started = time.time()
    predictor = Predictor.load(args.model, device="cpu", tta_views=1)
    assert predictor.calibration is not None and predictor.calibration.colours is not None
    reference = predictor.calibration.colours.reference
    train_cell = rgb_of(np.median(reference[:, 0:3], 0))
    train_background = rgb_of(np.median(reference[:, 3:6], 0))

    manifest = pd.read_csv(args.data / "manifest.csv")
    known = manifest.label.isin(predictor.classes)

    def field(name: str) -> np.ndarray:
        with Image.open(args.chula / "Dataset" / name) as opened:
            return np.asarray(opened.convert("RGB"))

    rng = np.random.default_rng(STATS_SEED)
    chula = chula_field_stats(manifest, args.chula, args.chula_fields, rng)
    print("chula", chula, flush=True)

    test = manifest[(manifest.split == "test") & known]
    smears = sorted(test.source_image.unique())
    lab_smears, measured_smears = smears[0::2], smears[1::2]
    measured = test[test.source_image.isin(measured_smears)]
    normal_share = (
        manifest[manifest.source_image.isin(lab_smears)]
        .assign(normal=lambda d: d.label == "normal")
        .groupby("source_image")
        .normal.mean()
        .sort_values()
    )
    third = max(1, len(normal_share) // 3)
    mix_thirds = {
        "least_normal_fields": set(normal_share.index[:third]),
        "most_normal_fields": set(normal_share.index[-third:]),
    }
    mix_normal_share = {
        k: round(float(normal_share[sorted(v)].mean()), 3) for k, v in mix_thirds.items()
    }
    print("normal share of the fields by mix", mix_normal_share, flush=True)
    labels = measured.label.to_numpy()
    crops = []
    for rel in measured.path:
        with Image.open(args.data / rel) as opened:
            crops.append(opened.convert("RGB"))

    def accuracy(images: list[Image.Image]) -> float:
        probs = predictor.forward(predictor.preprocess.batch(images), 1)
        return round(float((np.asarray(predictor.classes)[probs.argmax(1)] == labels).mean()), 4)

    rows: list[dict[str, object]] = [{"condition": "clean", "accuracy": accuracy(crops)}]
    print(json.dumps(rows[0]), flush=True)
    clean = float(rows[0]["accuracy"])  # type: ignore[arg-type]
    sources, _, _ = colour_stats(args.txl, args.colour_stats, FIELDS_PER_SOURCE, STATS_SEED, False)
    for source, entry in sources.items():
        target = ColourStats.from_dict(entry["stats"])
        per_crop = accuracy([recolour(c, target) for c in crops])
        shifted = [recolour(c, target, own=chula) for c in crops]
        lab_wide = accuracy(shifted)
        lab_fields = [
            np.asarray(recolour(Image.fromarray(field(name)), target, own=chula))
            for name in lab_smears
        ]
        descriptors = np.asarray([field_colour_descriptor(Image.fromarray(f)) for f in lab_fields])
        gain, offset = two_point_map(
            rgb_of(np.median(descriptors[:, 0:3], 0)),
            rgb_of(np.median(descriptors[:, 3:6], 0)),
            train_cell,
            train_background,
        )
        two_point = accuracy(
            [
                Image.fromarray(
                    np.clip(np.asarray(c, dtype=float) * gain + offset, 0, 255).astype(np.uint8)
                )
                for c in shifted
            ]
        )
        lab = field_stats(lab_fields)
        back = accuracy([recolour(c, chula, own=lab) for c in shifted])
        # The laboratory's class mix moves its cell statistics: the same correction estimated
        # from its most normal and its least normal fields only (a third each).
        by_mix = {}
        for mix, names in mix_thirds.items():
            stats = field_stats(
                [f for n, f in zip(lab_smears, lab_fields, strict=True) if n in names]
            )
            by_mix[mix] = accuracy([recolour(c, chula, own=stats) for c in shifted])

        def regained(value: float, shifted_accuracy: float = lab_wide) -> float | None:
            cost = clean - shifted_accuracy
            return None if cost <= 0 else round((value - shifted_accuracy) / cost, 3)

        rows.append(
            {
                "condition": source,
                "per_crop": per_crop,
                "lab_wide": lab_wide,
                "lab_wide_two_point": two_point,
                "lab_wide_reinhard_back": back,
                "regained_two_point": regained(two_point),
                "regained_reinhard_back": regained(back),
                "reinhard_back_by_mix": by_mix,
                "regained_by_mix": {k: regained(v) for k, v in by_mix.items()},
                "lab_stats": lab.__dict__,
                "target_stats": target.__dict__,
            }
        )
        print(json.dumps(rows[-1]), flush=True)
    result = {
        "command": " ".join(sys.argv),
        "chula_stats": chula.__dict__,
        "chula_fields": args.chula_fields,
        "lab_fields": len(lab_smears),
        "measured_crops": len(crops),
        "normal_share_of_mix_fields": mix_normal_share,
        "rows": rows,
        "seconds": round(time.time() - started, 1),
    }
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
