"""`python -m training import-slides`: reviewed cells of the records database become a
folder-per-class crop set, split by slide, that the training pipeline reads.

One SQLite records database (made once for the module) holds four slides of synthetic smear
fields (tests/synthetic.py make_smear): slide A has two fields without a scale, B one at the
training scale, C the first field of A at twice the resolution (microns_per_pixel 0.095), and D
one field, signed off. Half of each field's red cells are reviewed (one relabelled, three
confirmed).
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from core.smear.crop import DEFAULT_WINDOW, crop_cell, median_colour
from records.store import (
    CellInput,
    FieldInput,
    create_slide,
    create_user,
    get_slide,
    list_cells,
    open_store,
    review_cell,
    sign_off,
)
from tests.conftest import tiny_config
from tests.synthetic import make_smear
from training.__main__ import main
from training.classify.data import assign_splits, scan_dataset
from training.datasets import slides as slides_module
from training.datasets.slides import (
    MANIFEST_COLUMNS,
    POPULATION_COLUMNS,
    POPULATION_FILE,
    import_slides,
)
from training.datasets.split import SPLITS
from training.errors import DataError

REPO = Path(__file__).resolve().parents[2]
CLASSES = ["normal", "spherocyte", "target_cell"]
RADIUS = 19  # make_smear's cells
FIELDS_PER_SLIDE = {"S-A": 2, "S-B": 1, "S-C": 1, "S-D": 1}
RED_PER_FIELD = 8  # 7 interior cells and one cut by the left edge
REVIEWED_PER_FIELD = 4
N_FIELDS = sum(FIELDS_PER_SLIDE.values())


def _png(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def _field(pixels: np.ndarray, name: str, zoom: int, mpp: float | None) -> FieldInput:
    """A field of make_smear's image (enlarged `zoom` times) with its red cells, a white cell and
    a platelet; red cell i is proposed as CLASSES[i % 3]."""
    _, interior, border = make_smear()
    cells = []
    for i, (x, y) in enumerate(interior + border):
        label = CLASSES[i % len(CLASSES)]
        edge = (x, y) in border
        box = (max(0, x - RADIUS), y - RADIUS, x + RADIUS, y + RADIUS)
        cells.append(
            CellInput(
                kind="red_cell",
                x=float(x * zoom),
                y=float(y * zoom),
                box=(box[0] * zoom, box[1] * zoom, box[2] * zoom, box[3] * zoom),
                at_border=edge,
                counted=not edge,
                label=label,
                confidence=0.6,
                probabilities={c: (0.6 if c == label else 0.2) for c in CLASSES},
            )
        )
    cells.append(CellInput(kind="white_cell", x=200.0, y=215.0, box=(184, 199, 216, 231)))
    cells.append(CellInput(kind="platelet", x=110.0, y=100.0, box=(107, 97, 113, 103)))
    image = Image.fromarray(pixels)
    if zoom != 1:
        image = image.resize((image.width * zoom, image.height * zoom), Image.Resampling.BICUBIC)
    return FieldInput(
        filename=name,
        image=_png(np.asarray(image)),
        media_type="image/png",
        width=image.width,
        height=image.height,
        classifier_name="tiny",
        classifier_sha256="ab" * 32,
        detector_name="classical",
        microns_per_pixel=mpp,
        cells=cells,
    )


@pytest.fixture(scope="module")
def database(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """The records database's URL, and each reviewed cell's final label by cell id."""
    url = f"sqlite:///{tmp_path_factory.mktemp('records') / 'rbc.sqlite3'}"
    yield {"url": url, "reviewed": _fill(url)}


def _fill(url: str) -> dict[int, str]:
    """The slides of FIELDS_PER_SLIDE in the records database at `url`, REVIEWED_PER_FIELD cells
    of each field reviewed (one relabelled), S-D signed off: each reviewed cell's final label."""
    from records.store import add_field

    reviewed: dict[int, str] = {}
    with open_store(url) as store:
        store.upgrade()
        user = create_user(store, "rae", "reviewer")[0]
        seeds = iter(range(10))
        for sample_id, n_fields in FIELDS_PER_SLIDE.items():
            mpp = {"S-B": 0.19, "S-C": 0.095}.get(sample_id)
            slide = create_slide(store, user, sample_id, microns_per_pixel=mpp)
            for k in range(n_fields):
                seed = 0 if sample_id == "S-C" else next(seeds)
                pixels = make_smear(seed=seed)[0]
                zoom = 2 if sample_id == "S-C" else 1
                add_field(store, user, slide.id, _field(pixels, f"f{k}.png", zoom, mpp))
            cells = [c for c in list_cells(store, slide.id, limit=1000)[0] if c.kind == "red_cell"]
            for field_id in sorted({c.field_id for c in cells}):
                of_field = [c for c in cells if c.field_id == field_id]
                for j, cell in enumerate(of_field[:REVIEWED_PER_FIELD]):
                    new = None if j else CLASSES[(CLASSES.index(str(cell.label)) + 1) % 3]
                    done = review_cell(store, user, slide.id, cell.id, cell.version, new)
                    assert done.final_label is not None
                    reviewed[cell.id] = done.final_label
            if sample_id == "S-D":
                sign_off(store, user, slide.id, get_slide(store, slide.id).version)
    return reviewed


def _run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    environ = {k: v for k, v in os.environ.items() if k != "RBC_DATABASE_URL"}
    return subprocess.run(
        [sys.executable, "-m", "training", "import-slides", *args],
        cwd=REPO,
        env={**environ, **(env or {})},
        capture_output=True,
        text=True,
        timeout=120,
    )


def _manifest(out: Path) -> pd.DataFrame:
    return pd.read_csv(out / "manifest.csv", keep_default_na=False)


def _no_leftovers(parent: Path) -> None:
    assert not [p.name for p in parent.iterdir() if p.name.startswith(".")]


def test_reviewed_cells_become_a_training_set(database: dict[str, Any], tmp_path: Path) -> None:
    out = tmp_path / "set"
    done = _run("--database", database["url"], "--out", str(out))
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0].startswith(
        f"Imported {N_FIELDS * REVIEWED_PER_FIELD} reviewed cells from {N_FIELDS} fields of 4 "
        "slides in sqlite:///"
    )
    slides_row = next(line.split() for line in lines if line.startswith("slides "))
    assert sum(int(n) for n in slides_row[1:]) == len(FIELDS_PER_SLIDE)
    _no_leftovers(tmp_path)

    manifest = _manifest(out)
    assert list(manifest.columns) == MANIFEST_COLUMNS
    assert len(manifest) == N_FIELDS * REVIEWED_PER_FIELD
    # Labels are the reviewers' final labels, the relabelled ones included.
    labels = dict(zip(manifest["cell_id"], manifest["label"], strict=True))
    assert labels == database["reviewed"]
    assert (manifest["label"] != manifest["proposed_label"]).sum() == N_FIELDS
    assert set(manifest["reviewer"]) == {"rae"} and manifest["reviewed_at"].str.len().min() > 0
    assert set(manifest["sample_id"]) == set(FIELDS_PER_SLIDE)
    for row in manifest.itertuples():
        path = out / row.path
        assert path.parent.name == row.label and path.suffix == ".png"
        with Image.open(path) as crop:
            assert crop.size == (DEFAULT_WINDOW, DEFAULT_WINDOW) and crop.mode == "RGB"
    assert sorted(p.name for p in out.iterdir() if p.is_dir()) == sorted(set(manifest["label"]))

    # Split by slide: every slide's cells in one split, and the split is one the pipeline knows.
    per_slide = manifest.groupby("slide_id")["split"].nunique()
    assert (per_slide == 1).all()
    assert set(manifest["split"]) <= set(SPLITS)
    assert {"train", "valid"} <= set(manifest["split"])

    # The training pipeline reads it as it reads an import-chula output.
    index = scan_dataset(out, progress=False)
    assert index.layout == "manifest" and len(index.items) == len(manifest)
    cfg = tiny_config(out, tmp_path / "runs", batch_size=4)
    items = assign_splits(index, cfg)
    assert set(items["split"]) <= set(SPLITS) and (items["split"] == "train").any()
    import torch

    from training.classify.data import build_dataloaders

    mean, std = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]
    dls = build_dataloaders(items, cfg, mean, std, torch.device("cpu"))
    assert list(dls.vocab) == sorted(set(items["label"]))
    x, y = dls.train.one_batch()
    assert x.shape == (4, 3, 32, 32) and torch.isfinite(x).all() and y.shape == (4,)
    assert (out / "import_report.json").is_file()


def test_all_cells_and_the_env_url(database: dict[str, Any], tmp_path: Path) -> None:
    out = tmp_path / "all"
    done = _run("--all", "--out", str(out), env={"RBC_DATABASE_URL": database["url"]})
    assert done.returncode == 0, done.stderr
    manifest = _manifest(out)
    assert len(manifest) == N_FIELDS * RED_PER_FIELD  # red cells only, reviewed or not
    reviewed = manifest["reviewer"] != ""
    assert reviewed.sum() == N_FIELDS * REVIEWED_PER_FIELD
    unreviewed = manifest[~reviewed]
    assert (unreviewed["label"] == unreviewed["proposed_label"]).all()
    assert manifest["at_border"].sum() == N_FIELDS
    assert (manifest.groupby("slide_id")["split"].nunique() == 1).all()

    # --drop-border leaves out the cells cut by the field's edge.
    dropped = tmp_path / "dropped"
    report = import_slides(
        database["url"], dropped, reviewed_only=False, drop_border=True, progress=False
    )
    assert report.n_border_dropped == N_FIELDS
    assert len(_manifest(dropped)) == N_FIELDS * (RED_PER_FIELD - 1)


def test_crops_are_cut_at_the_training_scale(database: dict[str, Any], tmp_path: Path) -> None:
    out = tmp_path / "all"
    import_slides(database["url"], out, reviewed_only=False, progress=False)
    manifest = _manifest(out)
    pixels, interior, border = make_smear(seed=0)
    original = Image.fromarray(pixels)
    fill = median_colour(original)

    def crops(sample_id: str) -> list[np.ndarray]:
        rows = manifest[(manifest["sample_id"] == sample_id) & (manifest["field_ordinal"] == 1)]
        rows = rows.sort_values("cell_id")
        return [np.asarray(Image.open(out / p), dtype=np.int16) for p in rows["path"]]

    # A field without a scale is taken at the training scale: exactly crop_cell on the image.
    for got, (x, y) in zip(crops("S-A"), interior + border, strict=True):
        centre_x = round((max(0, x - RADIUS) + x + RADIUS) / 2)  # the box's centre
        expected = crop_cell(original, centre_x, y, DEFAULT_WINDOW, fill)[0]
        assert np.array_equal(got, np.asarray(expected, dtype=np.int16))
    # The same field at twice the resolution (0.095 um/px) is brought back to 0.19 um/px.
    for at_native, resampled in zip(crops("S-A"), crops("S-C"), strict=True):
        assert resampled.shape == at_native.shape
        assert np.abs(resampled - at_native).mean() < 4


def test_signed_off_only(database: dict[str, Any], tmp_path: Path) -> None:
    report = import_slides(
        database["url"],
        tmp_path / "signed",
        signed_off_only=True,
        val_share=0,
        test_share=0,
        progress=False,
    )
    manifest = _manifest(tmp_path / "signed")
    assert set(manifest["sample_id"]) == {"S-D"} and set(manifest["slide_status"]) == {"signed_off"}
    assert set(manifest["split"]) == {"train"} and report.n_slides == 1
    assert "Note" not in report.summary()  # no split with a positive share was left empty


def test_every_red_cell_of_the_slides_is_listed_with_its_margin(
    database: dict[str, Any], tmp_path: Path
) -> None:
    """population.csv: what the reviews were drawn from, for adapt to weigh them by."""
    _check_population(database["url"], tmp_path / "set")


def test_the_population_from_postgresql(tmp_path: Path) -> None:
    """The same from the records on the real PostgreSQL server (its JSON probabilities)."""
    from tests.records.test_records import PgDatabase

    pg = PgDatabase()
    try:
        url = pg.new_empty()
        _fill(url)
        _check_population(url, tmp_path / "set")
    finally:
        pg.drop()


def _check_population(url: str, out: Path) -> None:
    import_slides(url, out, signed_off_only=True, progress=False)
    manifest = _manifest(out)
    population = pd.read_csv(out / POPULATION_FILE)
    assert list(population.columns) == POPULATION_COLUMNS
    with open_store(url) as store:
        slide_id = int(manifest["slide_id"].iloc[0])
        red = [c for c in list_cells(store, slide_id, limit=1000)[0] if c.kind == "red_cell"]
    # Every red cell of the signed-off slide, reviewed or not; no other slide's.
    assert sorted(population["cell_id"]) == sorted(c.id for c in red)
    assert set(population["slide_id"]) == {slide_id}
    reviewed = set(population.loc[population["reviewed"], "cell_id"])
    assert reviewed == set(manifest["cell_id"]) and len(reviewed) < len(population)
    by_id = {c.id: c for c in red}
    for row in population.itertuples():
        assert row.proposed_label == by_id[row.cell_id].proposed_label
        assert row.margin == pytest.approx(by_id[row.cell_id].margin)
        assert 0.0 <= row.margin <= 1.0


def test_split_is_deterministic_and_out_is_guarded(
    database: dict[str, Any], tmp_path: Path
) -> None:
    out = tmp_path / "set"
    first = import_slides(database["url"], out, seed=3, progress=False)
    before = _manifest(out)
    refused = _run("--database", database["url"], "--out", str(out))
    assert refused.returncode == 2
    assert refused.stderr.strip().splitlines() == [
        f"error: output folder {out} already exists and is not empty; choose another folder, "
        "or pass --overwrite to replace a previous import there"
    ]
    again = import_slides(database["url"], out, seed=3, overwrite=True, progress=False)
    assert first.split_of_slide == again.split_of_slide
    pd.testing.assert_frame_equal(before, _manifest(out))
    _no_leftovers(tmp_path)

    # A folder that is no earlier import is never replaced.
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("mine")
    with pytest.raises(DataError, match=r"holds no manifest\.csv"):
        import_slides(database["url"], other, overwrite=True, progress=False)


def test_a_crash_leaves_no_half_set(
    database: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = []

    def failing(*args: Any, **kwargs: Any) -> Any:
        calls.append(1)
        if len(calls) > 5:
            raise RuntimeError("disk gone")
        return crop_cell(*args, **kwargs)

    monkeypatch.setattr(slides_module, "crop_cell", failing)
    with pytest.raises(RuntimeError, match="disk gone"):
        import_slides(database["url"], tmp_path / "set", progress=False)
    assert list(tmp_path.iterdir()) == []


def test_bad_database_url_is_one_line(tmp_path: Path) -> None:
    done = _run("--database", "no-such-scheme://x", "--out", str(tmp_path / "set"))
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        "error: malformed database URL: Could not parse SQLAlchemy URL from given URL string"
    ]
    assert not (tmp_path / "set").exists()


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("postgresql://rbc:secret@127.0.0.1:9/rbc", "cannot reach database"),
        ("nosuchdialect://host/db", "cannot use database URL"),
        ("sqlite:///{tmp}/missing.sqlite3", "no records database at"),
        ("sqlite:///{tmp}/old.sqlite3", "is at schema revision none"),
        ("sqlite:///{tmp}/empty.sqlite3", "no reviewed red cells to import"),
        ("none", "no records database: the URL is 'none'"),
    ],
)
def test_database_errors_exit_2_with_one_line(
    url: str, message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    url = url.format(tmp=tmp_path)
    if "old" in url:
        open_store(url).close()  # a database never brought to the schema
    if "empty" in url:
        with open_store(url) as store:
            store.upgrade()
    out = tmp_path / "set"
    assert main(["-q", "import-slides", "--database", url, "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and message in err[0], err
    assert "secret" not in err[0]
    assert not out.exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_the_imported_set_trains_a_model(database: dict[str, Any], tmp_path: Path) -> None:
    """End to end on tiny data: reviewed slides -> import-slides -> a trained, exported model
    whose classes are the reviewed labels (the tiny config of tests/conftest.py, one epoch)."""
    from training.classify.engine import train

    out = tmp_path / "set"
    done = _run("--database", database["url"], "--out", str(out), "--all")
    assert done.returncode == 0, done.stderr
    labels = set(_manifest(out)["label"])
    run = train(tiny_config(out, tmp_path / "runs"), progress=False)
    card = json.loads((run / "model" / "model_card.json").read_text())
    assert set(card["classes"]) == labels


def test_each_field_gets_its_colours(database: dict[str, Any], tmp_path: Path) -> None:
    """fields.csv: one row per imported field, its slide and split as the manifest's, and the
    13 numbers of the service's colour descriptor (what `adapt` makes familiar)."""
    from core.classify.calibration import field_colour_descriptor

    out = tmp_path / "set"
    import_slides(database["url"], out, progress=False)
    fields = pd.read_csv(out / "fields.csv")
    manifest = _manifest(out)
    assert sorted(fields["field_id"]) == sorted(manifest["field_id"].unique())
    per_field = manifest.drop_duplicates("field_id").set_index("field_id")
    for row in fields.itertuples():
        assert row.slide_id == per_field.at[row.field_id, "slide_id"]
        assert row.split == per_field.at[row.field_id, "split"]
    assert [c for c in fields.columns if c.startswith("c")] == [f"c{i}" for i in range(13)]
    # The same numbers the service computes on the uploaded image (slide A's first field).
    first = fields.sort_values("field_id").iloc[0]
    image = Image.fromarray(make_smear(seed=0)[0])
    expected = field_colour_descriptor(image)
    assert np.allclose([first[f"c{i}"] for i in range(13)], expected, atol=1e-6)
