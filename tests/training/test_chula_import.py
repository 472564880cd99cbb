"""The Chula RBC-12 layout: its label reader; the importer's crops, manifest, report, errors,
determinism."""

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from tests.synthetic import BORDER_CELL_X, make_chula_dir
from training.datasets import chula
from training.datasets.chula import (
    CHULA_CLASSES,
    MALFORMED,
    MANIFEST_COLUMNS,
    UNKNOWN_CLASS,
    crop_cell,
    import_chula,
    is_chula_layout,
    read_label_file,
)
from training.datasets.split import SPLITS
from training.errors import DataError

# Synthetic cells are r <= 9 and lie >= 12 px from the border: a 24 px window is interior.
WINDOW = 24


@pytest.fixture
def src(tmp_path: Path) -> Path:
    return make_chula_dir(tmp_path / "src", n_images=9, cells_per_image=8)


def run_import(src: Path, out: Path, **kwargs: object) -> chula.ImportReport:
    kwargs.setdefault("window", WINDOW)
    return import_chula(src, out, progress=False, **kwargs)  # type: ignore[arg-type]


def read_manifest(out: Path) -> pd.DataFrame:
    return pd.read_csv(out / "manifest.csv")


def test_import_writes_crops_manifest_and_report(src: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    report = run_import(src, out)
    manifest = read_manifest(out)
    assert list(manifest.columns) == MANIFEST_COLUMNS
    assert report.n_images_seen == report.n_images_used == 9
    assert report.n_cells_written == len(manifest) == 9 * 8
    assert set(manifest["label"]) == {"normal", "spherocyte", "target_cell"}
    assert set(manifest["split"]) == set(SPLITS)
    for row in manifest.itertuples():
        stem = Path(str(row.source_image)).stem
        assert row.path == f"{row.label}/{stem}_{row.x}_{row.y}.png"
        with Image.open(out / str(row.path)) as crop:
            assert crop.format == "PNG"
            assert crop.size == (WINDOW, WINDOW)
            assert crop.mode == "RGB"
    saved = json.loads((out / "import_report.json").read_text())
    assert saved["report"]["n_cells_written"] == 72
    assert saved["arguments"]["window"] == WINDOW
    assert saved["arguments"]["splits"] is True
    assert sum(report.split_fractions.values()) == pytest.approx(1.0, abs=1e-3)
    assert sum(sum(c.values()) for c in report.class_counts.values()) == 72
    assert "72 cells" in report.summary()
    # Nothing but `out` is left next to it (the temporary build folder was renamed).
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out", "src"]


def test_labels_match_label_file(src: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    run_import(src, out)
    manifest = read_manifest(out)
    expected = set()
    for label_file in (src / "Label").iterdir():
        for line in label_file.read_text().splitlines():
            x, y, class_id = (int(v) for v in line.split())
            expected.add((f"{label_file.stem}.jpg", x, y, CHULA_CLASSES[class_id]))
    got = set(manifest[["source_image", "x", "y", "label"]].itertuples(index=False, name=None))
    assert got == expected


def test_border_cell_is_kept_and_padded(src: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    report = run_import(src, out)
    manifest = read_manifest(out)
    border = manifest[manifest["border_fraction"] > 0]
    assert report.n_border_cells == len(border) == 1
    cell = border.iloc[0]
    assert (cell["source_image"], cell["x"]) == ("1.jpg", BORDER_CELL_X)
    # Columns left of the image edge: WINDOW // 2 - x of them, out of WINDOW.
    pad = WINDOW // 2 - BORDER_CELL_X
    assert cell["border_fraction"] == pytest.approx(pad / WINDOW)
    with Image.open(src / "Dataset" / "1.jpg") as image:
        median = np.median(np.asarray(image.convert("RGB")).reshape(-1, 3), axis=0).astype(int)
    with Image.open(out / cell["path"]) as crop:
        assert crop.size == (WINDOW, WINDOW)
        pixels = np.asarray(crop)
    assert (pixels[:, :pad] == median).all()
    assert not (pixels[:, pad:] == median).all()


def test_drop_border_drops_and_counts(src: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    report = run_import(src, out, drop_border=True)
    manifest = read_manifest(out)
    assert report.n_border_cells == report.n_border_dropped == 1
    assert report.n_cells_written == len(manifest) == 9 * 8 - 1
    assert (manifest["border_fraction"] == 0).all()
    assert "1 border cells dropped" in report.summary()


def test_malformed_lines_are_counted_and_good_lines_kept(src: Path, tmp_path: Path) -> None:
    label = src / "Label" / "2.txt"
    good = label.read_text()
    label.write_text(good + "\n1 2\na b c\n5 5 99\n999 5 0\n  \n3 4 0 7\n")
    out = tmp_path / "out"
    report = run_import(src, out)
    assert report.n_bad_lines == 5
    assert report.n_cells_written == 9 * 8
    examples = "\n".join(report.bad_line_examples)
    for fragment in ["2.txt:10", "2.txt:11", "unknown class id 99", "(999, 5) outside", "2.txt:15"]:
        assert fragment in examples
    assert "non-integer" in examples
    assert "got 2" in examples
    assert "2.txt:10" in report.summary()


def test_one_label_reader_for_every_use(tmp_path: Path) -> None:
    # The importer, the detector's fields and the smear evaluation all read labels through it.
    label = tmp_path / "1.txt"
    label.write_bytes(b"\xef\xbb\xbf10 12 3\n\n1 2\na b c\n5 5 99\n3 4 0 7\n-1 4 0\n")
    read = read_label_file(label)
    assert [(p.x, p.y, p.label, p.line) for p in read.points] == [
        (10, 12, "spherocyte", 1),
        (-1, 4, "normal", 7),  # inside the image or not: the caller, who has the image, says
    ]
    assert [(b.line, b.problem) for b in read.bad_lines] == [
        (3, MALFORMED),
        (4, MALFORMED),
        (5, UNKNOWN_CLASS),
        (6, MALFORMED),
    ]
    assert read.bad_lines[2].class_id == 99 and not read.empty
    label.write_text("\n  \n")
    assert read_label_file(label).empty


def test_empty_label_files_and_images_without_labels(src: Path, tmp_path: Path) -> None:
    (src / "Label" / "3.txt").write_text("\n\n")
    (src / "Label" / "4.txt").unlink()
    out = tmp_path / "out"
    report = run_import(src, out)
    assert report.n_empty_label_files == 1
    assert report.n_images_without_labels == 1
    assert report.n_images_seen == 9
    assert report.n_images_used == 7
    assert set(read_manifest(out)["source_image"]) == {f"{n}.jpg" for n in (1, 2, 5, 6, 7, 8, 9)}


def test_label_file_without_image(src: Path, tmp_path: Path) -> None:
    (src / "Label" / "42.txt").write_text("10 10 0\n")
    report = run_import(src, tmp_path / "out")
    assert report.n_missing_images == 1
    assert report.n_cells_written == 9 * 8


def test_truncated_jpeg_is_unreadable_not_a_crash(src: Path, tmp_path: Path) -> None:
    image = src / "Dataset" / "5.jpg"
    image.write_bytes(image.read_bytes()[:400])
    out = tmp_path / "out"
    report = run_import(src, out)
    assert report.n_unreadable_images == 1
    assert "5.jpg" in report.unreadable_images[0]
    assert report.n_cells_written == 8 * 8
    assert "5.jpg" not in set(read_manifest(out)["source_image"])


def test_nothing_usable_raises_with_counts(tmp_path: Path) -> None:
    src = make_chula_dir(tmp_path / "src", n_images=3)
    for label in (src / "Label").iterdir():
        label.write_text("")
    (src / "Label" / "3.txt").write_text("1 2\n")
    out = tmp_path / "out"
    with pytest.raises(DataError, match="no usable cells") as excinfo:
        run_import(src, out)
    message = str(excinfo.value)
    assert "2 empty label files" in message
    assert "1 bad label lines" in message
    assert not out.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["src"]


def test_not_a_chula_folder(tmp_path: Path) -> None:
    (tmp_path / "Dataset").mkdir()
    assert not is_chula_layout(tmp_path)
    with pytest.raises(DataError, match=r"not a Chula RBC-12 folder: missing Label/"):
        run_import(tmp_path, tmp_path / "out")


def test_existing_output_is_not_overwritten(src: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    with pytest.raises(DataError, match="already exists and is not empty"):
        run_import(src, out)
    # overwrite=True only replaces a previous import, i.e. a folder with manifest.csv.
    with pytest.raises(DataError, match="not a previous import"):
        run_import(src, out, overwrite=True)
    assert (out / "notes.txt").read_text() == "mine"


def test_overwrite_replaces_previous_import(src: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    run_import(src, out, classes=["normal"])
    run_import(src, out, overwrite=True)
    assert set(read_manifest(out)["label"]) == {"normal", "spherocyte", "target_cell"}


def test_empty_existing_output_folder_is_used(src: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    assert run_import(src, out).n_cells_written == 72


@pytest.mark.parametrize("window", [0, 7, -3, 8.0])
def test_bad_window(src: Path, tmp_path: Path, window: object) -> None:
    with pytest.raises(DataError, match="window must be an integer >= 8"):
        run_import(src, tmp_path / "out", window=window)


def test_odd_window(src: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    run_import(src, out, window=9)
    with Image.open(out / read_manifest(out)["path"].iloc[0]) as crop:
        assert crop.size == (9, 9)


def test_bad_fractions_and_classes(src: Path, tmp_path: Path) -> None:
    with pytest.raises(DataError, match="sum to 1"):
        run_import(src, tmp_path / "out", fractions=(0.5, 0.2, 0.2))
    with pytest.raises(DataError, match="unknown class names"):
        run_import(src, tmp_path / "out", classes=["normal", "blob"])


def test_deterministic(src: Path, tmp_path: Path) -> None:
    first, second = tmp_path / "first", tmp_path / "second"
    run_import(src, first, seed=3)
    run_import(src, second, seed=3)
    files = sorted(p.relative_to(first) for p in first.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(second) for p in second.rglob("*") if p.is_file())
    assert len(files) == 72 + 2
    for relative in files:
        assert (first / relative).read_bytes() == (second / relative).read_bytes(), relative


def test_smears_are_not_split_and_classes_reach_every_split(tmp_path: Path) -> None:
    src = make_chula_dir(tmp_path / "src", n_images=12, cells_per_image=6, classes=(0, 3))
    # Make target cells (class 4) appear in only 3 smears: the minimum for all three splits.
    for number in (2, 6, 11):
        label = src / "Label" / f"{number}.txt"
        x, y, _ = label.read_text().splitlines()[0].split()
        label.write_text(label.read_text() + f"{int(x) + 1} {y} 4\n")
    out = tmp_path / "out"
    run_import(src, out)
    manifest = read_manifest(out)
    assert (manifest.groupby("source_image")["split"].nunique() == 1).all()
    for label, rows in manifest.groupby("label"):
        assert set(rows["split"]) == set(SPLITS), label


def test_class_filter(src: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    report = run_import(src, out, classes=["spherocyte", "target_cell"])
    manifest = read_manifest(out)
    assert set(manifest["label"]) == {"spherocyte", "target_cell"}
    assert report.n_cells_filtered_out == 72 - len(manifest) > 0
    assert not (out / "normal").exists()
    assert set(report.class_counts["train"]) == {"spherocyte", "target_cell"}


def test_no_splits_for_evaluation_sets(src: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    report = run_import(src, out, splits=False)
    assert set(read_manifest(out)["split"]) == {"all"}
    assert report.split_fractions == {"all": 1.0}
    assert list(report.class_counts) == ["all"]


def test_interrupted_import_leaves_nothing(
    src: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = []

    def failing_crop(*args: object, **kwargs: object) -> object:
        calls.append(1)
        if len(calls) > 5:
            raise KeyboardInterrupt
        return crop_cell(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(chula, "crop_cell", failing_crop)
    with pytest.raises(KeyboardInterrupt):
        run_import(src, tmp_path / "out")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["src"]


def pattern_image(width: int = 40, height: int = 30) -> Image.Image:
    """Pixel (x, y) is (x, y, 200): every position has a distinct, predictable colour."""
    yy, xx = np.mgrid[:height, :width]
    array = np.stack([xx, yy, np.full_like(xx, 200)], axis=-1).astype(np.uint8)
    return Image.fromarray(array)


def test_crop_cell_interior_exact_pixels() -> None:
    image = pattern_image()
    crop, outside = crop_cell(image, 20, 15, 8, (1, 2, 3))
    assert outside == 0.0
    assert crop.size == (8, 8)
    pixels = np.asarray(crop)
    # Window covers x - 4 .. x + 3, so the label point lands on crop pixel (4, 4).
    assert tuple(pixels[4, 4]) == (20, 15, 200)
    assert tuple(pixels[0, 0]) == (16, 11, 200)
    assert tuple(pixels[7, 7]) == (23, 18, 200)
    assert np.array_equal(pixels, np.asarray(image)[11:19, 16:24])


def test_crop_cell_odd_window_is_centred() -> None:
    pixels = np.asarray(crop_cell(pattern_image(), 20, 15, 9, (0, 0, 0))[0])
    assert tuple(pixels[4, 4]) == (20, 15, 200)
    assert tuple(pixels[0, 0]) == (16, 11, 200)
    assert tuple(pixels[8, 8]) == (24, 19, 200)


def test_crop_cell_pads_past_the_border() -> None:
    image = pattern_image()
    before = np.asarray(image).copy()
    crop, outside = crop_cell(image, 1, 2, 8, (7, 8, 9))
    pixels = np.asarray(crop)
    # Window spans x -3..4 and y -2..5: 3 columns and 2 rows fall outside.
    assert outside == pytest.approx(1 - (5 * 6) / 64)
    assert (pixels[:2] == (7, 8, 9)).all()
    assert (pixels[:, :3] == (7, 8, 9)).all()
    assert tuple(pixels[2, 3]) == (0, 0, 200)
    assert tuple(pixels[4, 4]) == (1, 2, 200)
    # Bottom-right corner: window runs past both far edges.
    crop, outside = crop_cell(image, 39, 29, 8, (7, 8, 9))
    pixels = np.asarray(crop)
    assert outside == pytest.approx(1 - (5 * 5) / 64)
    assert tuple(pixels[4, 4]) == (39, 29, 200)
    assert (pixels[5:] == (7, 8, 9)).all()
    assert np.array_equal(np.asarray(image), before)


def test_crop_cell_fully_outside_and_bad_input() -> None:
    crop, outside = crop_cell(pattern_image(), -50, -50, 8, (7, 8, 9))
    assert outside == 1.0
    assert (np.asarray(crop) == (7, 8, 9)).all()
    with pytest.raises(ValueError, match="RGB"):
        crop_cell(pattern_image().convert("L"), 5, 5, 8, (0, 0, 0))
