"""Whole-smear analysis: counting, scale, overlay, bad input, the command line, real smears."""

from __future__ import annotations

import csv
import io
import json
import os
import subprocess
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from core.classify.predictor import Prediction
from core.smear.analysis import (
    TRAINING_MICRONS_PER_PIXEL,
    SmearError,
    SmearTooLarge,
    analyze_smear,
)
from core.smear.result import FieldResult
from tests.synthetic import make_smear

ROOT = Path(__file__).resolve().parents[2]
CHULA = ROOT.parent / "shared" / "datasets" / "chula-rbc-12"
DEFAULT_MODEL = ROOT / "models" / "default"


class FakeClassifier:
    """Calls a crop 'dark' when its centre is darker than its corners, else 'pale'; records
    the crops it was given."""

    review_threshold = 0.7

    def __init__(self) -> None:
        self.classes = ["dark", "pale", "schistocyte"]
        self.crops: list[Image.Image] = []

    def predict(
        self,
        images: Sequence[Image.Image],
        heatmap: bool = False,
        check: Callable[[], None] | None = None,
    ) -> list[Prediction]:
        out = []
        for image in images:
            self.crops.append(image)
            a = np.asarray(image).astype(float)
            c = a.shape[0] // 2
            label = "dark" if a[c - 3 : c + 4, c - 3 : c + 4].mean() < a[:4, :4].mean() else "pale"
            probs = {"dark": 0.0, "pale": 0.0, "schistocyte": 0.2}
            probs[label] = 0.8
            out.append(Prediction(label, self.classes.index(label), 0.8, probs, False))
        return out


def smear_image(**kwargs: object) -> tuple[Image.Image, list[tuple[int, int]]]:
    array, interior, _ = make_smear(**kwargs)  # type: ignore[arg-type]
    return Image.fromarray(array), interior


def test_counts_exclude_cells_cut_by_the_edge() -> None:
    image, interior = smear_image()
    classifier = FakeClassifier()
    analysed = analyze_smear(image, classifier, window=72)
    result = analysed.result
    assert result.cells_found == len(interior) + 1
    assert result.cells_counted == len(interior)
    assert result.cells_at_border == 1
    assert result.other_objects == 1
    assert sum(result.counts.values()) == len(interior)
    assert sum(result.percentages.values()) == pytest.approx(100.0)
    assert result.grades == {"schistocyte": "none"}  # the only graded class of this model
    assert result.grading.source.startswith("ICSH 2015")
    # Crops are 72 px, centred on the cells, as the importer cuts them.
    assert {c.size for c in classifier.crops} == {(72, 72)}
    assert all(c.label == "dark" for c in result.counted)
    # The scale was not given: the result says so.
    assert result.scale.known is False
    assert any("scale unknown" in n for n in result.notes)
    assert set(result.timings_ms) == {"segment", "classify", "overlay", "total"}
    # One shape: what the records keep is the result without its cells.
    summary = result.summary().model_dump()
    assert "cells" not in summary and summary["counts"] == result.counts


def test_window_comes_from_the_model_card() -> None:
    image, _ = smear_image()
    classifier = FakeClassifier()
    classifier.card = type("Card", (), {"crop_window_px": 40})()  # type: ignore[attr-defined]
    analyze_smear(image, classifier)
    assert {c.size for c in classifier.crops} == {(40, 40)}


def test_overlay_outlines_cells_in_their_class_colour() -> None:
    image, _ = smear_image()
    analysed = analyze_smear(image, FakeClassifier(), window=72)
    overlay = np.asarray(Image.open(io.BytesIO(analysed.overlay_png)).convert("RGB"))
    assert overlay.shape == (image.height, image.width, 3)
    dark = tuple(int(analysed.result.class_colours["dark"][i : i + 2], 16) for i in (1, 3, 5))
    # The outline of the cell at (60, 60), radius 19: its left edge is drawn in "dark"'s colour.
    row = overlay[60, 35:50]
    assert any(tuple(px) == dark for px in row)
    # The edge cell is outlined in white; the background is untouched.
    assert (overlay[115, :30] == 255).all(axis=1).any()
    assert (overlay[5, 150] == np.asarray(image)[5, 150]).all()


def test_microns_per_pixel_rescales_to_the_training_scale() -> None:
    image, interior = smear_image()
    # The same field photographed at half the magnification: cells half as big.
    small = image.resize((image.width // 2, image.height // 2), Image.Resampling.LANCZOS)
    classifier = FakeClassifier()
    result = analyze_smear(small, classifier, 2 * TRAINING_MICRONS_PER_PIXEL, window=72).result
    assert len(result.counted) == len(interior)
    # Coordinates come back in the uploaded image's pixels.
    for x, y in interior:
        assert any(np.hypot(c.x - x / 2, c.y - y / 2) < 4 for c in result.counted)
    assert result.scale.model_dump() == {
        "microns_per_pixel": 2 * TRAINING_MICRONS_PER_PIXEL,
        "known": True,
        "estimated": False,
        "training_microns_per_pixel": TRAINING_MICRONS_PER_PIXEL,
    }
    assert not result.notes
    # The classifier saw each cell at its training size (39 px across), not at half of it.
    # (median: the touching pair and the edge cell measure otherwise along this row)
    assert np.median([cell_width(c) for c in classifier.crops]) == pytest.approx(39, abs=3)
    unscaled = FakeClassifier()
    analyze_smear(small, unscaled, window=72)
    assert np.median([cell_width(c) for c in unscaled.crops]) == pytest.approx(20, abs=3)


def cell_width(crop: Image.Image) -> int:
    """Pixels of the crop's middle row darker than halfway between cell and plasma."""
    green = np.asarray(crop)[crop.height // 2, :, 1].astype(int)
    return int((green < (105 + 212) / 2).sum())


def test_bad_smears_get_clear_errors() -> None:
    with pytest.raises(SmearError, match="uniform"):
        analyze_smear(Image.new("RGB", (200, 150), (255, 255, 255)), FakeClassifier())
    with pytest.raises(SmearError, match="contrast"):
        noise = np.random.default_rng(0).integers(120, 124, size=(150, 200, 3)).astype(np.uint8)
        analyze_smear(Image.fromarray(noise), FakeClassifier())
    image, _ = smear_image()
    with pytest.raises(SmearTooLarge, match="at most"):
        analyze_smear(image, FakeClassifier(), 1.9, max_working_pixels=1_000_000)
    with pytest.raises(SmearError, match="outside"):
        analyze_smear(image, FakeClassifier(), 0.0001)
    with pytest.raises(ValueError, match="RGB"):
        analyze_smear(image.convert("L"), FakeClassifier())


def test_a_field_without_red_cells_is_an_answer_not_an_error() -> None:
    array, _, _ = make_smear()
    array[:] = array[5, 150]
    array[100:103, 100:103] = (90, 40, 120)  # specks of debris only
    array[60:63, 200:203] = (90, 40, 120)
    result = analyze_smear(Image.fromarray(array), FakeClassifier(), window=72).result
    assert result.cells == [] and result.other_objects == 0
    assert "no red cells" in " ".join(result.notes)
    assert result.percentages == {"dark": 0.0, "pale": 0.0, "schistocyte": 0.0}


DETECTOR = ROOT / "models" / "detector"


@pytest.mark.skipif(not (DETECTOR / "detector_card.json").is_file(), reason="no shipped detector")
def test_a_nucleus_the_network_missed_is_a_white_cell_and_said_so() -> None:
    # The shipped detector with its network blinded at the synthetic white cell (200, 215): as
    # on a stain it never saw, where it finds nothing there. The nucleus (29 um2 at 0.19 um/px)
    # is then found by its colour alone (add_free_nuclei), reported as a white cell, never
    # counted as a red one, and the answer says how it was found.
    from core.detect.learned import CellDetector

    class Blinded(CellDetector):
        def run(
            self, rgb: np.ndarray, small_red: bool = False
        ) -> list[tuple[int, float, float, float, float, float]]:
            factor = 0.19 / self.card.microns_per_pixel  # the field's pixels to the network's
            return [
                p
                for p in super().run(rgb, small_red)
                if np.hypot(p[1] - 200 * factor, p[2] - 215 * factor) > 20 * factor
            ]

    image, interior = smear_image()
    shipped = CellDetector.load(DETECTOR)
    blinded = Blinded(shipped.network, shipped.card, onnx_path=shipped.onnx_path)
    result = analyze_smear(image, FakeClassifier(), 0.19, window=72, detector=blinded).result
    assert [(w.x, w.y) for w in result.white_cells] == [pytest.approx((200, 215), abs=6)]
    assert result.white_cells[0].confidence == 0.0  # no network found it
    assert sum(c.counted for c in result.cells) == len(interior)
    assert not any(np.hypot(c.x - 200, c.y - 215) < 20 for c in result.cells)
    assert any("found by the nucleus alone" in note for note in result.notes)
    # Without the step the same field has no white cell and no such note.
    blinded.free_nucleus_um2 = None
    without = analyze_smear(image, FakeClassifier(), 0.19, window=72, detector=blinded).result
    assert without.white_cells == []
    assert not any("nucleus alone" in note for note in without.notes)


def run_app(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    """`python -m app ...` as users run it, with RBC_* settings from `env`."""
    environ = {**os.environ, "RBC_DEVICE": "cpu", **env}
    return subprocess.run(
        [sys.executable, "-m", "app", *args], capture_output=True, text=True, cwd=ROOT, env=environ
    )


def test_analyze_smear_command(model_dir: Path, tmp_path: Path) -> None:
    image, interior = smear_image()
    path = tmp_path / "field.png"
    image.save(path)
    (tmp_path / "broken.jpg").write_bytes(b"not a picture")
    out = tmp_path / "out"
    done = run_app(
        "analyze-smear", str(path), str(tmp_path / "broken.jpg"), "--model", str(model_dir),
        "--detector", "none", "--out", str(out),
    )  # fmt: skip
    assert done.returncode == 2, done.stderr
    assert "broken.jpg" in done.stderr and "1 of 2 images could not be analysed" in done.stderr
    assert f"{len(interior)} red cells counted" in done.stdout
    result = json.loads((out / "field.json").read_text())
    assert set(result) == set(FieldResult.model_fields)  # the one shape, as the API's
    assert result["cells_counted"] == len(interior) and len(result["cells"]) == len(interior) + 1
    assert result["detector"] == "classical"
    assert result["white_cells"] == [] and result["platelets"] == []
    rows = list(csv.DictReader(io.StringIO((out / "field_cells.csv").read_text())))
    assert len(rows) == len(interior) + 1 and rows[0]["label"]
    with Image.open(out / "field_overlay.png") as overlay:
        assert overlay.size == image.size


def test_analyze_smear_command_decodes_as_the_service_does(model_dir: Path, tmp_path: Path) -> None:
    """One decoding path (core/imageio.py): the command refuses what the API refuses, in the
    same words."""
    Image.new("RGB", (300, 2), (200, 100, 100)).save(tmp_path / "strip.png")
    frames = [Image.new("L", (40, 40), v) for v in (0, 128)]
    frames[0].save(tmp_path / "pages.tif", save_all=True, append_images=frames[1:])
    done = run_app(
        "analyze-smear", str(tmp_path / "strip.png"), str(tmp_path / "pages.tif"),
        "--model", str(model_dir), "--detector", "none", "--out", str(tmp_path / "out"),
    )  # fmt: skip
    assert done.returncode == 2
    assert "is 300x2 pixels" in done.stderr and "10 times longer" in done.stderr
    assert "holds several frames" in done.stderr


def test_analyze_smear_command_takes_the_service_settings(model_dir: Path, tmp_path: Path) -> None:
    """RBC_* settings apply as in the service: the smear budget refuses the field, from its
    header, with the 413's advice to split it; nothing is written."""
    image, _ = smear_image()
    image.save(tmp_path / "field.png")
    out = tmp_path / "out"
    done = run_app(
        "analyze-smear", str(tmp_path / "field.png"), "--out", str(out),
        RBC_MODEL_DIR=str(model_dir), RBC_DETECTOR_DIR="none", RBC_MAX_SMEAR_PIXELS="20000",
    )  # fmt: skip
    assert done.returncode == 2
    assert "field.png" in done.stderr and "tiles" in done.stderr
    assert not (out / "field.json").exists()


def test_analyze_smear_command_without_a_model(tmp_path: Path) -> None:
    done = run_app("analyze-smear", "x.png", "--model", str(tmp_path / "none"))
    assert done.returncode == 2 and "cannot load the model" in done.stderr


def test_analyze_smear_command_refuses_a_bad_scale() -> None:
    done = run_app("analyze-smear", "x.png", "--microns-per-pixel", "9")
    assert done.returncode == 2 and "outside" in done.stderr


@pytest.mark.skipif(not CHULA.is_dir(), reason="needs ../shared/datasets/chula-rbc-12")
@pytest.mark.skipif(not DEFAULT_MODEL.is_dir(), reason="needs models/default")
def test_real_test_smears_with_the_default_model() -> None:
    from core.classify.predictor import Predictor
    from training.smear import evaluate_smears

    predictor = Predictor.load(DEFAULT_MODEL, device="cpu")
    stems = [Path(s).stem for s in predictor.card.dataset["test_smears"]][:3]
    summary, rows = evaluate_smears(CHULA, stems, predictor, progress=False)
    assert summary["smears"] == len(rows) >= 1
    # Most labelled cells are found (the full figures: docs/smear.md).
    assert summary["recall"] >= 0.85
    for row in rows.values():
        assert sum(row["label_pct"].values()) == pytest.approx(100.0)


TXL = ROOT.parent / "shared" / "datasets" / "txl-pbc"


@pytest.mark.skipif(not (CHULA.is_dir() and TXL.is_dir()), reason="needs ../shared/datasets")
@pytest.mark.skipif(not DEFAULT_MODEL.is_dir(), reason="needs models/default")
def test_the_command_says_when_a_field_is_unlike_the_training_images(tmp_path: Path) -> None:
    """The shipped model and detector on a Chula test field and on another laboratory's field:
    familiarity per field and per cell in the JSON and the CSV; the foreign field judged
    unfamiliar by its colours, with the note, and its abnormal calls marked for review."""
    import pandas as pd

    from core.modelcard import ModelCard

    card = ModelCard.load(DEFAULT_MODEL)
    chula_field = CHULA / "Dataset" / sorted(card.dataset["test_smears"])[0]
    sources = pd.read_csv(TXL / "sources.csv")
    foreign = sources[(sources["source"] == "bccd") & (sources["split"] == "test")]
    foreign_field = TXL / sorted(foreign["image"])[0]

    answers = {}
    for name, field, scale in (("chula", chula_field, ["--microns-per-pixel", "0.19"]),
                               ("foreign", foreign_field, [])):  # fmt: skip
        out = tmp_path / name
        done = run_app("analyze-smear", str(field), "--out", str(out), *scale)
        assert done.returncode == 0, done.stderr
        answers[name] = (done.stdout, json.loads((out / f"{field.stem}.json").read_text()))
        rows = list(csv.DictReader(io.StringIO((out / f"{field.stem}_cells.csv").read_text())))
        assert rows and all(float(r["familiarity"]) > 0 for r in rows)

    stdout, chula = answers["chula"]
    assert chula["familiarity"]["unfamiliar"] is False, chula["familiarity"]
    assert chula["familiarity"]["colour_score"] < chula["familiarity"]["colour_threshold"]
    assert "unlike the images" not in stdout
    stdout, other = answers["foreign"]
    assert other["familiarity"]["unfamiliar"] is True
    assert "colours" in other["familiarity"]["because"]
    assert "unlike the images the model learnt from" in stdout
    counted = [c for c in other["cells"] if c["counted"]]
    assert counted and all(c["needs_review"] for c in counted if c["label"] != "normal")
    assert all(c["familiarity"] > 0 for c in counted)
