"""How the classifier holds up under the shifts real laboratories produce (issue #12).

    .venv/bin/python bench/bench_shift.py [--model models/default --model OTHER] [--limit 300]

Takes the test split of an imported crop set (`python -m training import-chula`: data/chula,
72x72 crops at 0.19 um per pixel), keeps the crops whose label the model knows, and classifies
each under every condition:

- `clean`: the crop as imported;
- `recolour-<source>`: Reinhard colour transfer, in CIELAB, of the crop's red-cell pixels and its
  background pixels separately, to the colour statistics of a txl-pbc source (bccd, bcd, raabin:
  other laboratories' stains and cameras), measured on that source's train fields only;
- `scale-0.7`, `scale-1.4`: the crop as a microscope with 0.7x / 1.4x the pixels per micron
  would have taken it, brought back to the training scale as the service does when it is told
  the true scale (LANCZOS): what resampling alone costs;
- `blur`: Gaussian blur, sigma 1.0 px (PIL's GaussianBlur(radius=1.0); Pillow's radius is the
  standard deviation, approximated by three box blurs);
- `jpeg-40`: a JPEG round trip at quality 40 (Pillow's default 4:2:0 chroma subsampling);
- `bright+20`, `bright-20`: every channel times 1.2 / 0.8, clipped.

Every --model is scored on the same transformed crops in one run: accuracy and macro-F1 (over the
classes present), and the accuracy drop against that model's clean figure. Writes --out (JSON:
every figure, the colour statistics used, the command line, n and timings), a markdown table
beside it, a grid of example crops under each condition (PNG) and the per-source colour
statistics (a small JSON cache, recomputed when its parameters change).
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import sys
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml
from PIL import Image, ImageDraw, ImageFilter
from scipy import ndimage
from skimage.color import lab2rgb, rgb2lab
from skimage.filters import threshold_otsu
from tqdm import tqdm

ROOT = Path(__file__).resolve().parent.parent

SOURCES = ("bccd", "bcd", "raabin")
SCALES = (0.7, 1.4)
BLUR_SIGMA = 1.0
JPEG_QUALITY = 40
BRIGHTNESS = (("bright+20", 1.2), ("bright-20", 0.8))
CROP_SIDE = 72

# Colour statistics of a source's fields (see `field_regions`).
FIELDS_PER_SOURCE = 60
STATS_SEED = 0
CORE = 0.8  # red-cell pixels: inside the ellipse inscribed in the box, shrunk to this share
GROW = 0.1  # background pixels: outside every box grown by this share of its side, each way
MIN_REGION_PX = 30  # a region smaller than this in a crop is not mapped on its own
MASK_SIGMA = 1.5  # px: the soft edge between the two regions' colour maps
MAX_STD_RATIO = 3.0  # a crop region flatter than the target is not stretched past this
STATS_METHOD = "green-otsu-v1"  # bump when the statistics change meaning: the cache is redone


@dataclass(frozen=True)
class ColourStats:
    """CIELAB mean and standard deviation of the red-cell and the background pixels."""

    cell_mean: tuple[float, float, float]
    cell_std: tuple[float, float, float]
    background_mean: tuple[float, float, float]
    background_std: tuple[float, float, float]

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ColourStats:
        def three(key: str) -> tuple[float, float, float]:
            v = d[key]
            return (float(v[0]), float(v[1]), float(v[2]))

        return cls(
            three("cell_mean"), three("cell_std"), three("background_mean"), three("background_std")
        )


# --- the shifts: pure functions of a PIL image -------------------------------------------------


def _rgb(image: Image.Image) -> np.ndarray:
    return np.asarray(image.convert("RGB"))


def cell_mask(rgb: np.ndarray) -> np.ndarray:
    """True on a crop's red-cell pixels: darker than Otsu's threshold on the green channel,
    where the red cells' stain absorbs most and a pale background absorbs little. The same split
    picks the cell and background pixels of the source fields, so both sides mean the same."""
    green = rgb[..., 1].astype(np.float64)
    if green.max() - green.min() < 1:
        return np.zeros(green.shape, dtype=bool)
    return np.asarray(green < threshold_otsu(green))


def _to_lab(rgb: np.ndarray) -> np.ndarray:
    return np.asarray(rgb2lab(rgb.astype(np.float64) / 255.0))


def _to_rgb(lab: np.ndarray) -> np.ndarray:
    with warnings.catch_warnings():
        # Colours outside sRGB (a strong target on a saturated pixel) are clipped, as intended.
        warnings.simplefilter("ignore")
        rgb = lab2rgb(lab)
    return np.clip(np.rint(rgb * 255.0), 0, 255).astype(np.uint8)


def _region_map(
    lab: np.ndarray,
    region: np.ndarray,
    mean: Sequence[float],
    std: Sequence[float],
    own: tuple[Sequence[float], Sequence[float]] | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Reinhard's map of one region, per Lab channel: (source mean, stretch, target mean), so
    that `region`'s mean and std become `mean` and `std`; with `own` (mean, std), the map takes
    those statistics to the target instead of the region's own (one map for a whole
    laboratory). The stretch is capped at MAX_STD_RATIO, so a flat region's noise is not blown
    up."""
    if own is not None:
        src_mean, src_std = np.asarray(own[0], dtype=np.float64), np.asarray(own[1])
        ratio = np.clip(np.asarray(std) / np.maximum(src_std, 1e-6), 0.0, MAX_STD_RATIO)
        return src_mean, ratio, np.asarray(mean, dtype=np.float64)
    values = lab[region]
    src_mean, src_std = values.mean(axis=0), values.std(axis=0)
    ratio = np.clip(np.asarray(std) / np.maximum(src_std, 1e-6), 0.0, MAX_STD_RATIO)
    return src_mean, ratio, np.asarray(mean, dtype=np.float64)


def recolour(
    image: Image.Image,
    target: ColourStats,
    mask_sigma: float = MASK_SIGMA,
    own: ColourStats | None = None,
) -> Image.Image:
    """The crop as another laboratory's stain and camera would show it: Reinhard colour transfer
    in CIELAB, the red-cell pixels to the target's cell statistics and the background pixels to
    its background statistics (one global transfer would give the background the cells' colour
    shift, which no stain does). Near the cell border the two maps' parameters (source mean,
    stretch, target mean) are blended with a Gaussian-blurred mask: blending the two mapped
    images instead would stretch a border pixel by the other region's statistics, a dark or
    bright halo. A crop without two usable regions is mapped whole by the region it has.

    Without `own`, each crop's own statistics are mapped to the target's, so every crop ends
    with the same colour mean and spread: the differences between cells (a pale hypochromic
    cell, a dense spherocyte) are erased with the stain. With `own`, the statistics of the
    crop's whole laboratory, one map serves every crop: a stain change, which keeps them."""
    rgb = _rgb(image)
    lab = _to_lab(rgb)
    cells = cell_mask(rgb)
    n_cells = int(cells.sum())
    own_cells = None if own is None else (own.cell_mean, own.cell_std)
    own_background = None if own is None else (own.background_mean, own.background_std)
    if min(n_cells, cells.size - n_cells) < MIN_REGION_PX:
        mostly_cell = 2 * n_cells > cells.size
        mean, std, whose = (
            (target.cell_mean, target.cell_std, own_cells)
            if mostly_cell
            else (target.background_mean, target.background_std, own_background)
        )
        src_mean, ratio, dst_mean = _region_map(
            lab, np.ones(cells.shape, dtype=bool), mean, std, whose
        )
    else:
        to_cells = _region_map(lab, cells, target.cell_mean, target.cell_std, own_cells)
        to_background = _region_map(
            lab, ~cells, target.background_mean, target.background_std, own_background
        )
        soft = ndimage.gaussian_filter(cells.astype(np.float64), mask_sigma, mode="nearest")
        weight = soft[..., None]
        src_mean, ratio, dst_mean = (
            weight * c + (1.0 - weight) * b for c, b in zip(to_cells, to_background, strict=True)
        )
    return Image.fromarray(_to_rgb((lab - src_mean) * ratio + dst_mean))


def rescale_round_trip(image: Image.Image, factor: float) -> Image.Image:
    """The crop as a microscope with `factor` x the pixels per micron would have taken it, then
    brought back to the original size as the service does when given the true scale (LANCZOS):
    the loss from resampling alone. Taking it: area averaging (BOX, as a sensor's pixels
    integrate light) when the factor shrinks the crop, LANCZOS when it enlarges (no detail finer
    than the original exists to add)."""
    rgb = image.convert("RGB")
    w, h = rgb.size
    size = (max(1, round(w * factor)), max(1, round(h * factor)))
    taken = Image.Resampling.BOX if factor < 1 else Image.Resampling.LANCZOS
    return rgb.resize(size, taken).resize((w, h), Image.Resampling.LANCZOS)


def gaussian_blur(image: Image.Image, sigma: float = BLUR_SIGMA) -> Image.Image:
    """Defocus or a softer objective: PIL's GaussianBlur, whose radius is the standard deviation
    in pixels (three box blurs)."""
    return image.convert("RGB").filter(ImageFilter.GaussianBlur(radius=sigma))


def jpeg_round_trip(image: Image.Image, quality: int = JPEG_QUALITY) -> Image.Image:
    """A camera or a LIS that stores strongly compressed JPEGs (Pillow's default 4:2:0 chroma
    subsampling)."""
    buffer = io.BytesIO()
    image.convert("RGB").save(buffer, format="JPEG", quality=quality)
    with Image.open(io.BytesIO(buffer.getvalue())) as decoded:
        return decoded.convert("RGB")


def brightness(image: Image.Image, factor: float) -> Image.Image:
    """Exposure or lamp brightness: every channel times `factor`, rounded and clipped to 0..255."""
    scaled = _rgb(image).astype(np.float64) * factor
    return Image.fromarray(np.clip(np.rint(scaled), 0, 255).astype(np.uint8))


def conditions(
    stats: dict[str, ColourStats],
) -> list[tuple[str, Callable[[Image.Image], Image.Image]]]:
    """(name, shift) for every condition, in table order; one recolour per source in `stats`."""

    def recolour_to(target: ColourStats) -> Callable[[Image.Image], Image.Image]:
        return lambda image: recolour(image, target)

    def scaled(factor: float) -> Callable[[Image.Image], Image.Image]:
        return lambda image: rescale_round_trip(image, factor)

    def bright(factor: float) -> Callable[[Image.Image], Image.Image]:
        return lambda image: brightness(image, factor)

    found: list[tuple[str, Callable[[Image.Image], Image.Image]]] = [
        ("clean", lambda image: image.convert("RGB"))
    ]
    found += [(f"recolour-{source}", recolour_to(s)) for source, s in stats.items()]
    found += [(f"scale-{factor}", scaled(factor)) for factor in SCALES]
    found += [("blur", gaussian_blur), (f"jpeg-{JPEG_QUALITY}", jpeg_round_trip)]
    found += [(name, bright(factor)) for name, factor in BRIGHTNESS]
    return found


# --- a source's colour statistics from its YOLO fields ----------------------------------------


def _class_ids(yolo: Path) -> tuple[set[int], set[int]]:
    """(red-cell ids, white-cell ids) from the set's data.yaml names (or classes.txt)."""
    names: list[str] = []
    if (yolo / "data.yaml").is_file():
        data = yaml.safe_load((yolo / "data.yaml").read_text()) or {}
        raw = data.get("names", [])
        names = (
            [str(raw[k]) for k in sorted(raw)] if isinstance(raw, dict) else [str(n) for n in raw]
        )
    elif (yolo / "classes.txt").is_file():
        names = [line.strip() for line in (yolo / "classes.txt").read_text().splitlines()]
    red = {i for i, n in enumerate(names) if n.strip().lower() in ("rbc", "red_cell", "red cell")}
    white = {
        i for i, n in enumerate(names) if n.strip().lower() in ("wbc", "white_cell", "white cell")
    }
    if not red:
        raise ValueError(f"no red-cell class (RBC) among {yolo}'s class names {names}")
    return red, white


def _boxes(
    label_file: Path, width: int, height: int
) -> list[tuple[int, float, float, float, float]]:
    """(class id, x0, y0, x1, y1) in pixels from a YOLO label file."""
    boxes: list[tuple[int, float, float, float, float]] = []
    if not label_file.is_file():
        return boxes
    for line in label_file.read_text().splitlines():
        parts = line.split()
        if len(parts) < 5:
            continue
        cls, xc, yc, bw, bh = int(float(parts[0])), *(float(p) for p in parts[1:5])
        boxes.append(
            (
                cls,
                (xc - bw / 2) * width,
                (yc - bh / 2) * height,
                (xc + bw / 2) * width,
                (yc + bh / 2) * height,
            )
        )
    return boxes


def field_regions(
    rgb: np.ndarray,
    boxes: Sequence[tuple[int, float, float, float, float]],
    red: set[int],
    white: set[int],
) -> tuple[np.ndarray, np.ndarray]:
    """(red-cell, background) pixel masks of a field. Red-cell pixels: inside the central part of
    a red cell's box (the inscribed ellipse shrunk to CORE), outside every white cell's box, and
    darker in green than the field's Otsu threshold (the pale centre of a cell and a gap between
    cells are not cell). Background: outside every box grown by GROW, and not darker than that
    threshold (an unlabelled cell or debris is not background). The threshold is computed over
    these two candidate sets only, so a dark white cell does not move it; the crops' own split
    (`cell_mask`) is the same threshold on the green channel."""
    height, width = rgb.shape[:2]
    yy, xx = np.mgrid[:height, :width]
    core = np.zeros((height, width), dtype=bool)
    anywhere = np.zeros((height, width), dtype=bool)
    whites = np.zeros((height, width), dtype=bool)
    for cls, x0, y0, x1, y1 in boxes:
        gx, gy = (x1 - x0) * GROW, (y1 - y0) * GROW
        anywhere[
            max(0, int(y0 - gy)) : min(height, int(np.ceil(y1 + gy))),
            max(0, int(x0 - gx)) : min(width, int(np.ceil(x1 + gx))),
        ] = True
        if cls in white:
            whites[max(0, int(y0)) : int(np.ceil(y1)), max(0, int(x0)) : int(np.ceil(x1))] = True
        if cls in red:
            cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
            rx, ry = max((x1 - x0) / 2 * CORE, 1.0), max((y1 - y0) / 2 * CORE, 1.0)
            core |= ((xx - cx) / rx) ** 2 + ((yy - cy) / ry) ** 2 <= 1.0
    core &= ~whites
    outside = ~anywhere
    green = rgb[..., 1].astype(np.float64)
    candidates = green[core | outside]
    if candidates.size == 0 or candidates.max() - candidates.min() < 1:
        return np.zeros_like(core), np.zeros_like(core)
    threshold = threshold_otsu(candidates)
    return core & (green < threshold), outside & (green >= threshold)


def source_colour_stats(
    yolo: Path,
    source: str,
    split: str = "train",
    max_fields: int = FIELDS_PER_SOURCE,
    seed: int = STATS_SEED,
    min_pixels: int = 500,
) -> dict[str, Any]:
    """CIELAB statistics of one source's red-cell and background pixels (`field_regions`) over up
    to `max_fields` of its fields of `split` (seeded choice). Means: the mean over fields of
    each field's mean. Stds: pooled within-field (root mean of the per-field variances), the
    spread a crop from one field has; the spread of the field means across fields is kept too,
    for the record."""
    table = pd.read_csv(yolo / "sources.csv", dtype=str)
    rows = table[(table["source"] == source) & (table["split"] == split)]
    if rows.empty:
        raise ValueError(f"{yolo / 'sources.csv'} has no {split} fields of source {source!r}")
    images = sorted(rows["image"])
    rng = np.random.default_rng(seed)
    if len(images) > max_fields:
        images = sorted(rng.choice(images, size=max_fields, replace=False).tolist())
    red, white = _class_ids(yolo)
    means: dict[str, list[np.ndarray]] = {"cell": [], "background": []}
    variances: dict[str, list[np.ndarray]] = {"cell": [], "background": []}
    pixels = {"cell": 0, "background": 0}
    used = 0
    for rel in images:
        path = yolo / rel
        label = yolo / "labels" / Path(rel).relative_to("images").with_suffix(".txt")
        with Image.open(path) as opened:
            rgb = np.asarray(opened.convert("RGB"))
        boxes = _boxes(label, rgb.shape[1], rgb.shape[0])
        cells, background = field_regions(rgb, boxes, red, white)
        if cells.sum() < min_pixels or background.sum() < min_pixels:
            continue
        used += 1
        for name, region in (("cell", cells), ("background", background)):
            lab = _to_lab(rgb[region][:, None, :])[:, 0, :]
            means[name].append(lab.mean(axis=0))
            variances[name].append(lab.var(axis=0))
            pixels[name] += int(region.sum())
    if not used:
        raise ValueError(f"no {source} field of {yolo} had {min_pixels} cell and background pixels")

    def r(v: np.ndarray) -> list[float]:
        return [round(float(x), 3) for x in v]

    def mean_of(values: list[np.ndarray]) -> tuple[float, float, float]:
        m = r(np.mean(values, axis=0))
        return (m[0], m[1], m[2])

    def pooled_std(values: list[np.ndarray]) -> tuple[float, float, float]:
        s = r(np.sqrt(np.mean(values, axis=0)))
        return (s[0], s[1], s[2])

    stats = ColourStats(
        cell_mean=mean_of(means["cell"]),
        cell_std=pooled_std(variances["cell"]),
        background_mean=mean_of(means["background"]),
        background_std=pooled_std(variances["background"]),
    )
    return {
        "stats": asdict(stats),
        "fields_used": used,
        "fields_tried": len(images),
        "fields_in_split": len(rows),
        "pixels": pixels,
        "cell_mean_spread_between_fields": r(np.std(means["cell"], axis=0)),
        "background_mean_spread_between_fields": r(np.std(means["background"], axis=0)),
    }


def colour_stats(
    yolo: Path, cache: Path | None, max_fields: int, seed: int, progress: bool = True
) -> tuple[dict[str, dict[str, Any]], dict[str, Any], bool]:
    """Per-source statistics, from `cache` when it was made with the same parameters.
    Returns (per source, parameters, whether the cache was used)."""
    params = {
        "txl": str(yolo.resolve()),
        "split": "train",
        "fields_per_source": max_fields,
        "seed": seed,
        "method": STATS_METHOD,
        "core": CORE,
        "grow": GROW,
    }
    if cache is not None and cache.is_file():
        try:
            saved = json.loads(cache.read_text())
            if saved.get("params") == params:
                return saved["sources"], params, True
        except (ValueError, KeyError):
            pass
    sources: dict[str, dict[str, Any]] = {}
    for source in tqdm(SOURCES, desc="colour statistics", disable=not progress, leave=False):
        sources[source] = source_colour_stats(yolo, source, max_fields=max_fields, seed=seed)
    if cache is not None:
        cache.parent.mkdir(parents=True, exist_ok=True)
        cache.write_text(json.dumps({"params": params, "sources": sources}, indent=2) + "\n")
    return sources, params, False


# --- the benchmark -----------------------------------------------------------------------------


@dataclass
class SplitCrops:
    """The test split's crops of the model's classes, as the benches score them."""

    paths: list[Path]
    labels: list[str]
    images: list[Image.Image]  # RGB, opened and read
    skipped: dict[str, int]  # crops left out per label the model does not know
    n_test: int  # test crops of known classes before any --limit


def load_test_crops(
    data: Path, classes: Sequence[str], limit: int | None = None, seed: int = 0
) -> SplitCrops:
    """The test split's crops whose label is one of `classes` (a seeded class-stratified subset
    of `limit` of them, when given), read into memory."""
    from training.classify.data import scan_dataset

    items = scan_dataset(data, check_images=False, progress=False).items
    test = items[items["split"] == "test"]
    if test.empty:
        raise ValueError(f"{data} has no test split (the manifest's split column)")
    known = test["label"].isin(list(classes))
    skipped = test.loc[~known, "label"].value_counts().to_dict()
    test = test[known]
    paths, labels = [Path(p) for p in test["path"]], list(test["label"])
    n_test = len(paths)
    if limit is not None:
        keep = stratified_subset(labels, limit, seed)
        paths, labels = [paths[i] for i in keep], [labels[i] for i in keep]
    images = []
    for path in paths:
        with Image.open(path) as opened:
            images.append(opened.convert("RGB"))
    return SplitCrops(paths, labels, images, {str(k): int(v) for k, v in skipped.items()}, n_test)


def stratified_subset(labels: Sequence[str], limit: int, seed: int) -> list[int]:
    """Indices of `limit` items, each class in proportion to its share (largest remainders, at
    least one per class while the limit allows), seeded; sorted."""
    if limit >= len(labels):
        return list(range(len(labels)))
    rng = np.random.default_rng(seed)
    by_class: dict[str, list[int]] = {}
    for i, label in enumerate(labels):
        by_class.setdefault(label, []).append(i)
    names = sorted(by_class)
    quota = {c: limit * len(by_class[c]) / len(labels) for c in names}
    take = {c: min(len(by_class[c]), max(1, int(quota[c]))) for c in names}
    while sum(take.values()) > limit:  # more classes than the limit: drop the smallest quotas
        smallest = min((c for c in names if take[c] > 0), key=lambda c: (quota[c], c))
        take[smallest] -= 1
    order = sorted(names, key=lambda c: -(quota[c] - int(quota[c])))
    while sum(take.values()) < limit:
        for c in order:
            if sum(take.values()) < limit and take[c] < len(by_class[c]):
                take[c] += 1
    chosen: list[int] = []
    for c in names:
        chosen += rng.choice(by_class[c], size=take[c], replace=False).tolist()
    return sorted(chosen)


def examples_grid(
    crops: Sequence[Image.Image],
    shifts: Sequence[tuple[str, Callable[[Image.Image], Image.Image]]],
    zoom: int = 2,
) -> Image.Image:
    """Rows: conditions (named on the left); columns: the crops, each shifted, `zoom` x."""
    side = CROP_SIDE * zoom
    label_w = 110
    grid = Image.new("RGB", (label_w + side * len(crops), side * len(shifts)), "white")
    draw = ImageDraw.Draw(grid)
    for row, (name, shift) in enumerate(shifts):
        draw.text((4, row * side + side // 2 - 6), name, fill="black")
        for col, crop in enumerate(crops):
            shown = shift(crop).resize((side, side), Image.Resampling.NEAREST)
            grid.paste(shown, (label_w + col * side, row * side))
    return grid


def markdown_table(
    rows: Sequence[str], models: Sequence[str], figures: dict[str, dict[str, dict[str, Any]]]
) -> list[str]:
    """figures: model -> condition -> {accuracy, macro_f1, accuracy_drop}."""
    head = "| condition | " + " | ".join(
        f"{m} accuracy | {m} macro-F1 | {m} accuracy drop" for m in models
    )
    lines = [head + " |", "|---|" + "---:|---:|---:|" * len(models)]
    for condition in rows:
        cells = []
        for m in models:
            f = figures[m][condition]
            cells += [f"{f['accuracy']:.3f}", f"{f['macro_f1']:.3f}", f"{f['accuracy_drop']:+.3f}"]
        lines.append(f"| {condition} | " + " | ".join(cells) + " |")
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--model",
        type=Path,
        action="append",
        help="model folder (repeatable); default models/default",
    )
    parser.add_argument("--data", type=Path, default=ROOT / "data" / "chula", help="imported crops")
    parser.add_argument("--txl", type=Path, default=ROOT.parent / "shared/datasets/txl-pbc")
    parser.add_argument(
        "--out", type=Path, default=ROOT / "docs" / "classification" / "shift-bench.json"
    )
    parser.add_argument("--limit", type=int, help="a seeded, class-stratified subset of the crops")
    parser.add_argument("--seed", type=int, default=0, help="of the --limit subset")
    parser.add_argument(
        "--save-examples", type=Path, help="grid of example crops (default: beside --out, .png)"
    )
    parser.add_argument(
        "--colour-stats", type=Path, help="cache of the sources' statistics (default: beside --out)"
    )
    parser.add_argument("--fields-per-source", type=int, default=FIELDS_PER_SOURCE)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--batch", type=int, default=256, help="crops per predict call")
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    progress = not args.no_progress
    started = time.perf_counter()

    import torch

    from core.classify.predictor import Predictor
    from training.classify.evaluate import classification_metrics

    torch.set_num_threads(args.threads)
    model_dirs: list[Path] = args.model or [ROOT / "models" / "default"]
    predictors = [Predictor.load(d, device="cpu", threads=args.threads) for d in model_dirs]
    names = [d.name for d in model_dirs]
    if len(set(names)) < len(names):
        names = [str(d) for d in model_dirs]
    if len(set(names)) < len(names):  # the same folder twice
        names = [f"{name}#{i + 1}" for i, name in enumerate(names)]
    loaded = time.perf_counter()

    # Crops the first model knows; every other model must know the same classes.
    classes = predictors[0].classes
    for d, p in zip(model_dirs, predictors, strict=True):
        if set(p.classes) != set(classes):
            print(
                f"{d} has classes {p.classes}, unlike {model_dirs[0]}: {classes}", file=sys.stderr
            )
            return 2
        window = getattr(p.card, "crop_window_px", None)
        if window not in (None, CROP_SIDE):
            print(
                f"warning: {d} was trained on {window} px crops, these are {CROP_SIDE}",
                file=sys.stderr,
            )
    try:
        test = load_test_crops(args.data, classes, args.limit, args.seed)
    except Exception as exc:
        print(f"cannot read the test crops of {args.data}: {exc}", file=sys.stderr)
        return 2
    labels, crops, skipped, n_test = test.labels, test.images, test.skipped, test.n_test
    sizes = sorted({c.size for c in crops})
    targets = np.asarray([classes.index(label) for label in labels])

    out: Path = args.out
    out.parent.mkdir(parents=True, exist_ok=True)
    cache = args.colour_stats or out.with_name(out.stem + "-colour.json")
    try:
        sources, stats_params, from_cache = colour_stats(
            args.txl, cache, args.fields_per_source, STATS_SEED, progress
        )
    except Exception as exc:
        print(f"cannot measure the colour statistics of {args.txl}: {exc}", file=sys.stderr)
        return 2
    stats_done = time.perf_counter()
    shifts = conditions({s: ColourStats.from_dict(v["stats"]) for s, v in sources.items()})

    figures: dict[str, dict[str, dict[str, Any]]] = {name: {} for name in names}
    timings: dict[str, dict[str, Any]] = {}
    for condition, shift in tqdm(shifts, desc="conditions", disable=not progress):
        t0 = time.perf_counter()
        shifted = [shift(crop) for crop in crops]
        timing: dict[str, Any] = {"shift_s": round(time.perf_counter() - t0, 3), "predict_s": {}}
        for name, predictor in zip(names, predictors, strict=True):
            t1 = time.perf_counter()
            preds = []
            for start in tqdm(
                range(0, len(shifted), args.batch),
                desc=f"{condition} {name}",
                disable=not progress,
                leave=False,
            ):
                preds += [
                    p.class_index for p in predictor.predict(shifted[start : start + args.batch])
                ]
            timing["predict_s"][name] = round(time.perf_counter() - t1, 3)
            metrics = classification_metrics(targets, np.asarray(preds), classes)
            figures[name][condition] = metrics
        timings[condition] = timing
    for name in names:
        clean = figures[name]["clean"]["accuracy"]
        for metrics in figures[name].values():
            metrics["accuracy_drop"] = round(clean - metrics["accuracy"], 4)
            metrics["macro_f1_drop"] = round(
                figures[name]["clean"]["macro_f1"] - metrics["macro_f1"], 4
            )

    # A few crops of different classes, each under every condition, to eyeball.
    examples = args.save_examples or out.with_name(out.stem + "-examples.png")
    rng = np.random.default_rng(args.seed)
    shown: list[int] = []
    for c in sorted(set(labels)):
        members = [i for i, label in enumerate(labels) if label == c]
        shown.append(int(rng.choice(members)))
    shown = shown[:8]  # one crop of each of the first 8 classes present, in class order
    examples.parent.mkdir(parents=True, exist_ok=True)
    examples_grid([crops[i] for i in shown], shifts).save(examples)

    rows = [condition for condition, _ in shifts]
    table = markdown_table(rows, names, figures)
    finished = time.perf_counter()
    result = {
        "command": " ".join(["bench/bench_shift.py", *(sys.argv[1:] if argv is None else argv)]),
        "data": str(args.data),
        "split": "test",
        "n": len(crops),
        "n_test_known_classes": n_test,
        "limit": args.limit,
        "seed": args.seed,
        "skipped_labels": skipped,
        "crop_sizes": [list(s) for s in sizes],
        "classes": classes,
        "models": {
            name: {"path": str(d), "card": p.card.name, "architecture": p.card.architecture}
            for name, d, p in zip(names, model_dirs, predictors, strict=True)
        },
        "conditions": {
            "clean": "the crop as imported",
            **{
                f"recolour-{s}": f"Reinhard in CIELAB, cell and background separately, to {s}'s "
                "train-field statistics (colour_statistics)"
                for s in sources
            },
            **{
                f"scale-{f}": f"taken at {f}x the pixels per micron "
                f"({'BOX' if f < 1 else 'LANCZOS'} to {round(CROP_SIDE * f)} px), "
                f"back to {CROP_SIDE} px with LANCZOS"
                for f in SCALES
            },
            "blur": f"PIL GaussianBlur(radius={BLUR_SIGMA}) (radius = sigma, px)",
            f"jpeg-{JPEG_QUALITY}": f"JPEG round trip, quality {JPEG_QUALITY}, Pillow defaults",
            **{name: f"RGB x {factor}, clipped" for name, factor in BRIGHTNESS},
        },
        "colour_statistics": {
            "params": stats_params,
            "from_cache": from_cache,
            "cache": str(cache),
            "method": "per field: red-cell pixels inside the central ellipse (CORE) of RBC boxes, "
            "outside WBC boxes, darker in green than the field's Otsu threshold; background "
            "outside every box grown by GROW and not darker than it. Lab mean = mean of field "
            "means; std = pooled within-field std. Crops: Otsu on green; std stretch capped at "
            f"{MAX_STD_RATIO}; soft mask sigma {MASK_SIGMA} px.",
            "sources": sources,
        },
        "results": figures,
        "timings_s": {
            "load_models": round(loaded - started, 3),
            "colour_statistics": round(stats_done - loaded, 3),
            "per_condition": timings,
            "total": round(finished - started, 3),
        },
        "examples_png": str(examples),
        "threads": args.threads,
        "cpus": os.cpu_count(),
        "machine": platform.processor() or platform.machine(),
        "torch": torch.__version__,
    }
    out.write_text(json.dumps(result, indent=2) + "\n")
    md = [
        f"# Shift benchmark: {args.data.name} test crops, n = {len(crops)}",
        "",
        f"`{result['command']}`",
        "",
        *table,
        "",
        "Accuracy drop: the model's clean accuracy minus its accuracy under the condition. "
        "Conditions and colour statistics: the JSON beside this file "
        f"(`{out.name}`); examples: `{examples.name}`.",
        f"Total {finished - started:.0f} s on {args.threads} thread(s).",
    ]
    out.with_suffix(".md").write_text("\n".join(md) + "\n")

    print(f"n = {len(crops)} test crops ({n_test} of known classes), {len(shifts)} conditions")
    width = max(len(r) for r in rows)
    print(f"{'':<{width}}  " + "  ".join(f"{m[-20:]:^20}" for m in names))
    print(
        f"{'condition':<{width}}  " + "  ".join(f"{'acc':>6} {'F1':>6} {'drop':>6}" for _ in names)
    )
    for condition in rows:
        cells = []
        for name in names:
            f = figures[name][condition]
            cells.append(f"{f['accuracy']:>6.3f} {f['macro_f1']:>6.3f} {f['accuracy_drop']:>+6.3f}")
        print(f"{condition:<{width}}  " + "  ".join(cells))
    print(f"wrote {out}, {out.with_suffix('.md')}, {examples}; {finished - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
