"""Would adapting the body, not only the last layer, win back a stain shift from 500 reviewed cells?

    .venv/bin/python research/adapt_body_probe.py --data /tmp/chula-crops --source raabin \
        --params bn --lr 1e-3 --epochs 3 [--out research/results/adapt/body-raabin-bn.json]

The laboratory is simulated as in bench/bench_adapt.py: Chula's test smears recoloured to a txl-pbc
source's stain; 500 random crops of half the smears are its reviews, the other half's crops
measure. The shipped network is fine-tuned on those 500 crops plus `--replay` Chula training crops
(equal per class), flips and transposes as augmentation, AdamW, batch 32, BatchNorm statistics
frozen; `--params all` trains every weight, `--params bn` only the BatchNorm scales and shifts and
the last layer, `--params head` the last layer alone. After each epoch: accuracy on the measuring
half, recoloured (what the shift cost) and clean (what was forgotten), and the share of the shift's
cost won back.

The ceiling (how much of the cost any adaptation of these weights could win back, given every
label): `--reviewed 0` takes every crop of the reviewed half, and `--replay-stain` recolours the
replayed Chula training crops to the laboratory's stain too, so the fit sees thousands of labelled
cells in that stain:

    .venv/bin/python research/adapt_body_probe.py --data /tmp/chula-crops --source raabin \
        --params all --lr 3e-4 --epochs 3 --reviewed 0 --replay 6000 --replay-stain
"""

from __future__ import annotations

import argparse
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

from bench.bench_shift import FIELDS_PER_SOURCE, STATS_SEED, ColourStats, colour_stats, recolour  # noqa: E402
from core.classify.nets import load_network  # noqa: E402
from core.classify.preprocess import Preprocessor  # noqa: E402

BATCH = 32


def trainable(net: torch.nn.Sequential, which: str) -> list[torch.nn.Parameter]:
    if which == "all":
        return list(net.parameters())
    if which == "head":
        return list(net[1][-1].parameters())
    norms = (torch.nn.BatchNorm1d, torch.nn.BatchNorm2d)
    chosen = [p for m in net.modules() if isinstance(m, norms) for p in m.parameters()]
    return chosen + list(net[1][-1].parameters())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, required=True, help="an import-chula crop set")
    parser.add_argument("--txl", type=Path, default=ROOT.parent / "shared/datasets/txl-pbc")
    parser.add_argument("--model", type=Path, default=ROOT / "models" / "default")
    parser.add_argument("--source", default="raabin")
    parser.add_argument("--params", choices=("all", "bn", "head"), default="bn")
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument(
        "--reviewed", type=int, default=500, help="crops of the reviewed half; 0: every one"
    )
    parser.add_argument("--replay", type=int, default=1200)
    parser.add_argument(
        "--replay-stain",
        action="store_true",
        help="recolour the replayed training crops to the laboratory's stain too (the ceiling)",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--colour-stats", type=Path, default=Path("/tmp/rbc-colour-stats.json"))
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    torch.manual_seed(args.seed)
    net, card = load_network(args.model)
    preprocess = Preprocessor.from_card(card)
    classes = list(card.classes)
    manifest = pd.read_csv(args.data / "manifest.csv")
    test = manifest[(manifest.split == "test") & manifest.label.isin(classes)].reset_index(
        drop=True
    )
    train = manifest[(manifest.split == "train") & manifest.label.isin(classes)]
    sources, _, _ = colour_stats(args.txl, args.colour_stats, FIELDS_PER_SOURCE, STATS_SEED, False)
    stats = ColourStats.from_dict(sources[args.source]["stats"])
    smears = sorted(test.source_image.unique())
    np.random.default_rng(args.seed).shuffle(smears)
    review_smears = set(smears[: len(smears) // 2])
    review_half = test[test.source_image.isin(review_smears)]
    reviewed = review_half
    if args.reviewed:
        reviewed = review_half.sample(n=args.reviewed, random_state=args.seed)
    measured = test[~test.source_image.isin(review_smears)]
    per_class = args.replay // len(classes)
    replay = pd.concat(
        [
            g.sample(n=min(len(g), per_class), random_state=args.seed)
            for _, g in train.groupby("label")
        ]
    )

    def load(rows: pd.DataFrame) -> list[Image.Image]:
        out = []
        for rel in rows.path:
            with Image.open(args.data / rel) as image:
                out.append(image.convert("RGB"))
        return out

    def accuracy(images: list[Image.Image]) -> float:
        net.eval()
        pred = []
        with torch.no_grad():
            for start in range(0, len(images), 256):
                pred.append(
                    net(torch.from_numpy(preprocess.batch(images[start : start + 256])))
                    .argmax(1)
                    .numpy()
                )
        names = np.asarray(classes)[np.concatenate(pred)]
        return round(float((names == measured.label.to_numpy()).mean()), 4)

    clean = load(measured)
    shifted = [recolour(image, stats) for image in clean]
    replayed = load(replay)
    if args.replay_stain:
        replayed = [recolour(image, stats) for image in replayed]
    x = torch.from_numpy(preprocess.batch([recolour(i, stats) for i in load(reviewed)] + replayed))
    y = torch.tensor([classes.index(label) for label in [*reviewed.label, *replay.label]])
    rows: list[dict[str, Any]] = [
        {"epoch": 0, "shifted": accuracy(shifted), "clean": accuracy(clean), "seconds": 0.0}
    ]
    print(json.dumps(rows[-1]), flush=True)
    for p in net.parameters():
        p.requires_grad_(False)
    params = trainable(net, args.params)
    for p in params:
        p.requires_grad_(True)
    optimiser = torch.optim.AdamW(params, lr=args.lr, weight_decay=1e-4)
    started = time.perf_counter()
    for epoch in range(1, args.epochs + 1):
        net.train()
        for m in net.modules():
            if isinstance(m, (torch.nn.BatchNorm1d, torch.nn.BatchNorm2d)):
                m.eval()  # statistics frozen: 32-cell batches would not estimate them
        order = torch.randperm(len(y))
        for start in range(0, len(order), BATCH):
            idx = order[start : start + BATCH]
            xb = x[idx]
            for dim, flip in ((3, True), (2, True), (0, False)):
                if torch.rand(1) < 0.5:
                    xb = xb.flip(dim) if flip else xb.transpose(2, 3)
            loss = torch.nn.functional.cross_entropy(net(xb), y[idx])
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
        rows.append(
            {
                "epoch": epoch,
                "shifted": accuracy(shifted),
                "clean": accuracy(clean),
                "seconds": round(time.perf_counter() - started, 1),
            }
        )
        cost = rows[0]["clean"] - rows[0]["shifted"]
        rows[-1]["regained"] = round((rows[-1]["shifted"] - rows[0]["shifted"]) / cost, 3)
        print(json.dumps(rows[-1]), flush=True)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(
            json.dumps({"command": " ".join(sys.argv), "fitted_on": len(y), "rows": rows}, indent=2)
            + "\n"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
