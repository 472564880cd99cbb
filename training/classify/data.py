"""Data sets in, fastai DataLoaders out.

Any folder-per-class set works, in one of three layouts:
- `manifest.csv` at the root (written by `import-chula`): columns path, label and optionally split;
- `train/<Class>/`, `valid/<Class>/` and optionally `test/<Class>/` folders;
- plain `<Class>/` folders, as in the thesis, split at random (`valid_pct`, seeded).
Every image is decoded once before training, so an unreadable file is reported by name up front
instead of crashing an epoch.
"""

from __future__ import annotations

import hashlib
import logging
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from PIL import Image
from tqdm import tqdm

from training.classify.config import TrainConfig
from training.errors import DataError

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp"}
SPLITS = ("train", "valid", "test")
MANIFEST = "manifest.csv"
# A crop set has small images: anything past this is no cell crop, maybe a decompression bomb.
MAX_PIXELS = 4096 * 4096


@dataclass
class DatasetIndex:
    """The usable images of a data set: absolute path, label and split ("" when not split)."""

    root: Path
    layout: str  # "manifest", "folders" or "classes"
    items: pd.DataFrame
    skipped: list[str] = field(default_factory=list)

    @property
    def classes(self) -> list[str]:
        return sorted(self.items["label"].unique())


def _check_image(path: Path) -> str | None:
    """None if the file decodes as an image, else the reason it does not."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as img:
                if img.width * img.height > MAX_PIXELS:
                    return f"{img.width}x{img.height} pixels is too large for a cell crop"
                img.load()
    except Exception as exc:
        return f"unreadable image ({type(exc).__name__}: {exc})"
    return None


def _scan_class_folders(base: Path, skipped: list[str]) -> list[tuple[Path, str]]:
    found = []
    for class_dir in sorted(p for p in base.iterdir() if p.is_dir()):
        for path in sorted(class_dir.iterdir()):
            if path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES:
                found.append((path, class_dir.name))
            elif path.is_file():
                skipped.append(f"{path}: not an image file (suffix {path.suffix or 'none'})")
    return found


def _read_manifest(root: Path, skipped: list[str]) -> pd.DataFrame:
    try:
        df = pd.read_csv(root / MANIFEST, dtype={"path": str, "label": str, "split": str})
    except Exception as exc:
        raise DataError(f"cannot read {root / MANIFEST}: {exc}") from exc
    if not {"path", "label"} <= set(df.columns):
        raise DataError(
            f"{root / MANIFEST} needs the columns path and label, has {list(df.columns)}"
        )
    df["split"] = df["split"].fillna("") if "split" in df.columns else ""
    paths = []
    for rel in df["path"]:
        path = (root / str(rel)).resolve()
        # A manifest names files inside its own folder, never elsewhere.
        if root.resolve() not in path.parents:
            raise DataError(f"{root / MANIFEST} names a file outside the data set: {rel}")
        paths.append(path)
    df["path"] = paths
    # The source image (smear) travels along where the manifest has it: cards list test smears.
    return df[[c for c in ("path", "label", "split", "source_image") if c in df.columns]]


def scan_dataset(
    root: Path, classes: list[str] | None = None, check_images: bool = True, progress: bool = True
) -> DatasetIndex:
    """Find the images and labels of a data set; skip (and name) what cannot be used."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"data folder {root} does not exist")
    skipped: list[str] = []
    if (root / MANIFEST).is_file():
        layout, df = "manifest", _read_manifest(root, skipped)
    elif (root / "train").is_dir() and (root / "valid").is_dir():
        layout = "folders"
        rows = [
            (path, label, split)
            for split in SPLITS
            if (root / split).is_dir()
            for path, label in _scan_class_folders(root / split, skipped)
        ]
        df = pd.DataFrame(rows, columns=["path", "label", "split"])
    else:
        layout = "classes"
        rows = [(p, label, "") for p, label in _scan_class_folders(root, skipped)]
        df = pd.DataFrame(rows, columns=["path", "label", "split"])
    if df.empty:
        raise DataError(
            f"no images found in {root}: expected {MANIFEST}, train/ and valid/ folders, "
            f"or one folder per class holding {', '.join(sorted(IMAGE_SUFFIXES))} files"
        )
    if classes:
        unknown = set(classes) - set(df["label"])
        if unknown:
            raise DataError(f"classes {sorted(unknown)} are not in {root}")
        df = df[df["label"].isin(classes)]
    if check_images:
        keep = []
        for path in tqdm(df["path"], desc="checking images", disable=not progress, leave=False):
            reason = _check_image(Path(path)) if Path(path).is_file() else "file is missing"
            if reason:
                skipped.append(f"{path}: {reason}")
            keep.append(reason is None)
        df = df[np.array(keep, dtype=bool)]
    for message in skipped:
        log.warning("skipped %s", message)
    if df.empty:
        raise DataError(f"no usable images in {root}; {len(skipped)} skipped, first: {skipped[:3]}")
    df = df.assign(path=df["path"].map(str)).reset_index(drop=True)
    return DatasetIndex(root=root, layout=layout, items=df, skipped=skipped)


def assign_splits(index: DatasetIndex, cfg: TrainConfig) -> pd.DataFrame:
    """Items with a train / valid / test split as the config asks; checks the split is usable."""
    df = index.items.copy()
    how = cfg.split
    if how == "auto":
        how = {"manifest": "manifest", "folders": "folders"}.get(index.layout, "random")
        # A manifest without any split falls back to random; one with other splits ("all", an
        # evaluation import) goes on to the check below and is refused.
        if how == "manifest" and (df["split"] == "").all():
            how = "random"
    if how in ("manifest", "folders"):
        bad = sorted(set(df["split"]) - set(SPLITS))
        if bad:
            raise DataError(
                f"{index.root} has items with split {bad}: it was imported for evaluation, or its "
                "manifest is incomplete; re-import it with splits, or use --split random"
            )
    elif how == "random":
        rng = np.random.default_rng(cfg.seed)
        is_valid = rng.random(len(df)) < cfg.valid_pct
        df["split"] = np.where(is_valid, "valid", "train")
    else:
        raise DataError(f"unknown split {how!r}")
    if cfg.max_per_class:
        train = df[df["split"] == "train"]
        # Seeded shuffle, then the first max_per_class of each class.
        shuffled = train.sample(frac=1.0, random_state=cfg.seed)
        capped = shuffled.groupby("label").head(cfg.max_per_class)
        df = pd.concat([capped, df[df["split"] != "train"]]).sort_index()
    train_classes = set(df.loc[df["split"] == "train", "label"])
    if len(train_classes) < 2:
        raise DataError(f"the training split has {len(train_classes)} class(es); at least 2 needed")
    unseen = df["split"].isin(["valid", "test"]) & ~df["label"].isin(train_classes)
    if unseen.any():
        names = sorted(set(df.loc[unseen, "label"]))
        log.warning(
            "dropping %d valid/test items of classes absent from training: %s", unseen.sum(), names
        )
        df = df[~unseen]
    if not (df["split"] == "valid").any():
        raise DataError("the validation split is empty: give more data or a larger valid_pct")
    return df.reset_index(drop=True)


def fingerprint(df: pd.DataFrame, root: Path) -> str:
    """sha256 over every item's relative path, label, split and file bytes."""
    digest = hashlib.sha256()
    for row in df.sort_values("path").itertuples():
        rel = Path(str(row.path)).resolve().relative_to(Path(root).resolve()).as_posix()
        digest.update(f"{rel}\t{row.label}\t{row.split}\n".encode())
        digest.update(Path(str(row.path)).read_bytes())
    return digest.hexdigest()


def build_dataloaders(
    df: pd.DataFrame, cfg: TrainConfig, mean: list[float], std: list[float], device: Any
) -> Any:
    """fastai DataLoaders over the train and valid items of `df` (test items are left out)."""
    from fastai.vision.all import (
        CategoryBlock,
        ColReader,
        ColSplitter,
        DataBlock,
        ImageBlock,
    )

    # fastai at import: only when training.
    from training.classify.transforms import batch_transforms, item_transforms

    usable = df[df["split"].isin(["train", "valid"])].assign(
        is_valid=lambda d: d["split"] == "valid"
    )
    block = DataBlock(
        blocks=(ImageBlock, CategoryBlock),
        get_x=ColReader("path"),
        get_y=ColReader("label"),
        splitter=ColSplitter("is_valid"),
        item_tfms=item_transforms(cfg),
        batch_tfms=batch_transforms(cfg, mean, std),
    )
    return block.dataloaders(
        usable.reset_index(drop=True),
        bs=cfg.batch_size,
        num_workers=cfg.num_workers,
        device=device,
    )
