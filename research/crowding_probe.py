"""How much do touching neighbours change what the classifier calls a cell?

    .venv/bin/python research/crowding_probe.py --data /tmp/chula-crops \
        --out research/results/classification/crowding.json

research/txl_calls_sheet.py found most of txl-pbc's wrong calls in crowded windows, and
research/isolate_cell_probe.py found that hiding the neighbours at serving time reads worse (a
flat surround is unlike the training crops). This probe asks the converse on Chula's own
labelled test crops: add `k` touching neighbours (red cells cut by their stain mask from other
crops of the same smear, so of the same stain and patient, placed around the centre cell at the
distance of the two radii times 0.85-1.05, drawn only where the crop shows background, so the
centre cell stays whole) and measure what the
shipped model then calls the cells: accuracy, normal cells called normal, abnormal cells called
normal, and the classes the changed calls go to. If crowding alone moved normal cells to
abnormal classes, training with crowded crops would be the next recipe to try; if not, it is not
the cause by itself.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from PIL import Image
from scipy import ndimage

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.bench_shift import cell_mask  # noqa: E402
from core.classify.predictor import Predictor  # noqa: E402
from research.crops import load_crops  # noqa: E402
from research.probe_fields import command_line, write_result  # noqa: E402

NORMAL = "normal"


def centre_cell(rgb: np.ndarray) -> np.ndarray:
    """The mask of the cell under the crop's centre (the component of the stain mask there, or
    nearest to it), holes filled."""
    mask = cell_mask(rgb)
    labels, count = ndimage.label(mask)
    if count == 0:
        return mask
    h, w = mask.shape
    centre = labels[h // 2, w // 2]
    if centre == 0:
        ys, xs = np.nonzero(labels)
        nearest = np.argmin((ys - h // 2) ** 2 + (xs - w // 2) ** 2)
        centre = labels[ys[nearest], xs[nearest]]
    return np.asarray(ndimage.binary_fill_holes(labels == centre))


def crowded(
    rgb: np.ndarray, donors: list[tuple[np.ndarray, np.ndarray]], k: int, rng: np.random.Generator
) -> np.ndarray:
    """`rgb` with `k` donor cells touching its centre cell, at evenly spread random angles."""
    out = rgb.copy()
    own = centre_cell(rgb)
    taken = own.copy()
    radius = np.sqrt(max(own.sum(), 1) / np.pi)
    h, w = own.shape
    cy, cx = np.array(ndimage.center_of_mass(own)) if own.any() else (h / 2, w / 2)
    start = rng.uniform(0, 2 * np.pi)
    for j in range(k):
        donor_rgb, donor_mask = donors[int(rng.integers(len(donors)))]
        r_donor = np.sqrt(max(donor_mask.sum(), 1) / np.pi)
        angle = start + 2 * np.pi * j / k + rng.uniform(-0.3, 0.3)
        distance = (radius + r_donor) * rng.uniform(0.85, 1.05)
        dy, dx = np.array(ndimage.center_of_mass(donor_mask))
        oy = round(float(cy + distance * np.sin(angle) - dy))
        ox = round(float(cx + distance * np.cos(angle) - dx))
        ys, xs = np.nonzero(donor_mask)
        ty, tx = ys + oy, xs + ox
        inside = (ty >= 0) & (ty < h) & (tx >= 0) & (tx < w)
        ys, xs, ty, tx = ys[inside], xs[inside], ty[inside], tx[inside]
        free = ~taken[ty, tx]
        out[ty[free], tx[free]] = donor_rgb[ys[free], xs[free]]
        taken[ty[free], tx[free]] = True
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, required=True, help="an import-chula crop set")
    parser.add_argument("--model", type=Path, default=ROOT / "models" / "default")
    parser.add_argument("--neighbours", default="1,2,3")
    parser.add_argument("--sheet", type=Path, help="a JPEG of examples, crops as crowded")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    started = time.perf_counter()
    predictor = Predictor.load(args.model, device="cpu", tta_views=1)
    classes = np.asarray(predictor.classes)
    manifest = pd.read_csv(args.data / "manifest.csv")
    test = manifest[(manifest.split == "test") & manifest.label.isin(classes)].reset_index(
        drop=True
    )

    crops = [np.asarray(crop) for crop in load_crops(args.data, test.path)]
    truth = test.label.to_numpy()
    normal_idx = np.nonzero(truth == NORMAL)[0]
    # Each smear's whole cells, as neighbours for its other crops.
    donors: dict[str, list[tuple[int, np.ndarray, np.ndarray]]] = {}
    for i, (crop, smear) in enumerate(zip(crops, test.source_image, strict=True)):
        mask = centre_cell(crop)
        if 300 < mask.sum() < 2500 and not (mask[0].any() or mask[-1].any()):
            donors.setdefault(smear, []).append((i, crop, mask))

    def neighbours_of(i: int) -> list[tuple[np.ndarray, np.ndarray]]:
        return [(c, m) for j, c, m in donors.get(test.source_image[i], []) if j != i]

    def called(images: list[np.ndarray]) -> np.ndarray:
        out = []
        for s in range(0, len(images), 256):
            batch = [Image.fromarray(a) for a in images[s : s + 256]]
            out.append(predictor.forward(predictor.preprocess.batch(batch), 1).argmax(1))
        return classes[np.concatenate(out)]

    def figures(calls: np.ndarray) -> dict[str, Any]:
        normal = truth == NORMAL
        return {
            "accuracy": round(float((calls == truth).mean()), 4),
            "normal_called_normal": round(float((calls[normal] == NORMAL).mean()), 4),
            "abnormal_called_normal": round(float((calls[~normal] == NORMAL).mean()), 4),
            "recall": {
                str(c): round(float((calls[truth == c] == c).mean()), 3)
                for c in classes
                if (truth == c).sum() >= 20
            },
        }

    plain = called(crops)
    alone = [i for i in range(len(crops)) if not neighbours_of(i)]
    result: dict[str, Any] = {
        "crops": len(crops),
        "crops_without_a_neighbour_to_add": len(alone),
        "plain": figures(plain),
    }
    print("plain", json.dumps(result["plain"]), flush=True)
    examples = []
    for k in (int(v) for v in args.neighbours.split(",")):
        images = [
            crowded(c, neighbours_of(i), k, np.random.default_rng(1000 * k + i))
            if neighbours_of(i)
            else c
            for i, c in enumerate(crops)
        ]
        calls = called(images)
        moved = Counter(
            f"{a} -> {b}" for a, b in zip(plain, calls, strict=True) if a != b
        ).most_common(12)
        normal_moved = Counter(
            str(b)
            for a, b, t in zip(plain, calls, truth, strict=True)
            if t == NORMAL and a == NORMAL and b != NORMAL
        ).most_common()
        result[f"neighbours {k}"] = {
            **figures(calls),
            "changed": round(float((calls != plain).mean()), 4),
            "changes_most_common": moved,
            "normal_calls_lost_to": normal_moved,
        }
        print(f"neighbours {k}", json.dumps(result[f"neighbours {k}"]), flush=True)
        examples.append([images[i] for i in normal_idx[:12]])
    if args.sheet:
        rows = [[crops[i] for i in normal_idx[:12]], *examples]
        sheet = Image.new("RGB", (72 * 12, 72 * len(rows)), "white")
        for r, row in enumerate(rows):
            for c, a in enumerate(row):
                sheet.paste(Image.fromarray(a), (72 * c, 72 * r))
        args.sheet.parent.mkdir(parents=True, exist_ok=True)
        sheet.save(args.sheet, quality=85)
    result["command"] = command_line("research/crowding_probe.py", None)
    result["seconds"] = round(time.perf_counter() - started, 1)
    if args.out:
        write_result(args.out, result)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
