"""The labelled fields (`load_fields`: YOLO, COCO or Chula's points, with each source's scale) and
the same fields as training samples: brought to the detector's working scale, and optionally
prepared once on disk (`--prepare-only`)."""

from __future__ import annotations

import json
import random
import time
import zlib
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from core.detect.learned import (
    KINDS,
    resample,
)
from training.datasets.fields import (
    Field,
    FieldReport,
    derived_microns_per_pixel,
    read_chula_points,
    read_coco,
    read_yolo,
)
from training.detect.config import CHULA_MICRONS_PER_PIXEL, DetectorConfig
from training.errors import DataError


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


def load_fields(
    yolo: Sequence[Any] = (),
    coco: Sequence[tuple[Any, Any]] = (),
    chula: Any | None = None,
    chula_stems: Sequence[str] | None = None,
    progress: bool = True,
) -> tuple[list[Field], dict[str, float]]:
    """Every field of the given sets, and each source's scale: Chula's known 0.19 um/px, the
    others derived from their own red cells (training.datasets.fields.derived_microns_per_pixel,
    over all of the source's fields)."""
    reports: list[FieldReport] = [read_yolo(Path(root), progress=progress) for root in yolo]
    reports += [read_coco(Path(j), Path(i) if i else None, progress=progress) for j, i in coco]
    if chula is not None:
        reports.append(read_chula_points(Path(chula), chula_stems, progress=progress))
    for report in reports:
        print(report.summary(), flush=True)
    fields = [f for r in reports for f in r.fields]
    scales: dict[str, float] = {}
    for source in sorted({f.source for f in fields}):
        if source == "chula":
            scales[source] = CHULA_MICRONS_PER_PIXEL
            continue
        derived = derived_microns_per_pixel([f for f in fields if f.source == source])
        if derived is not None:
            scales[source] = derived
    return fields, scales


def read_samples(
    cfg: DetectorConfig, progress: bool = True
) -> tuple[dict[str, list[Sample]], dict[str, float]]:
    """Every fully labelled field at the working scale, by split, and each source's scale: from
    `cfg.prepared` when it holds a prepared set (`prepare_samples`), else from the raw sets."""
    prepared = Path(cfg.prepared) if cfg.prepared else None
    if prepared and any((prepared / n).is_file() for n in (PREPARED_INDEX, PREPARED_INDEX + ".gz")):
        return load_prepared(prepared)
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
