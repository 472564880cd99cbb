"""Data sets in: scanning, skipping bad files, splits, fingerprint, DataLoaders (no training)."""

from __future__ import annotations

import logging
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from tests.synthetic import make_folder_dataset
from training.classify.config import TrainConfig, load_config
from training.classify.data import (
    MANIFEST,
    DatasetIndex,
    assign_splits,
    build_dataloaders,
    fingerprint,
    scan_dataset,
)
from training.classify.transforms import batch_transforms
from training.errors import DataError


def config(data: Path | str = "unused", **overrides: object) -> TrainConfig:
    return load_config(None, {"data": str(data), **overrides})


def synthetic_index(
    counts: dict[str, int], split: str = "", layout: str = "classes"
) -> DatasetIndex:
    """An index of made-up paths (assign_splits never opens the files)."""
    rows = [
        (f"/data/{label}/{i}.png", label, split) for label, n in counts.items() for i in range(n)
    ]
    items = pd.DataFrame(rows, columns=["path", "label", "split"])
    return DatasetIndex(root=Path("/data"), layout=layout, items=items)


# --- scan_dataset -------------------------------------------------------------------------------


def test_scan_class_folders_finds_everything(tmp_path: Path) -> None:
    make_folder_dataset(tmp_path, classes=("b", "a", "c"), n_per_class=4)
    index = scan_dataset(tmp_path, progress=False)
    assert index.layout == "classes"
    assert len(index.items) == 12 and index.skipped == []
    assert index.classes == ["a", "b", "c"]
    assert set(index.items["split"]) == {""}
    assert all(Path(p).is_file() for p in index.items["path"])
    assert index.items.groupby("label").size().to_dict() == {"a": 4, "b": 4, "c": 4}


def test_scan_keeps_only_the_asked_classes(tmp_path: Path) -> None:
    make_folder_dataset(tmp_path, classes=("a", "b", "c"), n_per_class=3)
    index = scan_dataset(tmp_path, classes=["a", "c"], progress=False)
    assert index.classes == ["a", "c"] and len(index.items) == 6
    with pytest.raises(DataError, match="'zebra'"):
        scan_dataset(tmp_path, classes=["a", "zebra"], progress=False)


def test_bad_files_are_skipped_by_name_with_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    make_folder_dataset(tmp_path, classes=("a", "b"), n_per_class=3)
    notes = tmp_path / "a" / "notes.txt"
    notes.write_text("stained on Tuesday\n")
    corrupt = tmp_path / "a" / "corrupt.png"
    corrupt.write_bytes(b"\x89PNG\r\n\x1a\n" + b"this is no image at all" * 10)
    truncated = tmp_path / "b" / "truncated.jpg"
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(truncated, quality=90)
    whole = truncated.read_bytes()
    truncated.write_bytes(whole[: len(whole) // 2])
    huge = tmp_path / "b" / "huge.png"
    Image.new("1", (5000, 5000)).save(huge)

    with caplog.at_level(logging.WARNING, logger="training.classify.data"):
        index = scan_dataset(tmp_path, progress=False)

    assert len(index.items) == 6
    kept = set(index.items["path"])
    for bad in (notes, corrupt, truncated, huge):
        assert str(bad) not in kept
    assert len(index.skipped) == 4
    for bad in (notes, corrupt, truncated, huge):
        reasons = [s for s in index.skipped if s.startswith(f"{bad}:")]
        assert len(reasons) == 1, (bad, index.skipped)
    assert "not an image file" in next(s for s in index.skipped if "notes.txt" in s)
    assert "unreadable" in next(s for s in index.skipped if "corrupt.png" in s)
    assert "unreadable" in next(s for s in index.skipped if "truncated.jpg" in s)
    assert "too large" in next(s for s in index.skipped if "huge.png" in s)
    warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    for bad in (notes, corrupt, truncated, huge):
        assert any(str(bad) in message for message in warned), bad


def test_empty_folder(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="no images found"):
        scan_dataset(tmp_path, progress=False)
    (tmp_path / "a").mkdir()
    with pytest.raises(DataError, match="no images found"):
        scan_dataset(tmp_path, progress=False)


def test_missing_folder(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="does not exist"):
        scan_dataset(tmp_path / "nowhere", progress=False)


def test_all_files_bad(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "cell.png").write_bytes(b"\x89PNG\r\n\x1a\nnope")
    with (
        caplog.at_level(logging.WARNING, logger="training.classify.data"),
        pytest.raises(DataError, match=r"no usable images.*2 skipped") as err,
    ):
        scan_dataset(tmp_path, progress=False)
    assert "cell.png" in str(err.value)


def test_folders_layout_keeps_its_splits(tmp_path: Path) -> None:
    make_folder_dataset(tmp_path / "train", n_per_class=4, seed=1)
    make_folder_dataset(tmp_path / "valid", n_per_class=2, seed=2)
    make_folder_dataset(tmp_path / "test", n_per_class=3, seed=3)
    index = scan_dataset(tmp_path, progress=False)
    assert index.layout == "folders"
    for path, split in zip(index.items["path"], index.items["split"], strict=True):
        assert Path(path).relative_to(tmp_path).parts[0] == split
    assert index.items["split"].value_counts().to_dict() == {"train": 8, "test": 6, "valid": 4}

    df = assign_splits(index, config(tmp_path))
    assert df["split"].value_counts().to_dict() == {"train": 8, "test": 6, "valid": 4}
    # The folder splits are kept, not redrawn at random.
    pd.testing.assert_frame_equal(df, index.items)


def write_manifest(root: Path, rows: list[tuple[str, str, str]]) -> None:
    pd.DataFrame(rows, columns=["path", "label", "split"]).to_csv(root / MANIFEST, index=False)


def test_manifest_layout_reads_its_split(tmp_path: Path) -> None:
    make_folder_dataset(tmp_path / "crops", n_per_class=3)
    rows = [
        (f"crops/{label}/{i}.png", label, split)
        for label in ("a", "b")
        for i, split in enumerate(["train", "valid", "test"])
    ]
    write_manifest(tmp_path, rows)
    index = scan_dataset(tmp_path, progress=False)
    assert index.layout == "manifest"
    got = {
        (Path(p).relative_to(tmp_path).as_posix(), label, split)
        for p, label, split in index.items[["path", "label", "split"]].itertuples(index=False)
    }
    assert got == set(rows)
    df = assign_splits(index, config(tmp_path))
    assert sorted(df["split"]) == sorted(s for *_, s in rows)


def test_manifest_path_outside_the_data_set(tmp_path: Path) -> None:
    root = tmp_path / "set"
    make_folder_dataset(root, n_per_class=2)
    make_folder_dataset(tmp_path / "elsewhere", n_per_class=1)
    write_manifest(root, [("a/0.png", "a", "train"), ("../elsewhere/b/0.png", "b", "train")])
    with pytest.raises(DataError, match=re.escape("outside the data set: ../elsewhere/b/0.png")):
        scan_dataset(root, progress=False)
    write_manifest(
        root, [("a/0.png", "a", "train"), (str(tmp_path / "elsewhere/b/0.png"), "b", "")]
    )
    with pytest.raises(DataError, match="outside the data set"):
        scan_dataset(root, progress=False)


def test_manifest_without_the_label_column(tmp_path: Path) -> None:
    make_folder_dataset(tmp_path, n_per_class=1)
    pd.DataFrame({"path": ["a/0.png"], "class": ["a"]}).to_csv(tmp_path / MANIFEST, index=False)
    with pytest.raises(DataError, match="path and label"):
        scan_dataset(tmp_path, progress=False)


def evaluation_import(root: Path) -> DatasetIndex:
    """A set imported for evaluation: every item has split "all"."""
    make_folder_dataset(root, n_per_class=3)
    write_manifest(root, [(f"{c}/{i}.png", c, "all") for c in ("a", "b") for i in range(3)])
    return scan_dataset(root, progress=False)


def test_evaluation_import_is_refused_for_training(tmp_path: Path) -> None:
    index = evaluation_import(tmp_path)
    with pytest.raises(DataError, match="imported for evaluation"):
        assign_splits(index, config(tmp_path, split="manifest"))


def test_evaluation_import_is_refused_for_training_with_auto_split(tmp_path: Path) -> None:
    index = evaluation_import(tmp_path)
    try:
        assign_splits(index, config(tmp_path))
    except DataError as exc:
        assert "imported for evaluation" in str(exc)
    else:
        raise AssertionError("an evaluation import was split at random and used for training")


def test_manifest_without_splits_is_split_at_random(tmp_path: Path) -> None:
    make_folder_dataset(tmp_path, n_per_class=10)
    pd.DataFrame(
        {
            "path": [f"{c}/{i}.png" for c in "ab" for i in range(10)],
            "label": list("a" * 10 + "b" * 10),
        }
    ).to_csv(tmp_path / MANIFEST, index=False)
    index = scan_dataset(tmp_path, progress=False)
    assert set(index.items["split"]) == {""}
    df = assign_splits(index, config(tmp_path, valid_pct=0.5))
    assert set(df["split"]) == {"train", "valid"}


# --- assign_splits ------------------------------------------------------------------------------


def test_random_split_is_seeded_and_near_valid_pct() -> None:
    index = synthetic_index({"a": 500, "b": 500})
    first = assign_splits(index, config(valid_pct=0.3, seed=7))
    again = assign_splits(index, config(valid_pct=0.3, seed=7))
    pd.testing.assert_frame_equal(first, again)
    other = assign_splits(index, config(valid_pct=0.3, seed=8))
    assert not first["split"].equals(other["split"])
    assert set(first["split"]) == {"train", "valid"}
    assert (first["split"] == "valid").mean() == pytest.approx(0.3, abs=0.05)
    # Nothing is lost or duplicated.
    assert sorted(first["path"]) == sorted(index.items["path"])


def test_random_split_on_a_split_set_when_asked() -> None:
    index = synthetic_index({"a": 200, "b": 200}, split="train", layout="folders")
    df = assign_splits(index, config(split="random", valid_pct=0.5))
    assert (df["split"] == "valid").mean() == pytest.approx(0.5, abs=0.1)


def test_training_needs_two_classes() -> None:
    with pytest.raises(DataError, match="1 class"):
        assign_splits(synthetic_index({"a": 50}), config())
    index = synthetic_index({"a": 5}, split="train", layout="folders")
    index.items = pd.concat(
        [index.items, synthetic_index({"b": 5}, split="valid").items], ignore_index=True
    )
    with pytest.raises(DataError, match="1 class"):
        assign_splits(index, config())


def test_max_per_class_caps_training_only() -> None:
    index = synthetic_index({"a": 40, "b": 60, "c": 3})
    full = assign_splits(index, config(valid_pct=0.25, seed=1))
    capped = assign_splits(index, config(valid_pct=0.25, seed=1, max_per_class=5))
    train = capped[capped["split"] == "train"]
    assert train.groupby("label").size().to_dict() == {"a": 5, "b": 5, "c": 3}
    # The kept training items are a subset of the uncapped training items.
    assert set(train["path"]) <= set(full.loc[full["split"] == "train", "path"])
    # Seeded: the same cap picks the same items.
    again = assign_splits(index, config(valid_pct=0.25, seed=1, max_per_class=5))
    pd.testing.assert_frame_equal(capped, again)
    # The validation split is untouched.
    pd.testing.assert_frame_equal(
        capped[capped["split"] == "valid"].reset_index(drop=True),
        full[full["split"] == "valid"].reset_index(drop=True),
    )


def test_valid_items_of_classes_absent_from_training_are_dropped(
    caplog: pytest.LogCaptureFixture,
) -> None:
    train = synthetic_index({"a": 4, "b": 4}, split="train").items
    valid = synthetic_index({"a": 2, "b": 2, "ghost": 3}, split="valid").items
    test = synthetic_index({"ghost": 1, "a": 1}, split="test").items
    items = pd.concat([train, valid, test], ignore_index=True)
    index = DatasetIndex(root=Path("/data"), layout="folders", items=items)
    with caplog.at_level(logging.WARNING, logger="training.classify.data"):
        df = assign_splits(index, config())
    assert "ghost" not in set(df["label"])
    assert df["split"].value_counts().to_dict() == {"train": 8, "valid": 4, "test": 1}
    assert any("dropping 4" in r.getMessage() and "ghost" in r.getMessage() for r in caplog.records)


def test_empty_validation_split_is_an_error() -> None:
    index = synthetic_index({"a": 3, "b": 3}, split="train", layout="folders")
    with pytest.raises(DataError, match="validation split is empty"):
        assign_splits(index, config())


# --- fingerprint --------------------------------------------------------------------------------


def test_fingerprint_follows_the_bytes(tmp_path: Path) -> None:
    make_folder_dataset(tmp_path, n_per_class=4)
    index = scan_dataset(tmp_path, progress=False)
    df = assign_splits(index, config(tmp_path, valid_pct=0.5))
    first = fingerprint(df, tmp_path)
    assert len(first) == 64
    assert fingerprint(df, tmp_path) == first
    # Row order does not matter.
    assert fingerprint(df.sample(frac=1.0, random_state=0), tmp_path) == first

    victim = Path(df["path"].iloc[3])
    original = victim.read_bytes()
    victim.write_bytes(original[:-1] + bytes([original[-1] ^ 1]))
    changed = fingerprint(df, tmp_path)
    assert changed != first
    victim.write_bytes(original)
    assert fingerprint(df, tmp_path) == first

    # Labels and splits count too.
    relabelled = df.assign(split=np.where(df["split"] == "train", "valid", "train"))
    assert fingerprint(relabelled, tmp_path) != first


# --- DataLoaders --------------------------------------------------------------------------------


def test_dataloaders_give_normalised_batches(tmp_path: Path) -> None:
    make_folder_dataset(tmp_path, classes=("target", "normal", "spherocyte"), n_per_class=6)
    cfg = config(tmp_path, input_size=32, batch_size=4, valid_pct=0.5, seed=0)
    df = assign_splits(scan_dataset(tmp_path, progress=False), cfg)
    mean, std = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]
    dls = build_dataloaders(df, cfg, mean, std, torch.device("cpu"))

    assert list(dls.vocab) == ["normal", "spherocyte", "target"]
    assert len(dls.train_ds) == int((df["split"] == "train").sum())
    assert len(dls.valid_ds) == int((df["split"] == "valid").sum())

    x, y = dls.train.one_batch()
    assert x.shape == (4, 3, 32, 32) and x.dtype == torch.float32
    assert y.shape == (4,) and int(y.max()) < 3
    assert torch.isfinite(x).all()

    # The validation batch is not augmented: exactly (pixel / 255 - mean) / std, in item order.
    xv, yv = dls.valid.one_batch()
    assert xv.shape == (4, 3, 32, 32)
    items = dls.valid.items.iloc[:4]
    pixels = np.stack([np.array(Image.open(p).convert("RGB")) for p in items["path"]])
    expected = torch.from_numpy(pixels).permute(0, 3, 1, 2).float() / 255.0
    expected = (expected - torch.tensor(mean)[:, None, None]) / torch.tensor(std)[:, None, None]
    torch.testing.assert_close(xv.as_subclass(torch.Tensor), expected, atol=1e-4, rtol=0)
    assert [dls.vocab[int(i)] for i in yv] == list(items["label"])


def test_augmentation_is_the_thesis_one() -> None:
    from fastai.vision.all import Normalize

    cfg = config()
    mean, std = [0.5, 0.5, 0.5], [0.25, 0.25, 0.25]
    tfms = batch_transforms(cfg, mean, std)

    affine = [t for t in tfms if getattr(t, "aff_fs", None)]
    assert len(affine) == 1
    fs = {f.func.__name__: f.keywords for f in affine[0].aff_fs}
    # Dihedral (not Flip): the eight flips and right-angle turns, vertical flips included.
    assert type(affine[0]).__name__ == "Dihedral" and "dihedral_mat" in fs
    assert "flip_mat" not in fs
    assert fs["rotate_mat"]["max_deg"] == pytest.approx(180.0)
    assert fs["zoom_mat"]["max_zoom"] == pytest.approx(1.1)
    # No warp: it would distort the cell shapes that define several classes.
    assert affine[0].coord_fs == []
    assert not any("Warp" in type(t).__name__ for t in tfms)

    names = {type(t).__name__ for t in tfms}
    assert {"Brightness", "Hue"} <= names
    assert isinstance(tfms[-1], Normalize)
    assert tfms[-1].mean.flatten().tolist() == pytest.approx(mean)
    assert tfms[-1].std.flatten().tolist() == pytest.approx(std)

    no_vert = config(augment={"flip_vert": False, "max_hue": 0, "max_saturation": 0})
    tfms = batch_transforms(no_vert, mean, std)
    assert type(tfms[0]).__name__ == "Flip"
    assert "Hue" not in {type(t).__name__ for t in tfms}
