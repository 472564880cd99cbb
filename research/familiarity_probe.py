"""Which features tell Chula's cells from other laboratories' best? An exploration for the
familiarity score (core/classify/calibration.py; docs/classification.md).

    .venv/bin/python research/familiarity_probe.py [--model models/default] [--train 5000]

Fits the familiarity statistics (class means, shared covariance, two shrinkages) on a seeded
sample of the training crops, once on the 512 features the last layer reads (what the service
uses) and once on the 2,560 pooled body features before the head, and prints the AUROC between
Chula's test crops and the red cells of txl-pbc's test fields (their labelled boxes, cropped at
the classifier's scale with each source's derived scale): per cell, and per field (median of the
field's cells) overall and per source. Crops only: no detector, so it runs in a few minutes.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from core.classify.calibration import Familiarity  # noqa: E402
from core.classify.predictor import Predictor  # noqa: E402
from core.smear.analysis import TRAINING_MICRONS_PER_PIXEL  # noqa: E402
from core.smear.crop import DEFAULT_WINDOW, crop_cell, median_colour  # noqa: E402
from training.classify.calibrate import auroc  # noqa: E402
from training.datasets.fields import derived_microns_per_pixel, read_yolo  # noqa: E402


def features(p: Predictor, images: list[Image.Image]) -> tuple[torch.Tensor, torch.Tensor]:
    """(head features (N, 512), pooled body features (N, 2560)) of crops."""
    body, head = p.model[0], p.model[1]
    assert isinstance(head, torch.nn.Sequential)
    heads, pooled = [], []
    for i in range(0, len(images), 256):
        batch = torch.from_numpy(p.preprocess.batch(images[i : i + 256]))
        with torch.inference_mode():
            fmap = body(batch)
            pooled.append(head[:2](fmap))
            heads.append(head[:-1](fmap))
    return torch.cat(heads), torch.cat(pooled)


def foreign_crops(txl: Path) -> tuple[list[Image.Image], list[str]]:
    report = read_yolo(txl, progress=False)
    crops, field_ids = [], []
    for source in report.sources():
        fields = [f for f in report.fields if f.source == source]
        mpp = derived_microns_per_pixel(fields)
        if mpp is None:
            continue
        k = mpp / TRAINING_MICRONS_PER_PIXEL
        for f in (f for f in fields if f.split == "test"):
            with Image.open(f.image) as raw:
                image = raw.convert("RGB")
            image = image.resize(
                (round(image.width * k), round(image.height * k)), Image.Resampling.LANCZOS
            )
            fill = median_colour(image)
            for o in f.of_kind("red_cell"):
                if not f.at_border(o):
                    x, y = round(o.x * k), round(o.y * k)
                    crops.append(crop_cell(image, x, y, DEFAULT_WINDOW, fill)[0])
                    field_ids.append(f"{source}/{f.image.name}")
    return crops, field_ids


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", type=Path, default=ROOT / "models" / "default")
    ap.add_argument("--data", type=Path, default=ROOT / "data" / "chula")
    ap.add_argument("--txl", type=Path, default=ROOT.parent / "shared" / "datasets" / "txl-pbc")
    ap.add_argument("--train", type=int, default=5000, help="training crops sampled (seed 0)")
    args = ap.parse_args(argv)
    torch.set_num_threads(2)
    p = Predictor.load(args.model, device="cpu")
    df = pd.read_csv(args.data / "manifest.csv")
    df = df[df["label"].isin(p.classes)]
    train = df[df["split"] == "train"].sample(min(args.train, len(df)), random_state=0)
    test = df[df["split"] == "test"]

    def load(paths: pd.Series) -> list[Image.Image]:
        return [Image.open(args.data / rel).convert("RGB") for rel in paths]

    labels = torch.tensor(train["label"].map({c: i for i, c in enumerate(p.classes)}).to_numpy())
    train_f = features(p, load(train["path"]))
    test_f = features(p, load(test["path"]))
    crops, field_ids = foreign_crops(args.txl)
    foreign_f = features(p, crops)
    print(f"{len(train)} training crops, {len(test)} Chula test crops, {len(crops)} foreign")
    for k, name in enumerate(("head 512", "pooled 2560")):
        for shrinkage in (0.05, 0.3):
            fam = Familiarity.fit(train_f[k], labels, shrinkage=shrinkage)
            chula = fam.distance(test_f[k])
            other = fam.distance(foreign_f[k])
            chula_fields = pd.Series(chula).groupby(test["source_image"].to_numpy()).median()
            other_fields = pd.Series(other).groupby(np.array(field_ids)).median()
            per_source = {
                s: auroc(
                    list(chula_fields),
                    list(other_fields[[i for i in other_fields.index if i.startswith(s + "/")]]),
                )
                for s in sorted({i.split("/")[0] for i in other_fields.index})
            }
            field_auroc = auroc(list(chula_fields), list(other_fields))
            cell_auroc = auroc(list(chula), list(other))
            print(
                f"{name:12s} shrinkage {shrinkage}: AUROC per cell {cell_auroc:.3f}, "
                f"per field {field_auroc:.3f}, "
                + ", ".join(f"{s} {v:.3f}" for s, v in per_source.items() if v is not None)
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
