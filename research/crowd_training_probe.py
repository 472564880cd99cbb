"""Would fine-tuning on crowded crops make the classifier robust to crowding, and read other
laboratories' cells differently?

    .venv/bin/python research/crowd_training_probe.py --data /tmp/chula-crops \
        --out research/results/classification/crowd-training.json

research/crowding_probe.py found that touching neighbours of the same smear cost the shipped
model accuracy (0.863 -> 0.808 with two) and turn abnormal calls into normal ones. This probe
fine-tunes the shipped network briefly, twice, in the same loop and from the same start:

- control: Chula's training crops with flips, quarter turns and the recipe's stain and colour
  jitter (training/augment.py), each with p 0.5;
- crowd: the same, and with p 0.5 one to three whole red cells of the same smear (cut by their
  stain mask, research/crowding_probe.py) laid touching the centre cell.

Each run: `--epochs` passes over `--per-epoch` training crops drawn at random (seeded), AdamW,
batch 32, every weight trained, BatchNorm statistics frozen, cross-entropy weighted by the inverse
square root of each class's count (the recipe's weighting). Then, for the shipped network and both
runs: accuracy on Chula's test crops as imported and crowded with two neighbours (the same
crowding for every model), abnormal cells called normal in both, and the share of txl-pbc's test
fields' red cells called normal (crops cut by the service's own path, scale estimated; no labels,
routine smears). Only the difference between the two runs speaks for the crowding.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from core.classify.nets import load_network  # noqa: E402
from core.classify.preprocess import Preprocessor  # noqa: E402
from research.crops import load_crops, txl_counted_crops  # noqa: E402
from research.crowding_probe import centre_cell, crowded  # noqa: E402
from research.probe_fields import command_line, write_result  # noqa: E402
from training.augment import colour_jitter, stain_jitter  # noqa: E402

NORMAL = "normal"
BATCH = 32
CHUNK = 32
SOURCES = ("bccd", "bcd", "raabin")
EVAL_NEIGHBOURS = 2

Donors = dict[str, list[tuple[int, np.ndarray, np.ndarray]]]


def smear_donors(crops: list[np.ndarray], smears: list[str]) -> Donors:
    """Each smear's whole cells (crop, centre-cell mask), as neighbours for its other crops."""
    donors: Donors = {}
    for i, (crop, smear) in enumerate(zip(crops, smears, strict=True)):
        mask = centre_cell(crop)
        if 300 < mask.sum() < 2500 and not (mask[0].any() or mask[-1].any()):
            donors.setdefault(smear, []).append((i, crop, mask))
    return donors


def neighbours(donors: Donors, smear: str, i: int) -> list[tuple[np.ndarray, np.ndarray]]:
    return [(c, m) for j, c, m in donors.get(smear, []) if j != i]


def augmented(
    crop: np.ndarray,
    near: list[tuple[np.ndarray, np.ndarray]],
    crowd: bool,
    rng: np.random.Generator,
) -> np.ndarray:
    out = crop
    if crowd and near and rng.random() < 0.5:
        out = crowded(out, near, int(rng.integers(1, 4)), rng)
    if rng.random() < 0.5:
        out = stain_jitter(out, rng)
    if rng.random() < 0.5:
        out = colour_jitter(out, rng)
    out = np.rot90(out, int(rng.integers(4)))
    if rng.random() < 0.5:
        out = out[:, ::-1]
    return np.ascontiguousarray(out)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, required=True, help="an import-chula crop set")
    parser.add_argument("--txl", type=Path, default=ROOT.parent / "shared/datasets/txl-pbc")
    parser.add_argument("--model", type=Path, default=ROOT / "models" / "default")
    parser.add_argument("--detector", type=Path, default=ROOT / "models" / "detector")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--per-epoch", type=int, default=6000)
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    started = time.perf_counter()
    torch.manual_seed(args.seed)
    shipped, card = load_network(args.model)
    shipped = shipped.to(memory_format=torch.channels_last).eval()
    preprocess = Preprocessor.from_card(card)
    classes = list(card.classes)
    names = np.asarray(classes)
    manifest = pd.read_csv(args.data / "manifest.csv")
    manifest = manifest[manifest.label.isin(classes)]

    def read(rows: pd.DataFrame) -> list[np.ndarray]:
        return [np.asarray(crop) for crop in load_crops(args.data, rows.path)]

    def tensor(arrays: list[np.ndarray]) -> torch.Tensor:
        x = preprocess.batch([Image.fromarray(a) for a in arrays])
        return torch.from_numpy(x).to(memory_format=torch.channels_last)

    # Evaluation sets, the same for every model.
    test = manifest[manifest.split == "test"].reset_index(drop=True)
    test_crops = read(test)
    test_smears = list(test.source_image)
    truth = test.label.to_numpy()
    test_donors = smear_donors(test_crops, test_smears)
    crowded_test = []
    for i, crop in enumerate(test_crops):
        near = neighbours(test_donors, test_smears[i], i)
        rng = np.random.default_rng(1000 * EVAL_NEIGHBOURS + i)
        crowded_test.append(crowded(crop, near, EVAL_NEIGHBOURS, rng) if near else crop)
    x_test, x_crowded = tensor(test_crops), tensor(crowded_test)
    txl_crops = txl_test_crops(args, preprocess)
    print(f"evaluation sets ready ({time.perf_counter() - started:.0f} s)", flush=True)

    @torch.no_grad()
    def calls(net: torch.nn.Module, x: torch.Tensor) -> np.ndarray:
        net.eval()
        return names[
            np.concatenate(
                [net(x[s : s + CHUNK]).argmax(1).numpy() for s in range(0, len(x), CHUNK)]
            )
        ]

    def measure(net: torch.nn.Module) -> dict[str, Any]:
        out: dict[str, Any] = {}
        abnormal = truth != NORMAL
        for key, x in (("as_imported", x_test), ("crowded", x_crowded)):
            c = calls(net, x)
            out[key] = {
                "accuracy": round(float((c == truth).mean()), 4),
                "abnormal_called_normal": round(float((c[abnormal] == NORMAL).mean()), 4),
                "normal_called_normal": round(float((c[~abnormal] == NORMAL).mean()), 4),
            }
        out["txl_called_normal"] = {
            s: round(float((calls(net, x) == NORMAL).mean()), 4) for s, x in txl_crops.items()
        }
        return out

    result: dict[str, Any] = {"shipped": measure(shipped)}
    print("shipped", json.dumps(result["shipped"]), flush=True)

    train = manifest[manifest.split == "train"].reset_index(drop=True)
    train_crops = read(train)
    train_smears = list(train.source_image)
    train_donors = smear_donors(train_crops, train_smears)
    targets = torch.tensor([classes.index(label) for label in train.label])
    counts = np.bincount(targets.numpy(), minlength=len(classes)).astype(float)
    weights = torch.tensor(1 / np.sqrt(np.maximum(counts, 1)), dtype=torch.float32)
    weights = weights / weights.mean()
    for arm in ("control", "crowd"):
        net = copy.deepcopy(shipped)
        optimiser = torch.optim.AdamW(net.parameters(), lr=args.lr, weight_decay=1e-4)
        rng = np.random.default_rng(args.seed)
        arm_started = time.perf_counter()
        for epoch in range(args.epochs):
            order = rng.permutation(len(train))[: args.per_epoch]
            net.train()
            for m in net.modules():
                if isinstance(m, (torch.nn.BatchNorm1d, torch.nn.BatchNorm2d)):
                    m.eval()
            for s in range(0, len(order), BATCH):
                idx = order[s : s + BATCH]
                batch = [
                    augmented(
                        train_crops[i],
                        neighbours(train_donors, train_smears[i], i),
                        arm == "crowd",
                        rng,
                    )
                    for i in idx
                ]
                loss = torch.nn.functional.cross_entropy(
                    net(tensor(batch)), targets[idx], weight=weights
                )
                optimiser.zero_grad()
                loss.backward()
                optimiser.step()
            print(
                f"{arm} epoch {epoch + 1} ({time.perf_counter() - arm_started:.0f} s)", flush=True
            )
        result[arm] = {**measure(net), "seconds": round(time.perf_counter() - arm_started, 1)}
        print(arm, json.dumps(result[arm]), flush=True)
    result["command"] = command_line("research/crowd_training_probe.py", None)
    result["settings"] = {
        "epochs": args.epochs,
        "per_epoch": args.per_epoch,
        "lr": args.lr,
        "seed": args.seed,
        "test_crops": len(test_crops),
        "txl_cells": {s: len(x) for s, x in txl_crops.items()},
    }
    result["seconds"] = round(time.perf_counter() - started, 1)
    if args.out:
        write_result(args.out, result)
    return 0


def txl_test_crops(args: argparse.Namespace, preprocess: Preprocessor) -> dict[str, torch.Tensor]:
    """Each txl-pbc source's counted red cells of its test fields, cut as the service cuts them."""
    from core.classify.predictor import Predictor
    from core.detect.learned import CellDetector

    predictor = Predictor.load(args.model, device="cpu", tta_views=1)
    detector = CellDetector.load(args.detector)
    out = {}
    for source in SOURCES:
        crops = txl_counted_crops(args.txl, source, "test", predictor, detector)
        out[source] = torch.from_numpy(preprocess.batch(crops)).to(
            memory_format=torch.channels_last
        )
    return out


if __name__ == "__main__":
    raise SystemExit(main())
