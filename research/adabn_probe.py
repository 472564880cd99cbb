"""Label-free: re-estimating the network's early BatchNorm statistics on a laboratory's cells.

    .venv/bin/python research/adabn_probe.py --data /tmp/chula-crops \
        --out research/results/adapt/adabn.json

Issue 27 asks for a label-free adaptation of what depends on the microscope and stain, and warns
that BatchNorm statistics re-estimated on one real laboratory's cells (all layers) made things
worse (normal cells called normal fell from 55 % to 30 %): the deep layers' statistics follow
the laboratory's mix of cells as much as its stain. The stem's and the first blocks' statistics
describe colour and texture, which the stain moves and the mix hardly does. This probe moves
only the first `depth` BatchNorm layers' statistics (in the network's order; the rest keep
Chula's), two ways:

- absolute (AdaBN): the laboratory's statistics replace the stored ones;
- relative: the stored statistics move by the difference between the laboratory's cells and
  Chula's own training cells (1,500, their own mix) measured the same way, mean shifted and
  variance scaled. The stored statistics are averages over augmented training batches, which
  no clean crop matches; the difference keeps that.

The statistics are each cell's per-channel moments of every layer's input, in one pass through
the shipped network (not layer by layer), averaged over the cells of a mix. Measured as
research/lab_wide_shift_probe.py does:

- the laboratory: Chula's test smears recoloured by one laboratory-wide map to a txl-pbc source's
  stain (bench/bench_shift.py `recolour(..., own=Chula's statistics)`); its unlabelled cells are
  the crops of half the test smears, the other half's crops measure (used for nothing else);
- the mix: the relative statistics are estimated from all the laboratory's cells, from its
  normal cells only (a clinic of healthy donors) and from its abnormal cells only (a clinic of
  patients), and every estimate is measured on the same full measuring half;
- what it costs where nothing shifted: the same, with Chula's own clean cells as the laboratory.

A depth is chosen for each source by leaving it out (the depth with the best mean regained
share on the other two sources, relative, all cells) and reported on the source left out.
"""

from __future__ import annotations

import argparse
import copy
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
from research.crops import load_crops  # noqa: E402
from research.lab_wide_shift_probe import chula_field_stats  # noqa: E402
from research.probe_fields import command_line, write_result  # noqa: E402

NORMS = (torch.nn.BatchNorm1d, torch.nn.BatchNorm2d)
# 1: the stem; 3: + block 0; 9: + blocks 1-2; 21: + blocks 3-6; 48: every layer of the body.
DEPTHS = (1, 3, 9, 21, 48)
CHUNK = 32  # small chunks in channels-last: torch's CPU convolutions are fastest so here
REFERENCE_CROPS = 1500  # Chula training crops, in their own mix: the reference statistics


def norms_of(net: torch.nn.Module) -> list[torch.nn.Module]:
    return [m for m in net.modules() if isinstance(m, NORMS)]


@torch.no_grad()
def per_cell_moments(net: torch.nn.Module, x: torch.Tensor) -> list[tuple[np.ndarray, np.ndarray]]:
    """For each BatchNorm layer, in order, each cell's mean and mean square of the layer's input
    per channel (over positions), through `net` as it is (its statistics unchanged): (cells x
    channels) each. A mix's statistics are then averages over its cells."""
    norms = norms_of(net)
    sums: list[list[tuple[np.ndarray, np.ndarray]]] = [[] for _ in norms]

    def hook(k: int) -> Any:
        def capture(_module: torch.nn.Module, inputs: tuple[torch.Tensor, ...]) -> None:
            v = inputs[0].float()
            dims = (2, 3) if v.dim() == 4 else ()
            mean = v.mean(dim=dims) if dims else v
            square = (v * v).mean(dim=dims) if dims else v * v
            sums[k].append((mean.numpy().copy(), square.numpy().copy()))

        return capture

    handles = [m.register_forward_pre_hook(hook(k)) for k, m in enumerate(norms)]
    try:
        net.eval()
        for start in range(0, len(x), CHUNK):
            net(x[start : start + CHUNK])
    finally:
        for h in handles:
            h.remove()
    return [(np.concatenate([a for a, _ in s]), np.concatenate([b for _, b in s])) for s in sums]


def statistics(
    moments: list[tuple[np.ndarray, np.ndarray]], keep: np.ndarray
) -> list[tuple[np.ndarray, np.ndarray]]:
    """Each layer's input mean and variance over the cells in `keep`."""
    out = []
    for mean, square in moments:
        mu = mean[keep].mean(0)
        out.append((mu, np.maximum(square[keep].mean(0) - mu * mu, 1e-6)))
    return out


def adapted(
    net: torch.nn.Module,
    depth: int,
    lab: list[tuple[np.ndarray, np.ndarray]],
    reference: list[tuple[np.ndarray, np.ndarray]] | None,
) -> torch.nn.Module:
    """A copy of `net` with its first `depth` BatchNorm layers' statistics moved to the
    laboratory's. `reference` None ("absolute", AdaBN): the laboratory's statistics replace
    the stored ones. Otherwise ("relative"): the stored statistics move by the difference
    between the laboratory's cells and Chula's own training cells measured the same way (mean
    shifted, variance scaled), so that what the stored statistics owe to training (augmented
    batches) is kept."""
    out = copy.deepcopy(net).eval()
    for k, m in enumerate(norms_of(out)[:depth]):
        mu, var = (torch.from_numpy(v).to(m.running_mean.dtype) for v in lab[k])
        if reference is None:
            m.running_mean.copy_(mu)
            m.running_var.copy_(var)
        else:
            ref_mu, ref_var = (torch.from_numpy(v).to(m.running_mean.dtype) for v in reference[k])
            m.running_mean.add_(mu - ref_mu)
            m.running_var.mul_(var / ref_var)
    return out


@torch.no_grad()
def predicted(net: torch.nn.Module, x: torch.Tensor) -> np.ndarray:
    net.eval()
    return np.concatenate(
        [net(x[s : s + CHUNK]).argmax(1).numpy() for s in range(0, len(x), CHUNK)]
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, required=True, help="an import-chula crop set")
    parser.add_argument("--chula", type=Path, default=ROOT.parent / "shared/datasets/chula-rbc-12")
    parser.add_argument("--txl", type=Path, default=ROOT.parent / "shared/datasets/txl-pbc")
    parser.add_argument("--model", type=Path, default=ROOT / "models" / "default")
    parser.add_argument("--colour-stats", type=Path, default=Path("/tmp/rbc-colour-stats.json"))
    parser.add_argument("--depths", default=",".join(str(d) for d in DEPTHS))
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    started = time.perf_counter()
    torch.set_grad_enabled(False)
    net, card = load_network(args.model)
    net.eval()
    preprocess = Preprocessor.from_card(card)
    classes = np.asarray(card.classes)
    depths = [int(d) for d in args.depths.split(",")]
    manifest = pd.read_csv(args.data / "manifest.csv")
    test = manifest[(manifest.split == "test") & manifest.label.isin(classes)]
    smears = sorted(test.source_image.unique())
    lab_half = test[test.source_image.isin(smears[0::2])]
    measured = test[test.source_image.isin(smears[1::2])]
    truth = measured.label.to_numpy()

    def load(rows: pd.DataFrame) -> list[Image.Image]:
        return load_crops(args.data, rows.path)

    def tensor(images: list[Image.Image]) -> torch.Tensor:
        return torch.from_numpy(preprocess.batch(images)).to(memory_format=torch.channels_last)

    def accuracy(model: torch.nn.Module, x: torch.Tensor) -> float:
        return round(float((classes[predicted(model, x)] == truth).mean()), 4)

    net = net.to(memory_format=torch.channels_last)
    lab_clean, measured_clean = load(lab_half), load(measured)
    lab_normal = (lab_half.label == "normal").to_numpy()
    mixes = {
        "all": np.ones(len(lab_half), bool),
        "normal_only": lab_normal,
        "abnormal_only": ~lab_normal,
    }
    chula = chula_field_stats(
        manifest, args.chula, FIELDS_PER_SOURCE, np.random.default_rng(STATS_SEED)
    )
    sources, _, _ = colour_stats(args.txl, args.colour_stats, FIELDS_PER_SOURCE, STATS_SEED, False)
    train = manifest[(manifest.split == "train") & manifest.label.isin(classes)]
    reference_rows = train.sample(n=min(REFERENCE_CROPS, len(train)), random_state=0)
    reference = statistics(
        per_cell_moments(net, tensor(load(reference_rows))), np.ones(len(reference_rows), bool)
    )

    x_clean = tensor(measured_clean)
    clean = accuracy(net, x_clean)
    print(f"clean {clean:.4f} on {len(truth)} crops; lab half {len(lab_half)} crops", flush=True)

    def variants(
        moments: list[tuple[np.ndarray, np.ndarray]], d: int, x: torch.Tensor, shifted: float | None
    ) -> dict[str, Any]:
        """absolute (all cells) and relative (each mix) at depth `d`, measured on `x`."""
        out: dict[str, Any] = {}
        cost = None if shifted is None else clean - shifted
        runs = [("absolute", "all", None)] + [("relative", m, reference) for m in mixes]
        for mode, mix, ref in runs:
            acc = accuracy(adapted(net, d, statistics(moments, mixes[mix]), ref), x)
            entry: dict[str, Any] = {"accuracy": acc}
            if cost is not None:
                entry["regained"] = None if cost <= 0 else round((acc - shifted) / cost, 3)
            out[f"{mode} {mix}"] = entry
        return out

    # What it costs where nothing shifted: Chula's own test cells as the laboratory's.
    moments = per_cell_moments(net, tensor(lab_clean))
    unshifted = {}
    for d in depths:
        unshifted[str(d)] = variants(moments, d, x_clean, None)
        print(f"no shift, depth {d}: {unshifted[str(d)]}", flush=True)

    rows: dict[str, Any] = {}
    for source, entry in sources.items():
        target = ColourStats.from_dict(entry["stats"])
        x_shift = tensor([recolour(c, target, own=chula) for c in measured_clean])
        moments = per_cell_moments(net, tensor([recolour(c, target, own=chula) for c in lab_clean]))
        shifted = accuracy(net, x_shift)
        row: dict[str, Any] = {"shifted": shifted, "depths": {}}
        print(f"{source}: shifted {shifted:.4f}", flush=True)
        for d in depths:
            row["depths"][str(d)] = variants(moments, d, x_shift, shifted)
            print(f"{source} depth {d}: {row['depths'][str(d)]}", flush=True)
        rows[source] = row

    chosen: dict[str, Any] = {}
    for left_out in rows:
        others = [s for s in rows if s != left_out]

        def mean_regained(d: int, others: list[str] = others) -> float:
            return float(
                np.mean(
                    [rows[s]["depths"][str(d)]["relative all"]["regained"] or 0.0 for s in others]
                )
            )

        best = max(depths, key=mean_regained)
        chosen[left_out] = {"depth": best, **rows[left_out]["depths"][str(best)]}
        print(f"left out {left_out}: depth {best} -> {chosen[left_out]}", flush=True)

    result = {
        "command": command_line("research/adabn_probe.py", None),
        "seconds": round(time.perf_counter() - started, 1),
        "clean": clean,
        "measured_crops": len(truth),
        "lab_crops": len(lab_half),
        "lab_normal_share": round(float(lab_normal.mean()), 3),
        "reference_crops": len(reference_rows),
        "no_shift": unshifted,
        "sources": rows,
        "depth_chosen_leaving_the_source_out": chosen,
    }
    if args.out:
        write_result(args.out, result)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
