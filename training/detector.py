"""Train the cell detector (core/detect/learned.py) on labelled fields from several laboratories.

`python -m training train-detector --config configs/detector.yaml` reads the fields (YOLO sets
with boxes around every red cell, white cell and platelet; Chula's red-cell points on its fully
labelled smears), brings each to the detector's working scale (a red cell ~20 px across), and
trains on random crops with strong augmentation: scale 0.7-1.4x, flips and quarter turns, stain
jitter in haematoxylin-eosin-DAB space, hue, saturation, brightness, contrast and gamma, blur and
JPEG. Losses: CenterNet's focal loss on the centre heatmaps (on Chula fields only the red-cell
map: its white cells and platelets are not labelled) and an L1 loss on log box sizes at the
centres of boxed objects. The per-kind thresholds are chosen on the validation fields. The run
folder gets the detector (detector_state.pt + detector_card.json, sha256 inside), its history
and validation figures; `export-detector` publishes it under models/.
"""

from __future__ import annotations

import json
import random
import time
import zlib
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
import yaml
from PIL import Image

from core.detect.learned import (
    DETECTOR_STATE,
    KINDS,
    STRIDE,
    CellDetector,
    CentreNet,
    DetectorCard,
    resample,
    to_input,
)
from core.modelcard import sha256_file
from training.augment import colour_jitter, degrade, stain_jitter
from training.datasets.fields import Field
from training.errors import ConfigError, DataError

CHULA_MICRONS_PER_PIXEL = 0.19
# A point label (Chula) is a red cell of this size (um) for its heatmap spot.
POINT_CELL_UM = 7.5


@dataclass
class DetectorConfig:
    name: str = "detector"
    out_dir: str = "runs"
    yolo: list[str] = field(default_factory=list)  # YOLO-layout sets (boxes)
    chula: str = ""  # Chula layout (red-cell points); its fully labelled smears are used
    # Chula smears held out (the classifier's test smears): read from this model card.
    chula_test_from: str = "models/default"
    leave_out: list[str] = field(default_factory=list)  # sources left out of training
    backbone: str = "efficientnet_lite0"
    weights: str = "imagenet"  # "imagenet", "random" or a state-dict file of the backbone
    width: int = 64
    microns_per_pixel: float = 0.38  # the working scale
    crop: int = 160
    batch_size: int = 16
    epochs: int = 40
    lr: float = 2e-3
    weight_decay: float = 1e-4
    size_weight: float = 0.1
    # Heatmap loss weight per kind (red cell, white cell, platelet).
    kind_weights: tuple[float, float, float] = (1.0, 1.0, 1.0)
    # Box sizes for Chula's point labels: "none" (points teach the heatmap only) or "segmented"
    # (each point's cell outlined by the classical segmentation, where one region holds exactly
    # that point): without them only txl-pbc's boxes teach the size head, which the scale
    # estimate leans on (docs/detection.md, "its scale estimate fails on Chula").
    chula_sizes: str = "none"
    scale_range: tuple[float, float] = (0.7, 1.4)
    colour: bool = True  # stain, hue, saturation, brightness, contrast, gamma jitter
    degrade: bool = True  # blur and JPEG
    # The strongest blur (sigma, px at the working scale): 1.5 px is 0.57 um; a field blurred by
    # 1 um (2.6 px) loses 8-18 % of its red cells (research/detector_shift.py, blur-1um).
    blur_max: float = 1.5
    # The share of crops cut from a field enlarged `enlarged_range` times beyond the working
    # scale, with no object in them: at that size a cell is not a cell to the network. A network
    # trained on strong blur finds "cells" in a sharp field so enlarged, which misleads the
    # scale search (docs/detection.md, "The scale search's start"). 0: none (the shipped recipe).
    enlarged_p: float = 0.0
    enlarged_range: tuple[float, float] = (3.0, 8.0)
    seed: int = 0
    threads: int = 0
    workers: int = 0  # DataLoader worker processes (augmentation runs on the CPU)
    device: str = "cpu"
    max_fields: int | None = None  # cap the training fields (quick runs, tests)
    prepared: str = ""  # a folder written by prepare-detector-data, read instead of the sets
    validate_every: int = 5


def load_detector_config(path: Path | None, overrides: dict[str, Any]) -> DetectorConfig:
    values: dict[str, Any] = {}
    if path is not None:
        try:
            values = yaml.safe_load(Path(path).read_text()) or {}
        except (OSError, yaml.YAMLError) as exc:
            raise ConfigError(f"cannot read the config {path}: {exc}") from exc
    values.update({k: v for k, v in overrides.items() if v is not None})
    known = set(DetectorConfig.__dataclass_fields__)
    unknown = set(values) - known
    if unknown:
        raise ConfigError(f"unknown detector settings: {sorted(unknown)}")
    for key in ("scale_range", "kind_weights", "enlarged_range"):
        if key in values:
            values[key] = tuple(values[key])
    cfg = DetectorConfig(**values)
    if not 0 <= cfg.enlarged_p < 1:
        raise ConfigError(f"enlarged_p is a share of the crops, 0 to 1, not {cfg.enlarged_p}")
    if len(cfg.enlarged_range) != 2 or not 1 < cfg.enlarged_range[0] <= cfg.enlarged_range[1]:
        raise ConfigError(f"enlarged_range must be two factors above 1, not {cfg.enlarged_range}")
    if not cfg.yolo and not cfg.chula:
        raise ConfigError("no data: give yolo sets and/or a chula folder")
    if cfg.chula_sizes not in ("none", "segmented"):
        raise ConfigError(f"chula_sizes must be none or segmented, not {cfg.chula_sizes!r}")
    return cfg


# --- data --------------------------------------------------------------------------------------


@dataclass
class Sample:
    """One field at the working scale: the image, and its objects (kind index, x, y, w, h;
    w = h = 0 for a point), the kinds that are labelled on it."""

    rgb: np.ndarray
    objects: np.ndarray  # (n, 5) float32
    supervised: tuple[bool, bool, bool]
    source: str
    field: Field | None = None
    scale: float = 1.0  # working pixels per original pixel


def object_rows(item: Field, factor: float) -> np.ndarray:
    """The field's objects at the working scale: (n, 5) rows of kind index, centre x, centre y,
    width, height (0, 0 for a point label)."""
    rows = []
    for o in item.objects:
        kind = KINDS.index(o.kind)
        if o.box is None:
            rows.append((kind, o.x * factor, o.y * factor, 0.0, 0.0))
        else:
            x0, y0, x1, y1 = (v * factor for v in o.box)
            rows.append((kind, (x0 + x1) / 2, (y0 + y1) / 2, x1 - x0, y1 - y0))
    return np.asarray(rows, dtype=np.float32).reshape(-1, 5)


def segmented_sizes(rgb: np.ndarray, objects: np.ndarray) -> np.ndarray:
    """`objects` (rows as object_rows, in `rgb`'s pixels) with a width and height for each point
    label whose cell the classical segmentation outlines alone: the one region holding the point
    holds no other point (touching cells merged into one region stay points)."""
    from core.detect.classical import NoCellsError, segment

    out = objects.copy()
    try:
        segmentation = segment(rgb)
    except NoCellsError:
        return out
    regions = segmentation.labels  # per pixel: 1 + the index of its detection, 0 for none
    height, width = regions.shape
    region_of = {}
    for i, row in enumerate(objects):
        x, y = int(row[1]), int(row[2])
        if row[3] == 0 and 0 <= x < width and 0 <= y < height and regions[y, x] > 0:
            region_of[i] = int(regions[y, x])
    counts = Counter(region_of.values())
    for i, region in region_of.items():
        cell = segmentation.detections[region - 1]
        if counts[region] == 1 and not cell.at_border:  # cut by the edge: not the cell's size
            x0, y0, x1, y1 = cell.box
            out[i, 3], out[i, 4] = x1 - x0, y1 - y0
    return out


def to_sample(
    item: Field, microns_per_pixel: float, work: float, chula_sizes: str = "none"
) -> Sample:
    factor = microns_per_pixel / work
    with Image.open(item.image) as opened:
        original = np.asarray(opened.convert("RGB"))
    rgb = resample(original, factor)
    is_points = item.source == "chula"
    objects = object_rows(item, 1.0)
    if is_points and chula_sizes == "segmented":
        objects = segmented_sizes(original, objects)
    objects[:, 1:] *= factor
    return Sample(
        rgb=rgb,
        objects=objects,
        supervised=(True, not is_points, not is_points),
        source=item.source,
        field=item,
        scale=factor,
    )


def read_samples(
    cfg: DetectorConfig, progress: bool = True
) -> tuple[dict[str, list[Sample]], dict[str, float]]:
    """Every fully labelled field at the working scale, by split, and each source's scale: from
    `cfg.prepared` when it holds a prepared set (`prepare_samples`), else from the raw sets."""
    prepared = Path(cfg.prepared) if cfg.prepared else None
    if prepared and any((prepared / n).is_file() for n in (PREPARED_INDEX, PREPARED_INDEX + ".gz")):
        return load_prepared(prepared)
    from training.detection_eval import load_fields

    test_stems: set[str] = set()
    if cfg.chula:
        card_path = Path(cfg.chula_test_from) / "model_card.json"
        if card_path.is_file():
            card = json.loads(card_path.read_text())
            test_stems = {Path(s).stem for s in card.get("dataset", {}).get("test_smears", [])}
    fields, scales = load_fields(cfg.yolo, (), cfg.chula or None, None, progress=progress)
    for item in fields:
        if item.source == "chula":
            stem = item.image.stem
            # Chula: the classifier's test smears stay test; the rest, 15 % valid by a hash.
            if stem in test_stems:
                item.split = "test"
            else:
                item.split = "val" if zlib.crc32(stem.encode()) % 100 < 15 else "train"
    usable = [f for f in fields if f.complete]
    if not usable:
        raise DataError("no fully labelled field to train on")
    out: dict[str, list[Sample]] = {"train": [], "val": [], "test": []}
    started = time.perf_counter()
    for k, item in enumerate(usable):
        split = item.split if item.split in out else "train"
        out[split].append(
            to_sample(item, scales[item.source], cfg.microns_per_pixel, cfg.chula_sizes)
        )
        if progress and (k + 1) % 200 == 0:
            print(f"  {k + 1}/{len(usable)} fields read, {time.perf_counter() - started:.0f} s")
    return out, scales


def load_samples(
    cfg: DetectorConfig, progress: bool = True
) -> tuple[list[Sample], list[Sample], list[Sample], dict[str, float]]:
    """(train, valid, test) samples, the left-out sources dropped from train and valid (the
    thresholds and the size calibration are chosen on valid, so a left-out source must not be
    in it either), and the scales."""
    out, scales = read_samples(cfg, progress)
    train = [s for s in out["train"] if s.source not in cfg.leave_out]
    valid = [s for s in out["val"] if s.source not in cfg.leave_out]
    if cfg.max_fields:
        random.Random(cfg.seed).shuffle(train)
        train = train[: cfg.max_fields]
        valid = valid[: max(2, cfg.max_fields // 4)]
    if not train:
        raise DataError("no training field left (all left out?)")
    return train, valid, out["test"], scales


PREPARED_INDEX = "fields.json"


def prepare_samples(cfg: DetectorConfig, out_dir: Path, quality: int = 92) -> Path:
    """Write every field at the working scale (JPEG) with its labels: a small, portable copy of
    the training data (for a lent GPU, where the raw sets do not travel)."""
    from dataclasses import asdict as as_dict

    samples, scales = read_samples(replace_prepared(cfg), progress=True)
    out_dir.mkdir(parents=True, exist_ok=True)
    index: dict[str, Any] = {"microns_per_pixel": cfg.microns_per_pixel, "scales": scales}
    rows = []
    for split, items in samples.items():
        for k, sample in enumerate(items):
            assert sample.field is not None
            name = f"{split}-{k:05d}.jpg"
            Image.fromarray(sample.rgb).save(out_dir / name, quality=quality)
            item = sample.field
            rows.append(
                {
                    "file": name,
                    "split": split,
                    "source": sample.source,
                    "image": item.image.name,
                    "width": item.width,
                    "height": item.height,
                    "complete": item.complete,
                    "scale": sample.scale,
                    "supervised": list(sample.supervised),
                    "objects": [as_dict(o) for o in item.objects],
                }
            )
    index["fields"] = rows
    (out_dir / PREPARED_INDEX).write_text(json.dumps(index))
    return out_dir


def replace_prepared(cfg: DetectorConfig) -> DetectorConfig:
    from dataclasses import replace

    return replace(cfg, prepared="")


def load_prepared(folder: Path) -> tuple[dict[str, list[Sample]], dict[str, float]]:
    from training.datasets.fields import Field, FieldObject

    packed = folder / (PREPARED_INDEX + ".gz")
    if packed.is_file():
        import gzip

        index = json.loads(gzip.decompress(packed.read_bytes()))
    else:
        index = json.loads((folder / PREPARED_INDEX).read_text())
    out: dict[str, list[Sample]] = {"train": [], "val": [], "test": []}
    for row in index["fields"]:
        objects = [
            FieldObject(
                o["kind"], o["x"], o["y"], tuple(o["box"]) if o["box"] else None, o["label"]
            )
            for o in row["objects"]
        ]
        item = Field(
            Path(row["image"]), row["source"], row["split"], row["width"], row["height"],
            objects, row["complete"],
        )  # fmt: skip
        with Image.open(folder / row["file"]) as opened:
            rgb = np.asarray(opened.convert("RGB"))
        f = row["scale"]
        supervised = tuple(bool(v) for v in row["supervised"])
        out[row["split"]].append(
            Sample(
                rgb=rgb,
                objects=object_rows(item, f),
                supervised=(supervised[0], supervised[1], supervised[2]),
                source=row["source"],
                field=item,
                scale=f,
            )
        )
    return out, {k: float(v) for k, v in index["scales"].items()}


# --- augmentation ------------------------------------------------------------------------------


def augment(
    sample: Sample, cfg: DetectorConfig, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """A crop x crop training image and its objects (same columns as Sample.objects)."""
    if cfg.enlarged_p > 0 and rng.random() < cfg.enlarged_p:
        return enlarged_negative(sample, cfg, rng)
    scale = rng.uniform(*cfg.scale_range)
    rgb = resample(sample.rgb, scale)
    objects = sample.objects.copy()
    objects[:, 1:] *= scale
    height, width = rgb.shape[:2]
    side = cfg.crop
    fill = np.median(rgb.reshape(-1, 3), axis=0).astype(np.uint8)
    canvas = np.empty((max(side, height), max(side, width), 3), dtype=np.uint8)
    canvas[:] = fill
    top0, left0 = (
        int(rng.integers(0, canvas.shape[0] - height + 1)),
        int(rng.integers(0, canvas.shape[1] - width + 1)),
    )
    canvas[top0 : top0 + height, left0 : left0 + width] = rgb
    objects[:, 1] += left0
    objects[:, 2] += top0
    top = int(rng.integers(0, canvas.shape[0] - side + 1))
    left = int(rng.integers(0, canvas.shape[1] - side + 1))
    crop = canvas[top : top + side, left : left + side]
    objects[:, 1] -= left
    objects[:, 2] -= top
    inside = (objects[:, 1] >= 0) & (objects[:, 1] < side) & (objects[:, 2] >= 0)
    objects = objects[inside & (objects[:, 2] < side)]
    # Flips and quarter turns (the boxes' width and height swap on a turn).
    if rng.random() < 0.5:
        crop = crop[:, ::-1]
        objects[:, 1] = side - 1 - objects[:, 1]
    if rng.random() < 0.5:
        crop = crop[::-1]
        objects[:, 2] = side - 1 - objects[:, 2]
    if rng.random() < 0.5:
        crop = np.transpose(crop, (1, 0, 2))
        objects[:, [1, 2, 3, 4]] = objects[:, [2, 1, 4, 3]]
    return _stain_and_optics(crop, cfg, rng), objects


def _stain_and_optics(
    crop: np.ndarray, cfg: DetectorConfig, rng: np.random.Generator
) -> np.ndarray:
    """Stain and colour jitter (p 0.8 each), then blur and JPEG (training.augment.degrade)."""
    crop = np.ascontiguousarray(crop)
    if cfg.colour:
        if rng.random() < 0.8:
            crop = stain_jitter(crop, rng)
        if rng.random() < 0.8:
            crop = colour_jitter(crop, rng)
    if cfg.degrade:
        crop = degrade(crop, rng, cfg.blur_max)
    return crop


def enlarged_negative(
    sample: Sample, cfg: DetectorConfig, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """A crop of the field enlarged cfg.enlarged_range times (log-uniform) beyond the working
    scale, flipped, jittered and degraded like any crop, with no objects."""
    low, high = np.log(cfg.enlarged_range[0]), np.log(cfg.enlarged_range[1])
    factor = float(np.exp(rng.uniform(low, high)))
    side = cfg.crop
    source = max(2, round(side / factor))  # the field's pixels that fill the crop
    height, width = sample.rgb.shape[:2]
    top = int(rng.integers(0, max(1, height - source + 1)))
    left = int(rng.integers(0, max(1, width - source + 1)))
    piece = sample.rgb[top : top + source, left : left + source]
    crop = np.asarray(Image.fromarray(piece).resize((side, side), Image.Resampling.BILINEAR))
    if rng.random() < 0.5:
        crop = crop[:, ::-1]
    if rng.random() < 0.5:
        crop = crop[::-1]
    return _stain_and_optics(crop, cfg, rng), sample.objects[:0].copy()


def targets(
    objects: np.ndarray, side: int, point_side: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Heatmaps (K, s, s), log sizes (2, s, s) and their mask (1, s, s), s = side / STRIDE."""
    s = side // STRIDE
    heat = np.zeros((len(KINDS), s, s), dtype=np.float32)
    size = np.zeros((2, s, s), dtype=np.float32)
    mask = np.zeros((1, s, s), dtype=np.float32)
    yy, xx = np.mgrid[0:s, 0:s]
    for kind, x, y, w, h in objects:
        cx, cy = x / STRIDE - 0.5, y / STRIDE - 0.5
        extent = (w + h) / 2 if w > 0 else point_side
        sigma = max(0.8, extent / STRIDE / 6.0)
        spot = np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / (2 * sigma**2))
        heat[int(kind)] = np.maximum(heat[int(kind)], spot)
        ix, iy = round(cx), round(cy)
        if 0 <= ix < s and 0 <= iy < s:
            heat[int(kind), iy, ix] = 1.0
            if w > 0:
                size[:, iy, ix] = np.log(np.maximum([w, h], 1.0) / STRIDE)
                mask[0, iy, ix] = 1.0
    return heat, size, mask


def focal_loss(
    logits: torch.Tensor,
    target: torch.Tensor,
    mask: torch.Tensor,
    kind_weights: torch.Tensor | None = None,
) -> torch.Tensor:
    """CenterNet's penalty-reduced focal loss, over the objects' count; `mask` (N, K, 1, 1)
    leaves out unlabelled kinds, `kind_weights` (1, K, 1, 1) weighs the kinds' terms."""
    prob = torch.sigmoid(logits).clamp(1e-4, 1 - 1e-4)
    positive = target.eq(1).float()
    pos = -torch.log(prob) * (1 - prob) ** 2 * positive
    neg = -torch.log(1 - prob) * prob**2 * (1 - target) ** 4 * (1 - positive)
    n = (positive * mask).sum().clamp(min=1.0)
    weight = mask if kind_weights is None else mask * kind_weights
    return ((pos + neg) * weight).sum() / n


# --- training ----------------------------------------------------------------------------------


BODY_PREFIXES = ("stem.", "blocks.")


def build_network(cfg: DetectorConfig) -> CentreNet:
    """The network with the backbone's ImageNet weights ("imagenet", or a file of the full
    ImageNet state dict, or of the body alone in CentreNet's names: `stem.*`, `blocks.*`, the
    small file that travels to a lent GPU), or "random"."""
    network = CentreNet(cfg.backbone, cfg.width)
    if cfg.weights not in ("random", "imagenet") and Path(cfg.weights).is_file():
        state = torch.load(cfg.weights, map_location="cpu", weights_only=True)
        if state and all(k.startswith(BODY_PREFIXES) for k in state):
            missing = [
                k for k in network.state_dict() if k.startswith(BODY_PREFIXES) and k not in state
            ]
            if missing:
                raise ConfigError(
                    f"{cfg.weights} lacks {len(missing)} body weights, e.g. {missing[0]}"
                )
            network.load_state_dict(state, strict=False)
            return network
    if cfg.weights != "random":
        from training.archs import _lite_net

        pretrained: Any = _lite_net(cfg.backbone, cfg.weights)
        network.stem.load_state_dict(
            torch.nn.Sequential(
                pretrained._conv_stem, pretrained._bn0, pretrained._swish
            ).state_dict()
        )
        network.blocks.load_state_dict(pretrained._blocks.state_dict())
    return network


class FieldCrops(torch.utils.data.Dataset[tuple[torch.Tensor, ...]]):
    """Augmented training crops and their targets; each DataLoader worker draws its own random
    numbers (seeded from the run's seed, the epoch and the worker)."""

    def __init__(self, samples: list[Sample], cfg: DetectorConfig) -> None:
        self.samples = samples
        self.cfg = cfg
        self.point_side = POINT_CELL_UM / cfg.microns_per_pixel
        self.rng = np.random.default_rng(cfg.seed)

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, ...]:
        sample = self.samples[index]
        crop, objects = augment(sample, self.cfg, self.rng)
        heat, size, mask = targets(objects, self.cfg.crop, self.point_side)
        x, _ = to_input(crop)
        return (
            x[0],
            torch.from_numpy(heat),
            torch.from_numpy(size),
            torch.from_numpy(mask),
            torch.tensor(sample.supervised, dtype=torch.float32)[:, None, None],
        )


def _seed_worker(worker_id: int) -> None:
    info = torch.utils.data.get_worker_info()
    assert info is not None
    dataset = info.dataset
    assert isinstance(dataset, FieldCrops)
    dataset.rng = np.random.default_rng([dataset.cfg.seed, int(torch.initial_seed()) % 2**31])


def choose_thresholds(
    detector: CellDetector, samples: list[Sample], scales: dict[str, float]
) -> tuple[dict[str, float], dict[str, Any]]:
    """Per kind, the heatmap threshold with the best F1 on the validation fields (red cells:
    interior recall against one-to-one precision), and the figures at those thresholds."""
    from training.detection_eval import field_figures, match, summarise

    detector.card.thresholds = dict.fromkeys(KINDS, 0.1)  # every peak the search may want
    runs = [(sample, detector.run(sample.rgb)) for sample in samples]
    best: dict[str, float] = {}
    for kind in KINDS:
        scores = []
        for cut in np.arange(0.1, 0.75, 0.05):
            tp = fp = fn = 0.0
            for sample, peaks in runs:
                assert sample.field is not None
                found = _found(sample, peaks, dict.fromkeys(KINDS, float(cut)))
                if not sample.supervised[KINDS.index(kind)]:
                    continue
                if kind == "red_cell":
                    figures = field_figures(sample.field, found, scales[sample.source])
                    tp += figures["red_counted_matched"]
                    fp += figures["red_counted"] - figures["red_counted_matched"]
                    fn += figures["red_labels_interior"] - figures["red_recalled_interior"]
                else:
                    mine = [d for d in found if d.kind == kind]
                    labels = sample.field.of_kind(kind)
                    pairs = len(match(mine, labels, point_radius_px=0.0))
                    tp, fp, fn = tp + pairs, fp + len(mine) - pairs, fn + len(labels) - pairs
            scores.append((2 * tp / (2 * tp + fp + fn) if tp else 0.0, float(cut)))
        best[kind] = max(scores)[1]
    rows = []
    for sample, peaks in runs:
        assert sample.field is not None
        rows.append(field_figures(sample.field, _found(sample, peaks, best), scales[sample.source]))
    detector.card.thresholds = best
    return best, summarise(rows)


def figures_by_source(
    detector: CellDetector, samples: list[Sample], scales: dict[str, float]
) -> dict[str, dict[str, Any]]:
    """Detection figures per source on `samples` (at the working scale, that is with each
    source's scale given), with the detector's thresholds."""
    from training.detection_eval import field_figures, summarise

    rows: dict[str, list[dict[str, Any]]] = {}
    for sample in samples:
        assert sample.field is not None
        found = _found(sample, detector.run(sample.rgb), detector.card.thresholds)
        figures = field_figures(sample.field, found, scales[sample.source])
        rows.setdefault(sample.source, []).append(figures)
    return {source: summarise(r) for source, r in sorted(rows.items())}


def _found(sample: Sample, peaks: list[Any], thresholds: dict[str, float]) -> list[Any]:
    """Peaks of a sample (working pixels) above `thresholds`, as Found in the field's pixels."""
    from training.detection_eval import Found

    assert sample.field is not None
    f = sample.scale
    out = []
    width, height = sample.field.width, sample.field.height
    for k, x, y, w, h, score in peaks:
        if score < thresholds[KINDS[k]]:
            continue
        cx, cy, bw, bh = x / f, y / f, w / f, h / f
        if not (0 <= cx < width and 0 <= cy < height):
            continue
        x0, y0 = max(0.0, cx - bw / 2), max(0.0, cy - bh / 2)
        x1, y1 = min(float(width), cx + bw / 2), min(float(height), cy + bh / 2)
        # The 2-px border the shipped detector's thresholds were chosen with; the service sets
        # aside more (CellDetector.BORDER_MARGIN_UM), after the thresholds.
        border = x0 <= 2 or y0 <= 2 or x1 >= width - 2 or y1 >= height - 2
        out.append(Found(KINDS[k], cx, cy, (x0, y0, x1, y1), border))
    return out


def train_detector(cfg: DetectorConfig, progress: bool = True) -> Path:
    """Train, choose thresholds on validation, write the run folder; returns it."""
    torch.manual_seed(cfg.seed)
    random.seed(cfg.seed)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    run_dir = Path(cfg.out_dir) / cfg.name
    run_dir.mkdir(parents=True, exist_ok=True)
    train, valid, test, scales = load_samples(cfg, progress)
    print(f"fields: train {len(train)}, valid {len(valid)}, test {len(test)}", flush=True)
    device = torch.device(cfg.device)
    network = build_network(cfg).to(device)
    optimiser = torch.optim.AdamW(network.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    steps = cfg.epochs * (len(train) // cfg.batch_size)
    if steps < 1:
        raise DataError(f"{len(train)} training fields: fewer than one batch of {cfg.batch_size}")
    schedule = torch.optim.lr_scheduler.OneCycleLR(
        optimiser, max_lr=cfg.lr, total_steps=steps, pct_start=0.2
    )
    loader = torch.utils.data.DataLoader(
        FieldCrops(train, cfg),
        batch_size=cfg.batch_size,
        shuffle=True,
        drop_last=True,
        num_workers=cfg.workers,
        worker_init_fn=_seed_worker if cfg.workers else None,
        generator=torch.Generator().manual_seed(cfg.seed),
        persistent_workers=cfg.workers > 0,
    )
    kind_weights = torch.tensor(cfg.kind_weights, device=device).view(1, -1, 1, 1)
    history = []
    started = time.perf_counter()
    for epoch in range(cfg.epochs):
        network.train()
        losses = []
        for images, heat, size, mask, weight in loader:
            logits, sizes = network(images.to(device))
            heat_loss = focal_loss(logits, heat.to(device), weight.to(device), kind_weights)
            m = mask.to(device)
            size_loss = (F.l1_loss(sizes, size.to(device), reduction="none") * m).sum() / (
                2 * m.sum().clamp(min=1.0)
            )
            loss = heat_loss + cfg.size_weight * size_loss
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
            schedule.step()
            losses.append(loss.item())
        row = {
            "epoch": epoch + 1,
            "loss": float(np.mean(losses)),
            "seconds": time.perf_counter() - started,
        }
        history.append(row)
        if progress:
            print(
                f"epoch {epoch + 1}/{cfg.epochs}: loss {row['loss']:.4f}, {row['seconds']:.0f} s",
                flush=True,
            )
    (run_dir / "history.json").write_text(json.dumps(history, indent=1))
    (run_dir / "config.yaml").write_text(yaml.safe_dump(asdict(cfg)))
    model_dir = run_dir / "detector"
    model_dir.mkdir(exist_ok=True)
    torch.save(network.cpu().state_dict(), model_dir / DETECTOR_STATE)
    finish_detector(run_dir, cfg, (train, valid, test, scales))
    return run_dir


def finish_detector(
    run_dir: Path,
    cfg: DetectorConfig,
    data: tuple[list[Sample], list[Sample], list[Sample], dict[str, float]] | None = None,
) -> DetectorCard:
    """From a run's trained weights: choose the thresholds on validation, calibrate the box
    sizes, measure the test fields per source, write the card. `train-detector --finish RUN`
    runs it again on a finished run (after a change to how thresholds are chosen, say)."""
    train, valid, test, scales = data or load_samples(cfg, progress=False)
    model_dir = run_dir / "detector"
    state_path = model_dir / DETECTOR_STATE
    network = CentreNet(cfg.backbone, cfg.width)
    network.load_state_dict(torch.load(state_path, map_location="cpu", weights_only=True))
    card = DetectorCard(
        name=cfg.name,
        backbone=cfg.backbone,
        width=cfg.width,
        microns_per_pixel=cfg.microns_per_pixel,
        thresholds=dict.fromkeys(KINDS, 0.3),
    )
    detector = CellDetector(network, card)
    thresholds = card.thresholds
    valid_figures: dict[str, Any] = {}
    if valid:
        thresholds, valid_figures = choose_thresholds(detector, valid, scales)
        card.size_calibration = size_calibration(detector, valid)
    test_figures = figures_by_source(detector, test, scales)
    card.thresholds = thresholds
    card.state_sha256 = sha256_file(state_path)
    card.metrics = {"valid": valid_figures, "test_with_scale": test_figures}
    card.dataset = {
        "sources": sorted({s.source for s in train}),
        "left_out": cfg.leave_out,
        "train_fields": len(train),
        "valid_fields": len(valid),
        "test_fields": len(test),
        "source_microns_per_pixel": scales,
        "scale_note": "txl-pbc scales derived from each source's median red-cell box side "
        "(7.5 um); Chula's 0.19 from its scale bar",
    }
    card.training_config = asdict(cfg)
    card.library_versions = {"torch": torch.__version__}
    card.created = time.strftime("%Y-%m-%d %H:%M:%S")
    card.save(model_dir)
    print(f"thresholds {thresholds}; size calibration {card.size_calibration:.3f}")
    print(f"valid {json.dumps(valid_figures)}", flush=True)
    for source, figures in test_figures.items():
        print(f"test {source}: {json.dumps(figures)}", flush=True)
    return card


def size_calibration(detector: CellDetector, samples: list[Sample]) -> float:
    """Median of (predicted red-cell box side / labelled box side) at the working scale, over
    matched red cells of boxed validation fields: the scale estimate divides it out."""
    from training.detection_eval import match

    ratios = []
    for sample in samples:
        assert sample.field is not None
        boxed = [o for o in sample.field.of_kind("red_cell") if o.box is not None]
        if not boxed or sample.field.complete is False:
            continue
        found = _found(sample, detector.run(sample.rgb), detector.card.thresholds)
        red = [d for d in found if d.kind == "red_cell" and not d.at_border]
        for i, j in match(red, boxed, point_radius_px=0.0):
            box = boxed[j].box
            assert box is not None
            if sample.field.at_border(boxed[j]):
                continue
            predicted = ((red[i].box[2] - red[i].box[0]) + (red[i].box[3] - red[i].box[1])) / 2
            labelled = ((box[2] - box[0]) + (box[3] - box[1])) / 2
            ratios.append(predicted / labelled)
    return float(np.median(ratios)) if ratios else 1.0


def export_detector(
    run_dir: Path, models_dir: Path, name: str, notes: list[str], overwrite: bool = False
) -> Path:
    """Publish a run's detector under models_dir/name (state dict + card, hash checked first)."""
    import shutil

    from core.detect.learned import verified_detector_path
    from core.modelcard import ModelFileError

    source = Path(run_dir) / "detector"
    try:
        state, card = verified_detector_path(source)
    except ModelFileError as exc:
        raise DataError(f"{run_dir} holds no verified detector: {exc}") from exc
    dest = Path(models_dir) / name
    if dest.exists():
        if not overwrite:
            raise DataError(f"{dest} exists: pass --overwrite to replace it")
        shutil.rmtree(dest)
    dest.mkdir(parents=True)
    shutil.copy2(state, dest / DETECTOR_STATE)
    for extra in ("history.json",):
        if (Path(run_dir) / extra).is_file():
            shutil.copy2(Path(run_dir) / extra, dest / extra)
    card.name = name
    card.state_file = DETECTOR_STATE
    card.notes = [*card.notes, *notes]
    card.save(dest)
    verified_detector_path(dest)
    return dest
