"""Calibration (core/classify/calibration.py) and its fitting command
(training/classify/calibrate.py): temperature, review threshold, familiarity, the files beside
the weights, and the predictor and smear analysis using them."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from core.classify.calibration import (
    CALIBRATION_ARRAYS,
    CALIBRATION_JSON,
    CALIBRATION_TENSORS,
    Calibration,
    Familiarity,
    FieldColours,
    calibrated_probabilities,
    choose_review_threshold,
    expected_calibration_error,
    field_colour_descriptor,
    field_score,
    fit_temperature,
)
from core.classify.predictor import ModelLoadError, Predictor
from core.modelcard import ModelFileError, sha256_file
from tests.synthetic import make_smear, one_cell_image


def _sampled(n: int, classes: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits and labels drawn from softmax(logits): perfectly calibrated by construction."""
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(n, classes, generator=g) * 3
    labels = torch.multinomial(torch.softmax(logits, dim=1), 1, generator=g).flatten()
    return logits, labels


def test_fit_temperature_undoes_overconfidence() -> None:
    logits, labels = _sampled(20000, 5, seed=0)
    assert fit_temperature(logits, labels) == pytest.approx(1.0, abs=0.05)
    # The same network, twice as sure of itself: T ~ 2 brings it back.
    assert fit_temperature(2 * logits, labels) == pytest.approx(2.0, rel=0.05)
    # Views (V, N, C) are averaged after scaling; one view is the same as none.
    assert fit_temperature((2 * logits)[None], labels) == pytest.approx(2.0, rel=0.05)


def test_expected_calibration_error() -> None:
    logits, labels = _sampled(20000, 5, seed=1)
    conf, pred = torch.softmax(logits, dim=1).max(dim=1)
    assert expected_calibration_error(conf, pred == labels) < 0.02
    sure = torch.ones(100)
    half_right = torch.arange(100) % 2 == 0
    assert expected_calibration_error(sure, half_right) == pytest.approx(0.5)
    over = torch.softmax(3 * logits, dim=1).max(dim=1)
    assert expected_calibration_error(over.values, over.indices == labels) > 0.1


def test_review_threshold_reaches_the_target_with_most_cells() -> None:
    conf = torch.tensor([0.99, 0.95, 0.9, 0.8, 0.7, 0.6, 0.5, 0.4])
    right = torch.tensor([1, 1, 1, 1, 0, 1, 0, 0], dtype=torch.bool)
    # Top 4 are all right; the fifth makes it 0.8, the sixth 5/6.
    assert choose_review_threshold(conf, right, 1.0) == pytest.approx(0.8)
    assert choose_review_threshold(conf, right, 0.8) == pytest.approx(0.6)
    assert choose_review_threshold(conf, torch.zeros(8, dtype=torch.bool), 0.9) == 1.0


def _clusters(seed: int, n: int = 600, dim: int = 16) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % 3
    centres = torch.randn(3, dim, generator=g) * 5
    return centres[labels] + torch.randn(n, dim, generator=g), labels


def test_familiarity_is_about_one_inside_and_large_outside() -> None:
    features, labels = _clusters(0)
    fam = Familiarity.fit(features, labels)
    inside = fam.distance(_clusters(0)[0])  # the same clusters, another draw would do as well
    assert 0.8 < float(np.median(inside)) < 1.2
    far = features + 20
    assert float(fam.distance(far).min()) > 3 * float(inside.max())
    assert fam.distance(torch.empty(0, 16)).size == 0
    # numpy and torch features give the same distances (the service has no torch)
    assert np.array_equal(fam.distance(features.numpy()), fam.distance(features))
    assert field_score([1.0, 5.0, 1.2]) == pytest.approx(1.2)
    assert field_score([]) is None


def _tinted(image: np.ndarray, tint: tuple[float, float, float]) -> Image.Image:
    """The field under another stain or lamp: each channel scaled."""
    return Image.fromarray(np.clip(image * np.asarray(tint), 0, 255).astype(np.uint8))


def test_field_colours_tell_another_stain_from_the_training_fields() -> None:
    # Training fields: the synthetic smear with a little lamp variation (+-3 % per channel).
    rng = np.random.default_rng(0)
    training = [
        _tinted(make_smear(seed=i)[0], tuple(rng.uniform(0.97, 1.03, 3))) for i in range(12)
    ]
    colours = FieldColours.fit(np.stack([field_colour_descriptor(f) for f in training]))
    same_stain = colours.distance(
        field_colour_descriptor(_tinted(make_smear(seed=50)[0], (1, 1, 1)))
    )
    bluish = colours.distance(
        field_colour_descriptor(_tinted(make_smear(seed=50)[0], (0.8, 0.9, 1.1)))
    )
    assert bluish > 3 * same_stain
    # The descriptor hardly depends on the image's size (read at most 320 px across).
    big = Image.fromarray(make_smear(size=(960, 720), seed=3)[0])
    small = big.resize((320, 240), Image.Resampling.BOX)
    assert np.allclose(field_colour_descriptor(big)[:7], field_colour_descriptor(small)[:7], atol=1)
    # A flat field has one region: numbers, not an error.
    flat = field_colour_descriptor(Image.new("RGB", (64, 48), (200, 200, 200)))
    assert np.isfinite(flat).all() and len(flat) == 13
    with pytest.raises(ValueError, match="training fields"):
        FieldColours.fit(np.zeros((3, 13)))


def _calibration(dim: int = 16) -> Calibration:
    features, labels = _clusters(0, dim=dim)
    return Calibration(
        temperature=1.7,
        review_threshold=0.6,
        target_accuracy=0.97,
        cell_threshold=1.5,
        field_threshold=1.3,
        familiarity=Familiarity.fit(features, labels),
        figures={"ece_test_after": 0.02},
    )


def test_save_and_load_round_trip_and_refuse_damage(tmp_path: Path) -> None:
    assert Calibration.load(tmp_path) is None  # an older model: no calibration
    cal = _calibration()
    cal.save(tmp_path)
    back = Calibration.load(tmp_path)
    assert back is not None and back.temperature == 1.7 and back.figures == cal.figures
    assert back.familiarity is not None and cal.familiarity is not None
    assert np.array_equal(back.familiarity.whiten, cal.familiarity.whiten)
    assert back.is_unfamiliar_cell(1.6) and not back.is_unfamiliar_cell(None)
    assert back.is_unfamiliar_field(1.31) and not back.is_unfamiliar_field(1.29)

    tensors = tmp_path / CALIBRATION_ARRAYS
    tensors.write_bytes(tensors.read_bytes() + b"x")
    with pytest.raises(ModelFileError, match="sha256"):
        Calibration.load(tmp_path)
    tensors.unlink()
    with pytest.raises(ModelFileError, match="missing"):
        Calibration.load(tmp_path)
    (tmp_path / CALIBRATION_JSON).write_text("{not json")
    with pytest.raises(ModelFileError, match="not a calibration file"):
        Calibration.load(tmp_path)


def test_an_older_torch_calibration_is_read_and_rewritten(tmp_path: Path) -> None:
    """Models calibrated before the light serving install hold calibration.pt (torch.save):
    read with torch where it is installed; saving again writes calibration.npz and drops it."""
    cal = _calibration()
    cal.save(tmp_path)
    assert cal.familiarity is not None
    state = {
        "means": torch.from_numpy(cal.familiarity.means),
        "whiten": torch.from_numpy(cal.familiarity.whiten),
    }
    torch.save(state, tmp_path / CALIBRATION_TENSORS)
    doc = json.loads((tmp_path / CALIBRATION_JSON).read_text())
    doc["tensors_file"] = CALIBRATION_TENSORS
    doc["tensors_sha256"] = sha256_file(tmp_path / CALIBRATION_TENSORS)
    (tmp_path / CALIBRATION_JSON).write_text(json.dumps(doc))
    (tmp_path / CALIBRATION_ARRAYS).unlink()
    older = Calibration.load(tmp_path)
    assert older is not None and older.familiarity is not None
    assert np.array_equal(older.familiarity.whiten, cal.familiarity.whiten)
    older.save(tmp_path)
    assert not (tmp_path / CALIBRATION_TENSORS).exists()
    assert json.loads((tmp_path / CALIBRATION_JSON).read_text())["tensors_file"] == (
        CALIBRATION_ARRAYS
    )
    again = Calibration.load(tmp_path)
    assert again is not None and again.familiarity is not None
    assert np.array_equal(again.familiarity.means, cal.familiarity.means)


def test_field_colours_are_saved_with_the_calibration(tmp_path: Path) -> None:
    cal = _calibration()
    assert cal.colours is None and cal.summary()["field_colour_threshold"] is None
    cal.save(tmp_path)
    back = Calibration.load(tmp_path)  # saved without colours: loads without them
    assert back is not None and back.colours is None
    assert back.field_colour_score(Image.new("RGB", (8, 8))) is None
    assert not back.is_unfamiliar_colour(None)

    reference = np.random.default_rng(0).normal(size=(20, 13))
    cal.colours, cal.colour_threshold = FieldColours.fit(reference, neighbour=3), 2.5
    cal.save(tmp_path)
    back = Calibration.load(tmp_path)
    assert back is not None and back.colours is not None and back.colour_threshold == 2.5
    assert back.colours.neighbour == 3
    assert np.array_equal(back.colours.reference, cal.colours.reference)
    assert back.is_unfamiliar_colour(2.6) and not back.is_unfamiliar_colour(2.4)
    # Colour tensors without their numbers are a damaged file, not a silent fallback.
    doc = json.loads((tmp_path / CALIBRATION_JSON).read_text())
    del doc["colour_neighbour"]
    (tmp_path / CALIBRATION_JSON).write_text(json.dumps(doc))
    with pytest.raises(ModelFileError, match="field colours"):
        Calibration.load(tmp_path)


@pytest.fixture(scope="module")
def model_copy(trained_run: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    dest = tmp_path_factory.mktemp("plain") / "model"
    shutil.copytree(trained_run / "model", dest)
    return dest


@pytest.fixture(scope="module")
def calibrated(
    model_copy: Path, imported: Path, chula_src: Path, tmp_path_factory: pytest.TempPathFactory
) -> tuple[Path, dict[str, Any], list[str]]:
    from training.classify.calibrate import calibrate

    dest = tmp_path_factory.mktemp("calibrated") / "model"
    shutil.copytree(model_copy, dest)
    lines: list[str] = []
    # Synthetic cells are ~18 px: at 0.41 um/px they are brought to a real cell's ~39 px.
    result = calibrate(
        dest,
        imported,
        chula_src,
        None,
        progress=False,
        say=lines.append,
        chula_microns_per_pixel=0.41,
    )
    return dest, result, lines


def test_calibrate_command_writes_what_the_predictor_uses(
    model_copy: Path, imported: Path, calibrated: tuple[Path, dict[str, Any], list[str]]
) -> None:
    model, result, lines = calibrated
    plain = Predictor.load(model_copy, device="cpu")
    assert plain.calibration is None and plain.review_threshold == 0.7

    assert (model / CALIBRATION_JSON).is_file() and (model / "calibration.md").is_file()
    assert (model / "reliability_test.png").stat().st_size > 0
    figures = result["figures"]
    assert result["temperature"] > 0 and 0 <= result["review_threshold"] <= 1
    assert 0 <= figures["ece_test_after"] <= 1 and 0 <= figures["test_unflagged_share"] <= 1
    assert math.isfinite(result["field_familiarity_threshold"])
    assert math.isfinite(result["field_colour_threshold"])
    assert figures["colour_reference_fields"] > 5
    assert figures["fields"]["chula"]["fields"] > 0
    assert any("temperature" in line for line in lines)

    served = Predictor.load(model, device="cpu")
    assert served.calibration is not None
    assert served.temperature == pytest.approx(result["temperature"])
    assert served.review_threshold == pytest.approx(result["review_threshold"])
    # A setting still wins over the model's threshold.
    assert Predictor.load(model, device="cpu", review_threshold=0.9).review_threshold == 0.9

    # Calibrated probabilities are the plain ones re-scaled: same class, same order.
    images = [Image.open(p).convert("RGB") for p in sorted(imported.rglob("*.png"))[:6]]
    before = plain.predict(images)
    after = served.predict(images)
    for b, a in zip(before, after, strict=True):
        assert a.label == b.label
        assert a.familiarity is not None and a.familiarity > 0
        assert a.needs_review == (a.confidence < served.review_threshold or a.unfamiliar)
    assert all(b.familiarity is None and not b.unfamiliar for b in before)


def test_the_service_reports_familiarity_and_warns_on_an_unfamiliar_field(
    calibrated: tuple[Path, dict[str, Any], list[str]], tmp_path: Path
) -> None:
    from fastapi.testclient import TestClient

    from app.main import create_app
    from tests.app.helpers import calibrated_copy, encode, make_settings, wait_ready
    from tests.app.test_smear import smear_png

    model, result, _ = calibrated
    data, _ = smear_png()
    with TestClient(create_app(make_settings(model))) as client:
        wait_ready(client)
        cell = encode(Image.fromarray(one_cell_image((72, 72), (36, 36), 0.19)))
        body = client.post("/predict", files={"file": ("c.png", cell, "image/png")}).json()
        assert body["model"]["calibrated"] is True
        assert body["review_threshold"] == pytest.approx(result["review_threshold"])
        assert body["familiarity"] > 0 and isinstance(body["unfamiliar"], bool)
        smear = client.post("/analyze/smear", files={"file": ("s.png", data, "image/png")}).json()
    familiar = smear["familiarity"]
    assert familiar["threshold"] == pytest.approx(result["field_familiarity_threshold"])
    assert familiar["score"] > 0
    assert familiar["unfamiliar"] == (
        familiar["score"] > familiar["threshold"]
        or familiar["colour_score"] > familiar["colour_threshold"]
    )
    assert all(c["familiarity"] > 0 for c in smear["cells"])

    # The same field against a threshold above and one below its score (its colours, unlike the
    # synthetic training fields', judged leniently here and on their own below).
    def analysed_with(field_threshold: float, name: str) -> dict[str, Any]:
        copy = calibrated_copy(
            tmp_path / name, model, field_threshold=field_threshold, colour_threshold=1e9
        )
        with TestClient(create_app(make_settings(copy))) as client:
            wait_ready(client)
            answer = client.post("/analyze/smear", files={"file": ("s.png", data, "image/png")})
        return dict(answer.json())

    lenient = analysed_with(2 * familiar["score"], "lenient")
    assert lenient["familiarity"]["unfamiliar"] is False
    assert not any("unlike the images" in n for n in lenient["notes"])
    threshold = familiar["score"] / 2
    strict = analysed_with(threshold, "strict")
    assert strict["familiarity"]["unfamiliar"] is True
    assert any("unlike the images the model learnt from" in n for n in strict["notes"])
    assert strict["familiarity"]["because"] == ["cells"]
    # Every cell as far from the training cells as the threshold is flagged, and every cell
    # called abnormal.
    far = [c for c in strict["cells"] if c["counted"] and c["familiarity"] > threshold]
    assert far and all(c["needs_review"] for c in far)
    assert all(c["needs_review"] for c in strict["cells"] if c["label"] != "normal")

    # The field's colours alone: the cells' threshold lenient, the colours' below its score.
    assert familiar["colour_threshold"] == pytest.approx(result["field_colour_threshold"])
    assert familiar["colour_score"] >= 0
    copy = calibrated_copy(
        tmp_path / "colours",
        model,
        field_threshold=2 * familiar["score"],
        colour_threshold=familiar["colour_score"] / 2 - 1e-6,
    )
    with TestClient(create_app(make_settings(copy))) as client:
        wait_ready(client)
        by_colour = client.post("/analyze/smear", files={"file": ("s.png", data, "image/png")})
    by_colour_body = by_colour.json()
    assert by_colour_body["familiarity"]["unfamiliar"] is True
    assert by_colour_body["familiarity"]["because"] == ["colours"]
    assert any("unlike the images the model learnt from" in n for n in by_colour_body["notes"])


def test_outputs_match_the_network_and_temperature(
    calibrated: tuple[Path, dict[str, Any], list[str]],
) -> None:
    predictor = Predictor.load(calibrated[0], device="cpu")
    batch = torch.rand(5, 3, predictor.preprocess.size, predictor.preprocess.size)
    logits, features = predictor.raw_outputs(batch, tta_views=1)
    with torch.inference_mode():
        direct = predictor.model(batch)
    assert torch.allclose(torch.from_numpy(logits[0]), direct, atol=1e-5)
    probs, _ = predictor.outputs(batch, tta_views=1)
    expected = calibrated_probabilities(direct, predictor.temperature)
    assert torch.allclose(torch.from_numpy(probs), expected, atol=1e-5)
    assert features.shape == (5, 512)


def test_a_damaged_calibration_stops_the_model_from_loading(
    model_copy: Path, tmp_path: Path
) -> None:
    broken = tmp_path / "model"
    shutil.copytree(model_copy, broken)
    if not (broken / CALIBRATION_JSON).exists():
        _calibration(dim=512).save(broken)
    doc = json.loads((broken / CALIBRATION_JSON).read_text())
    doc["tensors_sha256"] = "0" * 64
    (broken / CALIBRATION_JSON).write_text(json.dumps(doc))
    with pytest.raises(ModelLoadError, match="sha256"):
        Predictor.load(broken, device="cpu")
