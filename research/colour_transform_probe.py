"""Would a colour transform learnt from 500 reviewed cells win back a laboratory's stain shift?

    .venv/bin/python research/colour_transform_probe.py --data /tmp/chula-crops \
        --out research/results/adapt/colour-transform.json

`python -m training adapt` refits the last layer; with 500 random reviews its gate keeps the base
layer on every simulated stain (docs/training.md): the shift changed what the body's features
say, and a linear layer on them cannot undo it. A stain is a change of colour before the network,
so this probe learns one: each pixel's RGB mapped by a 3 x 3 matrix and an offset (12 numbers,
starting from the identity), fitted by gradient through the frozen shipped network on the
laboratory's reviewed cells (cross-entropy, Adam, full batch, a small pull toward the identity).
Such a map folds exactly into the network's first convolution, so it would cost nothing when
served, and leaves every weight of the network as it was. Twelve numbers cannot learn the
laboratory's mix of classes the way a last layer can, only its colours.

The laboratory is simulated as in research/lab_wide_shift_probe.py: Chula's test crops
recoloured to a txl-pbc source's stain, crop by crop (`recolour(crop, source)`, as the benches
do) and with one map for the laboratory (`own=` Chula's statistics). 500 random crops of half of
the test smears are its reviews; the crops of the other half measure. Figures: accuracy clean,
shifted, shifted with the learnt map, and Chula's clean crops with the laboratory's map (what
it would cost to send Chula's own images through the laboratory's model).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.bench_shift import FIELDS_PER_SOURCE, STATS_SEED, ColourStats, colour_stats, recolour  # noqa: E402
from core.classify.predictor import Predictor  # noqa: E402
from research.lab_wide_shift_probe import chula_field_stats  # noqa: E402


class ColourMap(torch.nn.Module):
    """RGB in 0..1 -> matrix @ RGB + offset, on a normalised batch (undone and redone)."""

    def __init__(self, mean: np.ndarray, std: np.ndarray) -> None:
        super().__init__()
        self.matrix = torch.nn.Parameter(torch.eye(3))
        self.offset = torch.nn.Parameter(torch.zeros(3))
        self.mean = torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rgb = x * self.std + self.mean
        mapped = torch.einsum("ij,njhw->nihw", self.matrix, rgb) + self.offset.view(1, 3, 1, 1)
        return (mapped - self.mean) / self.std

    def pull(self) -> torch.Tensor:
        return ((self.matrix - torch.eye(3)) ** 2).sum() + (self.offset**2).sum()


def fit_map(
    network: torch.nn.Module,
    batch: np.ndarray,
    labels: np.ndarray,
    mean: np.ndarray,
    std: np.ndarray,
    steps: int,
    lr: float,
    pull: float,
) -> ColourMap:
    colour = ColourMap(mean, std)
    optimiser = torch.optim.Adam(colour.parameters(), lr=lr)
    x, y = torch.from_numpy(batch), torch.from_numpy(labels)
    for _ in range(steps):
        optimiser.zero_grad()
        loss = torch.nn.functional.cross_entropy(network(colour(x)), y) + pull * colour.pull()
        loss.backward()
        optimiser.step()
    return colour


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, required=True, help="an import-chula crop set")
    parser.add_argument("--chula", type=Path, default=ROOT.parent / "shared/datasets/chula-rbc-12")
    parser.add_argument("--txl", type=Path, default=ROOT.parent / "shared/datasets/txl-pbc")
    parser.add_argument("--model", type=Path, default=ROOT / "models" / "default")
    parser.add_argument("--colour-stats", type=Path, default=Path("/tmp/rbc-colour-stats.json"))
    parser.add_argument("--reviewed", type=int, default=500)
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--lr", type=float, default=0.01)
    parser.add_argument("--pull", type=float, default=0.01)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--shifts", nargs="+", choices=("per-crop", "lab-wide"), default=["per-crop", "lab-wide"]
    )
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    started = time.time()
    torch.manual_seed(args.seed)
    predictor = Predictor.load(args.model, device="cpu", tta_views=1)
    network = predictor.model
    classes = list(predictor.classes)
    mean, std = np.asarray(predictor.preprocess.mean), np.asarray(predictor.preprocess.std)

    manifest = pd.read_csv(args.data / "manifest.csv")
    test = manifest[(manifest.split == "test") & manifest.label.isin(classes)]
    smears = sorted(test.source_image.unique())
    lab_smears, measured_smears = set(smears[0::2]), set(smears[1::2])
    pool = test[test.source_image.isin(lab_smears)]
    reviewed = pool.sample(n=min(args.reviewed, len(pool)), random_state=args.seed)
    measured = test[test.source_image.isin(measured_smears)]

    def crops(rows: pd.DataFrame) -> list[Image.Image]:
        out = []
        for rel in rows.path:
            with Image.open(args.data / rel) as opened:
                out.append(opened.convert("RGB"))
        return out

    def labels_of(rows: pd.DataFrame) -> np.ndarray:
        return np.asarray([classes.index(label) for label in rows.label], dtype=np.int64)

    reviewed_clean, measured_clean = crops(reviewed), crops(measured)
    reviewed_y, measured_y = labels_of(reviewed), labels_of(measured)

    @torch.no_grad()
    def accuracy(images: list[Image.Image], colour: ColourMap | None = None) -> float:
        hits = 0
        for start in range(0, len(images), 256):
            x = torch.from_numpy(predictor.preprocess.batch(images[start : start + 256]))
            logits = network(colour(x) if colour is not None else x)
            hits += int((logits.argmax(1).numpy() == measured_y[start : start + 256]).sum())
        return round(hits / len(images), 4)

    rng = np.random.default_rng(STATS_SEED)
    chula = chula_field_stats(manifest, args.chula, FIELDS_PER_SOURCE, rng)

    clean = accuracy(measured_clean)
    rows: list[dict[str, object]] = [{"condition": "clean", "accuracy": clean}]
    print(json.dumps(rows[0]), flush=True)
    sources, _, _ = colour_stats(args.txl, args.colour_stats, FIELDS_PER_SOURCE, STATS_SEED, False)
    for source, entry in sources.items():
        target = ColourStats.from_dict(entry["stats"])
        for shift, own in (("per-crop", None), ("lab-wide", chula)):
            if shift not in args.shifts:
                continue
            reviewed_shifted = [recolour(c, target, own=own) for c in reviewed_clean]
            measured_shifted = [recolour(c, target, own=own) for c in measured_clean]
            fit_started = time.time()
            colour = fit_map(
                network,
                predictor.preprocess.batch(reviewed_shifted),
                reviewed_y,
                mean,
                std,
                args.steps,
                args.lr,
                args.pull,
            )
            shifted = accuracy(measured_shifted)
            mapped = accuracy(measured_shifted, colour)
            cost = clean - shifted
            row = {
                "source": source,
                "shift": shift,
                "shifted": shifted,
                "mapped": mapped,
                "regained": None if cost <= 0 else round((mapped - shifted) / cost, 3),
                "chula_clean_with_the_map": accuracy(measured_clean, colour),
                "fit_seconds": round(time.time() - fit_started, 1),
                "matrix": colour.matrix.detach().numpy().round(3).tolist(),
                "offset": colour.offset.detach().numpy().round(3).tolist(),
            }
            rows.append(row)
            print(json.dumps(row), flush=True)
    result = {
        "command": " ".join(sys.argv),
        "reviewed": len(reviewed),
        "measured": len(measured),
        "rows": rows,
        "seconds": round(time.time() - started, 1),
    }
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
