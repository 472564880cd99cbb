"""How much of a heatmap lies on the cell it explains (issue #12: explanations that show the cell).

    .venv/bin/python research/heatmap_mass.py [--model models/default] [--limit 500] \\
        [--methods gradcam-s32,layercam-s8] \\
        [--examples research/results/classification/heatmap-mass.jpg]

Takes the test split of an imported crop set (`python -m training import-chula`: data/chula,
72x72 crops at the native scale with the labelled cell at the centre), keeps the crops whose
label the model knows, and for each class-activation method (METHODS; core/classify/gradcam.py)
computes the heatmap of the class the model predicts, as the service draws it (in [0, 1] at input
size), brought back to the crop's pixels and scaled to sum 1. Its mass inside the centre cell's
outline (`cell_outline`: the classical segmentation of core/detect/classical.py run on the crop,
holes filled, the region under or nearest the crop's centre) is the figure: 1 when every bit of
heat is on the cell. A uniform heatmap scores the share of the crop the outline covers, reported
as the chance level. Mean and median per method, per-class means, the map's side before
upsampling and the time per crop; a grid of example crops with each method's heatmap and the
outline (--examples) for a person to look at.

Two checks on the measure itself. The cell is always at the centre, so a map that knows nothing
but that scores well: `centre-prior`, a fixed Gaussian, is reported as a control. `--shift PX`
cuts every crop again from its smear with the window moved PX along each axis (random signs),
so the cell sits off the centre and the outline is taken at its new place: a map that follows
the cell keeps its mass there, the centre prior loses it.

Writes --out (JSON; default research/results/classification/heatmap-mass.json) with the command
line and n.

Results with the model shipped before the stain augmentation, on all 2805 test crops
(research/results/classification/heatmap-mass-previous-model.json; the shipped model's are in
heatmap-mass-shipped.json and docs/classification.md): mass inside the cell, mean, chance 0.25:
Grad-CAM on the body's output (3x3, the heatmaps before issue #12) 0.14, below chance; LayerCAM at
stride 16 (6x6) 0.63, at stride 8 (12x12) 0.53; LayerCAM at strides 8 and 16 by their geometric
mean (12x12 detail) 0.62, now the service's. The centre prior scores 0.80; with --shift 12 (500
crops) it falls to 0.49 and the service's map to 0.56.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw
from scipy import ndimage as ndi
from tqdm import tqdm

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.bench_shift import load_test_crops  # noqa: E402
from core.detect.classical import (  # noqa: E402
    CELL_RADIUS_PX,
    NoCellsError,
    otsu_threshold,
    segment,
)

DEFAULT_OUT = ROOT / "docs" / "classification" / "heatmap-mass.json"


CENTRE_PRIOR = "centre-prior"


@dataclass(frozen=True)
class Method:
    """A heatmap: CAM `kind` on the layers of `strides` (several combined by `fusion`; see
    core.classify.gradcam.class_activation_maps), with the input `upscale` times larger (the crop
    brought to upscale x input size, as the preprocessor would, and the map back)."""

    name: str
    kind: str  # "gradcam", "layercam" or CENTRE_PRIOR (a control)
    strides: tuple[int, ...]
    upscale: int = 1
    fusion: str = "mean"
    note: str = ""


METHODS: dict[str, Method] = {
    m.name: m
    for m in (
        Method("gradcam-s32", "gradcam", (32,), note="before issue #12: the body's output"),
        Method("gradcam-s32-up2", "gradcam", (32,), upscale=2, note="input at 2x the size"),
        Method("gradcam-s16", "gradcam", (16,)),
        Method("gradcam-s8", "gradcam", (8,)),
        Method("layercam-s16", "layercam", (16,)),
        Method("layercam-s8", "layercam", (8,)),
        Method("layercam-s4", "layercam", (4,)),
        Method("layercam-s8+s16", "layercam", (8, 16), note="maps of both stages averaged"),
        Method(
            "layercam-s8xs16",
            "layercam",
            (8, 16),
            fusion="product",
            note="geometric mean of both stages' maps: the 12x12 map where the 6x6 one agrees",
        ),
        Method(
            "centre-prior",
            CENTRE_PRIOR,
            (),
            note="control, not an explanation: a fixed Gaussian at the crop's centre (sigma = "
            "half a normal cell's radius), the same for every crop; what a map that only "
            "knows the cell is centred would score",
        ),
    )
}
BEFORE = "gradcam-s32"


def cell_outline(rgb: np.ndarray, point: tuple[int, int] | None = None) -> np.ndarray:
    """True inside the outline of the cell at (or nearest) the centre of an (H, W, 3) crop, or at
    `point` (row, column) when given.

    The crop is segmented as a smear field is (core.detect.classical.segment: the green channel
    against Otsu's threshold moved towards the plasma, pale centres up to a cell's size filled,
    touching cells cut apart by a watershed); the region under the centre pixel, or the one
    nearest it, is taken and its holes filled. When that finds nothing (a crop with too little
    contrast, or only fragments), the fallback is the plain Otsu foreground of the green channel,
    holes filled, its connected component at or nearest the centre. All False when even that
    has nothing.
    """
    height, width = rgb.shape[:2]
    centre = (height // 2, width // 2) if point is None else point
    try:
        labels = segment(rgb).labels
    except NoCellsError:
        labels = np.zeros((height, width), dtype=np.int32)
    if not labels.any():
        green = ndi.gaussian_filter(rgb[..., 1].astype(np.float32), 1.0)
        if float(green.max() - green.min()) < 1.0:
            return np.zeros((height, width), dtype=bool)
        labels, _ = ndi.label(ndi.binary_fill_holes(green < otsu_threshold(green)))
        if not labels.any():
            return np.zeros((height, width), dtype=bool)
    index = int(labels[centre])
    if index == 0:
        # The labelled pixel nearest the point.
        _, (rows, cols) = ndi.distance_transform_edt(labels == 0, return_indices=True)
        index = int(labels[rows[centre], cols[centre]])
    return np.asarray(ndi.binary_fill_holes(labels == index))


def shifted_crops(
    data: Path, paths: Sequence[Path], smears: Path, shift: int, seed: int, window: int
) -> tuple[list[Image.Image], list[tuple[int, int]]]:
    """Each crop cut again from its smear image with the window moved `shift` px along each
    axis (the signs drawn at random, seeded), so that the labelled cell sits off the centre; and
    where it sits, (row, column). Where the window runs past the image it is filled with the
    image's median colour, as at import."""
    import pandas as pd

    from core.smear.crop import crop_cell, median_colour

    manifest = pd.read_csv(data / "manifest.csv")
    where = {
        str((data / p).resolve()): (str(s), int(x), int(y))
        for p, s, x, y in zip(
            manifest["path"], manifest["source_image"], manifest["x"], manifest["y"], strict=True
        )
    }
    rng = np.random.default_rng(seed)
    signs = rng.choice([-1, 1], size=(len(paths), 2))
    crops: list[Image.Image] = []
    points: list[tuple[int, int]] = []
    opened: dict[str, tuple[Image.Image, tuple[int, int, int]]] = {}
    for path, (sx, sy) in zip(paths, signs, strict=True):
        source, x, y = where[str(Path(path).resolve())]
        if source not in opened:
            with Image.open(smears / source) as smear:
                rgb = smear.convert("RGB")
            # One smear at a time: the manifest lists each smear's crops together.
            opened = {source: (rgb, median_colour(rgb))}
        field, fill = opened[source]
        dx, dy = int(sx) * shift, int(sy) * shift
        crop, _ = crop_cell(field, x + dx, y + dy, window, fill)
        crops.append(crop)
        points.append((window // 2 - dy, window // 2 - dx))
    return crops, points


def mass_inside(cam: np.ndarray, mask: np.ndarray) -> float | None:
    """Share of the heatmap's mass inside `mask` (both at the crop's size); None for a map with
    no mass at all."""
    total = float(cam.sum())
    if total <= 0:
        return None
    return float(cam[mask].sum() / total)


def heatmaps(
    model: Any,
    crops: Sequence[Image.Image],
    class_idx: Any,
    method: Method,
    preprocess: Any,
) -> np.ndarray:
    """(N, H, W) heatmaps of `method` at the crops' own size, in [0, 1]."""
    import torch
    import torch.nn.functional as F

    from core.classify.gradcam import class_activation_maps
    from core.classify.preprocess import Preprocessor

    width, height = crops[0].size
    if any(c.size != (width, height) for c in crops):
        raise ValueError("crops of one batch differ in size")
    if method.kind == CENTRE_PRIOR:
        return np.repeat(centre_prior(height, width)[None], len(crops), axis=0)
    prep = preprocess
    if method.upscale != 1:
        prep = Preprocessor(preprocess.size * method.upscale, preprocess.mean, preprocess.std)
    batch = torch.from_numpy(prep.batch(crops))
    cam = class_activation_maps(model, batch, class_idx, method.kind, method.strides, method.fusion)
    width, height = crops[0].size
    if any(c.size != (width, height) for c in crops):
        raise ValueError("crops of one batch differ in size")
    # The crops are square: pad-resize is a plain resize, so the map resizes back the same way.
    small = F.interpolate(cam[:, None], size=(height, width), mode="bilinear", antialias=True)
    return np.asarray(small[:, 0].clamp(0, 1).numpy())


def centre_prior(height: int, width: int) -> np.ndarray:
    """The control map: a Gaussian at the centre, sigma half a normal cell's radius, max 1."""
    yy, xx = np.mgrid[:height, :width]
    sigma = CELL_RADIUS_PX / 2
    d2 = (yy - (height - 1) / 2) ** 2 + (xx - (width - 1) / 2) ** 2
    return np.exp(-d2 / (2 * sigma**2))


def map_side(model: Any, method: Method, size: int) -> list[int] | None:
    """(h, w) of the method's finest map before upsampling, at its input size (None: no map)."""
    import torch

    if method.kind == CENTRE_PRIOR:
        return None

    from core.classify.gradcam import class_activation_maps

    x = torch.zeros(1, 3, size * method.upscale, size * method.upscale)
    raw = class_activation_maps(
        model, x, None, method.kind, method.strides, method.fusion, return_raw=True
    )
    return [int(raw.shape[-2]), int(raw.shape[-1])]


def _outline_pixels(mask: np.ndarray) -> np.ndarray:
    return mask & ~ndi.binary_erosion(mask, border_value=0)


def examples_grid(
    crops: Sequence[Image.Image],
    masks: Sequence[np.ndarray],
    maps: dict[str, np.ndarray],
    captions: Sequence[str],
    zoom: int = 2,
) -> Image.Image:
    """Rows: crops (caption on the left); columns: the crop, then each method's heatmap over it;
    the cell's outline in white on every picture."""
    from core.classify.gradcam import overlay

    side = crops[0].size[0] * zoom
    label_w, head_h = 150, 16
    names = list(maps)
    grid = Image.new(
        "RGB", (label_w + side * (1 + len(names)), head_h + side * len(crops)), "white"
    )
    draw = ImageDraw.Draw(grid)
    for col, name in enumerate(["crop", *names]):
        draw.text((label_w + col * side + 2, 2), name, fill="black")
    for row, (crop, mask) in enumerate(zip(crops, masks, strict=True)):
        top = head_h + row * side
        draw.text((4, top + side // 2 - 6), captions[row], fill="black")
        rgb = np.asarray(crop.convert("RGB"))
        edge = _outline_pixels(mask)
        pictures = [rgb] + [overlay(rgb, maps[name][row]) for name in names]
        for col, picture in enumerate(pictures):
            shown = picture.copy()
            shown[edge] = 255
            big = Image.fromarray(shown).resize((side, side), Image.Resampling.NEAREST)
            grid.paste(big, (label_w + col * side, top))
    return grid


def _summary(values: Sequence[float]) -> dict[str, float]:
    arr = np.asarray(values, dtype=np.float64)
    return {
        "mean": round(float(arr.mean()), 4),
        "median": round(float(np.median(arr)), 4),
        "p25": round(float(np.percentile(arr, 25)), 4),
        "p75": round(float(np.percentile(arr, 75)), 4),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", type=Path, default=ROOT / "models" / "default")
    parser.add_argument("--data", type=Path, default=ROOT / "data" / "chula", help="imported crops")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--limit", type=int, help="a seeded, class-stratified subset of the crops")
    parser.add_argument("--seed", type=int, default=0, help="of the --limit subset and examples")
    parser.add_argument(
        "--methods", default=",".join(METHODS), help=f"comma-separated, of {', '.join(METHODS)}"
    )
    parser.add_argument(
        "--examples", type=Path, help="grid of example crops with each heatmap (PNG)"
    )
    parser.add_argument("--n-examples", type=int, default=8, help="rows of the --examples grid")
    parser.add_argument(
        "--shift",
        type=int,
        default=0,
        help="a check on the measure: cut each crop again from its smear with the window moved "
        "this many px along each axis, so that the cell is off the centre (needs --smears)",
    )
    parser.add_argument(
        "--smears",
        type=Path,
        default=ROOT.parent / "shared" / "datasets" / "chula-rbc-12" / "Dataset",
        help="the smear images the crops were cut from (for --shift)",
    )
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    progress = not args.no_progress
    started = time.perf_counter()
    names = [n.strip() for n in args.methods.split(",") if n.strip()]
    unknown = [n for n in names if n not in METHODS]
    if unknown or not names:
        print(f"unknown methods {unknown}; expected some of {', '.join(METHODS)}", file=sys.stderr)
        return 2

    import torch

    from core.classify.gradcam import DEFAULT_FUSION, DEFAULT_METHOD, DEFAULT_STRIDES
    from core.classify.predictor import Predictor

    torch.set_num_threads(args.threads)
    predictor = Predictor.load(args.model, device="cpu", threads=args.threads)
    classes = predictor.classes
    try:
        test = load_test_crops(args.data, classes, args.limit, args.seed)
    except Exception as exc:
        print(f"cannot read the test crops of {args.data}: {exc}", file=sys.stderr)
        return 2
    paths, labels, crops, skipped, n_test = (
        test.paths, test.labels, test.images, test.skipped, test.n_test
    )  # fmt: skip
    points: list[tuple[int, int] | None] = [None] * len(crops)
    if args.shift:
        try:
            crops, cut_at = shifted_crops(
                args.data, paths, args.smears, args.shift, args.seed, crops[0].size[0]
            )
        except (OSError, KeyError, ValueError) as exc:
            print(f"cannot cut shifted crops from {args.smears}: {exc}", file=sys.stderr)
            return 2
        points = list(cut_at)
    sizes = sorted({c.size for c in crops})
    if any(w != h for w, h in sizes):
        print(f"the crops must be square; sizes found: {sizes}", file=sys.stderr)
        return 2
    loaded = time.perf_counter()

    # The outline of each crop's labelled cell (at the centre unless --shift).
    masks = [
        cell_outline(np.asarray(crop), point)
        for crop, point in tqdm(
            zip(crops, points, strict=True), total=len(crops), desc="outlines", disable=not progress
        )
    ]
    no_outline = [i for i, m in enumerate(masks) if not m.any()]
    usable = [i for i in range(len(crops)) if masks[i].any()]
    chance = [float(masks[i].mean()) for i in usable]
    outlined = time.perf_counter()

    # The class each map explains: the model's prediction, as the service reports it.
    predicted = np.asarray(
        [
            p.class_index
            for start in range(0, len(crops), 256)
            for p in predictor.predict(crops[start : start + 256])
        ]
    )
    model = predictor.model
    figures: dict[str, dict[str, Any]] = {}
    shown_maps: dict[str, np.ndarray] = {}
    rng = np.random.default_rng(args.seed)
    shown = sorted(
        int(rng.choice([i for i in usable if labels[i] == c]))
        for c in sorted({labels[i] for i in usable})
    )[: args.n_examples]
    for name in names:
        method = METHODS[name]
        shares: list[float] = []
        empty = 0
        seconds = 0.0
        maps_kept: dict[int, np.ndarray] = {}
        for start in tqdm(
            range(0, len(usable), args.batch), desc=name, disable=not progress, leave=False
        ):
            chunk = usable[start : start + args.batch]
            t0 = time.perf_counter()
            maps = heatmaps(
                model,
                [crops[i] for i in chunk],
                torch.as_tensor(predicted[chunk]),
                method,
                predictor.preprocess,
            )
            seconds += time.perf_counter() - t0
            for i, cam in zip(chunk, maps, strict=True):
                share = mass_inside(cam, masks[i])
                if share is None:  # no heat at all: shown as the plain crop, scored as uniform
                    empty += 1
                    share = float(masks[i].mean())
                shares.append(share)
                if i in shown:
                    maps_kept[i] = cam
        per_class: dict[str, float] = {}
        for c in sorted({labels[i] for i in usable}):
            values = [s for s, i in zip(shares, usable, strict=True) if labels[i] == c]
            per_class[c] = round(float(np.mean(values)), 4)
        figures[name] = {
            "kind": method.kind,
            "strides": list(method.strides),
            "fusion": method.fusion if len(method.strides) > 1 else None,
            "input_upscale": method.upscale,
            "note": method.note,
            "map_side": map_side(model, method, predictor.preprocess.size),
            **_summary(shares),
            "share_at_least_0.6": round(float(np.mean(np.asarray(shares) >= 0.6)), 4),
            "empty_maps": empty,
            "ms_per_crop": round(1000 * seconds / max(1, len(usable)), 2),
            "per_class_mean": per_class,
        }
        shown_maps[name] = np.stack([maps_kept[i] for i in shown]) if shown else np.zeros(0)
        f = figures[name]
        side = "x".join(map(str, f["map_side"])) if f["map_side"] else "-"
        print(
            f"{name:>16}: mass inside the cell mean {f['mean']:.3f} median {f['median']:.3f} "
            f"(map {side}, {f['ms_per_crop']:.1f} ms/crop)"
        )
    finished = time.perf_counter()

    default_name = next(
        (
            m.name
            for m in METHODS.values()
            if (m.kind, m.strides, m.fusion, m.upscale)
            == (DEFAULT_METHOD, DEFAULT_STRIDES, DEFAULT_FUSION, 1)
        ),
        None,
    )
    out: Path = args.out
    out.parent.mkdir(parents=True, exist_ok=True)
    if args.examples and shown:
        args.examples.parent.mkdir(parents=True, exist_ok=True)
        captions = [f"{labels[i]} -> {classes[predicted[i]]}"[:24] for i in shown]
        examples_grid(
            [crops[i] for i in shown], [masks[i] for i in shown], shown_maps, captions
        ).save(args.examples)
    result = {
        "command": " ".join(
            ["research/heatmap_mass.py", *(sys.argv[1:] if argv is None else argv)]
        ),
        "model": str(args.model),
        "architecture": predictor.card.architecture,
        "input_size": predictor.preprocess.size,
        "data": str(args.data),
        "split": "test",
        "n": len(usable),
        "n_without_outline": len(no_outline),
        "n_test_known_classes": n_test,
        "limit": args.limit,
        "seed": args.seed,
        "shift_px": args.shift,
        "skipped_labels": skipped,
        "crop_sizes": [list(s) for s in sizes],
        "measure": "share of the heatmap of the predicted class (as the service draws it: in "
        "[0, 1] at input size, bilinearly resized to the crop, scaled to sum 1) inside the centre "
        "cell's outline (cell_outline); a map with no heat counts as uniform",
        "chance": {
            **_summary(chance),
            "what": "share of the crop inside the outline: a uniform heatmap's score",
        },
        "accuracy_of_explained_predictions": round(
            float(np.mean([classes[predicted[i]] == labels[i] for i in usable])), 4
        ),
        "methods": figures,
        "default": default_name,
        "before": BEFORE,
        "timings_s": {
            "load": round(loaded - started, 3),
            "outlines": round(outlined - loaded, 3),
            "total": round(finished - started, 3),
        },
        "examples_png": str(args.examples) if args.examples else None,
        "threads": args.threads,
        "cpus": os.cpu_count(),
        "machine": platform.processor() or platform.machine(),
        "torch": torch.__version__,
    }
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(
        f"n = {len(usable)} crops; chance (outline's share of the crop) mean "
        f"{result['chance']['mean']:.3f}; written {out}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
