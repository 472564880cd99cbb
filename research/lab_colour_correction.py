"""Does a label-free colour correction per laboratory win back what a stain shift costs?

    .venv/bin/python research/lab_colour_correction.py --data /tmp/chula-crops \
        --out research/results/adapt/lab-colour-correction.json

The correction: each RGB channel mapped by the line through two points, the laboratory's median
red-cell colour to the training fields' and its median background colour to theirs (a white
balance on the plasma and the cells). Linear per channel, so it would fold into the model card's
normalisation at no serving cost. The laboratory's colours come from 40 of its fields (no label),
the training fields' from the shipped calibration's colour reference (CIELAB medians of cell and
background pixels, `field_colour_descriptor`). The laboratory is simulated as in
bench/bench_adapt.py: Chula's test crops and fields recoloured to a txl-pbc source's stain.
Figures: the shipped model's accuracy on Chula's test crops clean, recoloured, and recoloured
then corrected.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image
from skimage.color import lab2rgb

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.bench_shift import FIELDS_PER_SOURCE, STATS_SEED, ColourStats, colour_stats, recolour  # noqa: E402
from core.classify.calibration import field_colour_descriptor  # noqa: E402
from core.classify.predictor import Predictor  # noqa: E402

LAB_FIELDS = 40


def rgb_of(lab: np.ndarray) -> np.ndarray:
    return np.asarray(lab2rgb(np.asarray(lab, dtype=float).reshape(1, 1, 3))).reshape(3) * 255


def two_point_map(
    lab_cell: np.ndarray, lab_background: np.ndarray, cell: np.ndarray, background: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel gain and offset taking the lab's cell and background colours to the targets."""
    gain = (background - cell) / (lab_background - lab_cell)
    return gain, background - gain * lab_background


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, required=True, help="an import-chula crop set")
    parser.add_argument("--chula", type=Path, default=ROOT.parent / "shared/datasets/chula-rbc-12")
    parser.add_argument("--txl", type=Path, default=ROOT.parent / "shared/datasets/txl-pbc")
    parser.add_argument("--model", type=Path, default=ROOT / "models" / "default")
    parser.add_argument("--colour-stats", type=Path, default=Path("/tmp/rbc-colour-stats.json"))
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    predictor = Predictor.load(args.model, device="cpu", tta_views=1)
    assert predictor.calibration is not None and predictor.calibration.colours is not None
    reference = predictor.calibration.colours.reference
    cell, background = (
        rgb_of(np.median(reference[:, 0:3], 0)),
        rgb_of(np.median(reference[:, 3:6], 0)),
    )
    manifest = pd.read_csv(args.data / "manifest.csv")
    test = manifest[(manifest.split == "test") & manifest.label.isin(predictor.classes)]
    labels = test.label.to_numpy()
    images = []
    for rel in test.path:
        with Image.open(args.data / rel) as image:
            images.append(image.convert("RGB"))

    def accuracy(crops: list[Image.Image]) -> float:
        pred = []
        for start in range(0, len(crops), 256):
            probs = predictor.forward(predictor.preprocess.batch(crops[start : start + 256]), 1)
            pred.append(probs.argmax(1))
        return round(
            float((np.asarray(predictor.classes)[np.concatenate(pred)] == labels).mean()), 4
        )

    sources, _, _ = colour_stats(args.txl, args.colour_stats, FIELDS_PER_SOURCE, STATS_SEED, False)
    smears = sorted(test.source_image.unique())[:LAB_FIELDS]
    rows = [{"condition": "clean", "accuracy": accuracy(images)}]
    for source, entry in sources.items():
        stats = ColourStats.from_dict(entry["stats"])
        descriptors = []
        for smear in smears:
            with Image.open(args.chula / "Dataset" / smear) as field:
                descriptors.append(field_colour_descriptor(recolour(field.convert("RGB"), stats)))
        d = np.asarray(descriptors)
        gain, offset = two_point_map(
            rgb_of(np.median(d[:, 0:3], 0)), rgb_of(np.median(d[:, 3:6], 0)), cell, background
        )
        shifted = [recolour(image, stats) for image in images]
        corrected = [
            Image.fromarray(
                np.clip(np.asarray(i, dtype=float) * gain + offset, 0, 255).astype(np.uint8)
            )
            for i in shifted
        ]
        rows.append(
            {
                "condition": source,
                "shifted": accuracy(shifted),
                "corrected": accuracy(corrected),
                "gain": gain.round(3).tolist(),
                "offset": offset.round(1).tolist(),
            }
        )
        print(json.dumps(rows[-1]), flush=True)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(
            json.dumps({"command": " ".join(sys.argv), "rows": rows}, indent=2) + "\n"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
