"""Which field-colour signal tells Chula's fields from other laboratories'? The choice behind the
field colours of the familiarity (core/classify/calibration.py; docs/classification.md).

    .venv/bin/python research/colour_familiarity_probe.py \
        [--out research/results/classification/colour-probe.json]

Reads every field's 13-number colour descriptor (`field_colour_descriptor`: CIELAB median and
spread of cell and background pixels, the cells' share), and scores six candidates: the first 6
numbers (medians), 7 (with the share) or all 13, each as a Mahalanobis distance to the training
fields (one Gaussian, shrunk covariance) or as the distance to the 5th nearest training field
(each number scaled by its spread). Reference: Chula's training fields (those with crops of the
12 shipped classes); thresholds: the 99th percentile of its validation fields; measured: Chula's
test fields (share flagged) against each txl-pbc source's test fields (AUROC, share flagged).

The choice is made leaving one source out: for each txl-pbc source, the candidate with the best
mean AUROC on the other two sources (ties: the fewer Chula test fields flagged), and that
candidate's AUROC on the left-out source is what counts.
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
from tqdm import tqdm

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from core.classify.calibration import (  # noqa: E402
    COLOUR_NEIGHBOUR,
    FieldColours,
    field_colour_descriptor,
)
from training.classify.calibrate import auroc  # noqa: E402

SOURCES = ("bccd", "bcd", "raabin")
NUMBERS = {"medians-6": 6, "with-share-7": 7, "all-13": 13}
QUANTILE = 0.99
LEFT_OUT_CLASS = "elliptocyte"  # the shipped model's fields are those of its 12 classes


DESCRIBE_SECONDS: list[float] = []  # per field, the descriptor alone (the image decoded first)


def descriptors(paths: list[Path], desc: str) -> np.ndarray:
    rows = []
    for path in tqdm(paths, desc=desc, leave=False, mininterval=5):
        with Image.open(path) as image:
            image.load()
            started = time.perf_counter()
            rows.append(field_colour_descriptor(image))
            DESCRIBE_SECONDS.append(time.perf_counter() - started)
    return np.stack(rows)


def mahalanobis(reference: np.ndarray, x: np.ndarray, shrinkage: float = 0.05) -> np.ndarray:
    mean = reference.mean(axis=0)
    cov = np.cov(reference.T)
    dim = len(cov)
    cov = (1 - shrinkage) * cov + shrinkage * np.trace(cov) / dim * np.eye(dim)
    centred = x - mean
    return np.sqrt(np.einsum("ij,jk,ik->i", centred, np.linalg.inv(cov), centred) / dim)


def neighbours(reference: np.ndarray, x: np.ndarray) -> np.ndarray:
    colours = FieldColours.fit(reference, neighbour=COLOUR_NEIGHBOUR)
    return np.asarray([colours.distance(row) for row in x])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, default=ROOT / "data" / "chula", help="imported crops")
    parser.add_argument("--chula", type=Path, default=ROOT.parent / "shared/datasets/chula-rbc-12")
    parser.add_argument("--txl", type=Path, default=ROOT.parent / "shared/datasets/txl-pbc")
    parser.add_argument(
        "--out", type=Path, default=ROOT / "docs" / "classification" / "colour-probe.json"
    )
    args = parser.parse_args(argv)
    started = time.perf_counter()

    manifest = pd.read_csv(args.data / "manifest.csv")
    manifest = manifest[manifest["label"] != LEFT_OUT_CLASS]
    smears = args.chula / "Dataset"
    chula = {
        split: descriptors(
            [
                smears / n
                for n in sorted(manifest[manifest["split"] == split]["source_image"].unique())
            ],
            f"chula {split}",
        )
        for split in ("train", "valid", "test")
    }
    # Chula's own later images (707-738: every elliptocyte, another stain and a brighter
    # background; no field of the shipped model's classes): a stain change inside one laboratory.
    everything = pd.read_csv(args.data / "manifest.csv")
    later = descriptors(
        [
            smears / n
            for n in sorted(
                everything[everything["label"] == LEFT_OUT_CLASS]["source_image"].unique()
            )
        ],
        "chula 707-738",
    )
    table = pd.read_csv(args.txl / "sources.csv")
    foreign = {
        source: descriptors(
            [
                args.txl / p
                for p in table[(table["source"] == source) & (table["split"] == "test")]["image"]
            ],
            source,
        )
        for source in SOURCES
    }

    candidates: dict[str, dict[str, object]] = {}
    for numbers_name, n in NUMBERS.items():
        for method_name, method in (("mahalanobis", mahalanobis), ("5th-neighbour", neighbours)):
            reference = chula["train"][:, :n]
            threshold = float(np.quantile(method(reference, chula["valid"][:, :n]), QUANTILE))
            test = method(reference, chula["test"][:, :n])
            row: dict[str, object] = {
                "chula_test_flagged": round(float((test > threshold).mean()), 4),
                "chula_707_738_flagged": round(
                    float((method(reference, later[:, :n]) > threshold).mean()), 4
                ),
                "threshold": round(threshold, 3),
            }
            for source, x in foreign.items():
                scores = method(reference, x[:, :n])
                row[f"auroc_{source}"] = auroc(test.tolist(), scores.tolist())
                row[f"flagged_{source}"] = round(float((scores > threshold).mean()), 4)
            candidates[f"{numbers_name} {method_name}"] = row

    def mean_auroc(name: str, sources: list[str]) -> float:
        return float(np.mean([candidates[name][f"auroc_{s}"] for s in sources]))

    leave_one_out = {}
    for held in SOURCES:
        rest = [s for s in SOURCES if s != held]
        chosen = max(
            candidates,
            key=lambda name: (mean_auroc(name, rest), -candidates[name]["chula_test_flagged"]),  # type: ignore[operator]
        )
        leave_one_out[held] = {
            "chosen_on": rest,
            "chosen": chosen,
            "auroc_on_the_others": round(mean_auroc(chosen, rest), 4),
            "auroc_left_out": candidates[chosen][f"auroc_{held}"],
        }

    result = {
        "command": " ".join(
            ["research/colour_familiarity_probe.py", *(sys.argv[1:] if argv is None else argv)]
        ),
        "fields": {
            **{f"chula_{k}": len(v) for k, v in chula.items()},
            "chula_707_738": len(later),
            **{f"{k}_test": len(v) for k, v in foreign.items()},
        },
        "candidates": candidates,
        "leave_one_source_out": leave_one_out,
        "descriptor_ms_per_field_median": round(1000 * float(np.median(DESCRIBE_SECONDS)), 1),
        "seconds": round(time.perf_counter() - started, 1),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    width = max(len(k) for k in candidates)
    print(
        f"{'candidate':<{width}}  flagged: chula-test 707-738  AUROC: "
        + "  ".join(f"{s:>7}" for s in SOURCES)
    )
    for name, row in candidates.items():
        aurocs = "  ".join(f"{row[f'auroc_{s}']:>7.3f}" for s in SOURCES)
        print(
            f"{name:<{width}}  {row['chula_test_flagged']:>19.3f} "
            f"{row['chula_707_738_flagged']:>7.3f}         {aurocs}"
        )
    for held, row in leave_one_out.items():
        print(
            f"left out {held}: chosen {row['chosen']} on {row['chosen_on']}, "
            f"AUROC {row['auroc_left_out']:.3f}"
        )
    print(
        f"descriptor: {result['descriptor_ms_per_field_median']} ms per field (median); "
        f"wrote {args.out}; {result['seconds']} s"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
