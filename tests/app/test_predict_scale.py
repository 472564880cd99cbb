"""POST /predict and /predict/batch with `microns_per_pixel` (issue #12): a single-cell image of
any framing is brought to the training scale around its cell before it is classified; without a
scale the answer says that size classes cannot be judged."""

from __future__ import annotations

import base64
import io
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from app.main import create_app
from core.classify.predictor import Prediction
from core.detect.classical import segment
from core.smear.crop import crop_cell, median_colour
from core.smear.framing import NO_CELL_NOTE, unknown_scale_note
from tests.app.helpers import cell_png, encode, make_settings, wait_ready
from tests.app.test_inputs import assert_error
from tests.synthetic import SMEAR_BACKGROUND, one_cell_image
from training.classify.learner import load_exported

ROOT = Path(__file__).resolve().parents[2]
CHULA = ROOT.parent / "shared" / "datasets" / "chula-rbc-12"
DEFAULT_MODEL = ROOT / "models" / "default"
TRAINING = 0.19


def cell_image(size: tuple[int, int], centre: tuple[int, int], mpp: float) -> bytes:
    """A 7.5-um red cell (39 px across at the training scale) drawn at `mpp`, as a PNG."""
    return encode(Image.fromarray(one_cell_image(size, centre, mpp)))


def post(client: TestClient, data: bytes, query: str = "", **form: str) -> Any:
    return client.post(
        "/predict" + query, files={"file": ("cell.png", data, "image/png")}, data=form
    )


def post_batch(client: TestClient, items: Sequence[tuple[str, bytes]], **form: str) -> Any:
    files = [("files", (n, d, "application/octet-stream")) for n, d in items]
    return client.post("/predict/batch", files=files, data=form)


# An analyser's image: 360x360 at 0.1 um per pixel, the cell off the centre.
ANALYSER = cell_image((360, 360), (220, 150), 0.1)
# The same cell as the training crops hold it: the model's window (24 px for the test model,
# whose synthetic cells are smaller) at 0.19 um per pixel.
TRAINING_CROP = cell_image((24, 24), (12, 12), TRAINING)


def test_without_a_scale_nothing_changes_but_the_note(client: TestClient, model_dir: Path) -> None:
    _, card = load_exported(model_dir)
    body = post(client, cell_png(seed=1)).json()
    assert set(body) == {
        "label",
        "confidence",
        "probabilities",
        "needs_review",
        "unfamiliar",  # familiarity itself is null (no calibration) and left out
        "review_threshold",
        "model",
        "scale",
        "notes",
    }
    # Unknown: microns_per_pixel is null, so left out like every other null of the answer.
    assert body["scale"] == {"known": False, "training_microns_per_pixel": TRAINING}
    assert body["notes"] == [unknown_scale_note(card.crop_window_px or 72)]
    assert f"{card.crop_window_px}-px crop at 0.19 um per pixel" in body["notes"][0]
    assert "macrocyte, microcyte" in body["notes"][0]


def test_with_a_scale_the_image_is_framed(client: TestClient) -> None:
    response = post(client, ANALYSER, microns_per_pixel="0.1")
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["scale"] == {
        "microns_per_pixel": 0.1,
        "known": True,
        "training_microns_per_pixel": TRAINING,
    }
    framing = body["framing"]
    assert framing["cell_found"] is True and framing["at_border"] is False
    assert (framing["x"], framing["y"]) == pytest.approx((220, 150), abs=3)
    assert framing["factor"] == pytest.approx(0.1 / TRAINING)
    assert body["notes"] == []
    assert sum(body["probabilities"].values()) == pytest.approx(1.0, abs=1e-5)


def test_the_scale_may_come_in_the_query_too(client: TestClient) -> None:
    in_form = post(client, ANALYSER, microns_per_pixel="0.1").json()
    in_query = post(client, ANALYSER, "?microns_per_pixel=0.1").json()
    assert in_query["framing"] == in_form["framing"]
    assert in_query["probabilities"] == in_form["probabilities"]
    both = post(client, ANALYSER, "?microns_per_pixel=0.1", microns_per_pixel="0.1")
    assert both.status_code == 200
    clash = post(client, ANALYSER, "?microns_per_pixel=0.2", microns_per_pixel="0.1")
    assert_error(clash, 400, "microns_per_pixel was sent twice")


def test_analyser_image_gets_the_training_crops_answer(client: TestClient) -> None:
    framed = post(client, ANALYSER, microns_per_pixel="0.1").json()
    direct = post(client, TRAINING_CROP).json()
    assert framed["label"] == direct["label"]
    assert framed["probabilities"] == pytest.approx(direct["probabilities"], abs=0.05)


def test_heatmap_over_the_framed_crop(client: TestClient, model_dir: Path) -> None:
    _, card = load_exported(model_dir)
    body = post(client, ANALYSER, "?heatmap=true", microns_per_pixel="0.1").json()
    head, data = body["heatmap"].split(",", 1)
    assert head == "data:image/png;base64"
    with Image.open(io.BytesIO(base64.b64decode(data))) as heatmap:
        assert heatmap.size == (card.input_size, card.input_size)


def test_blank_image_with_a_scale_is_cut_around_the_centre(client: TestClient) -> None:
    body = post(
        client, encode(Image.new("RGB", (200, 120), SMEAR_BACKGROUND)), microns_per_pixel="0.1"
    )
    body = body.json()
    assert body["framing"]["cell_found"] is False
    assert (body["framing"]["x"], body["framing"]["y"]) == (100, 60)
    assert body["notes"] == [NO_CELL_NOTE]


@pytest.mark.parametrize("value", ["0", "-1", "abc"])
@pytest.mark.parametrize("path", ["/predict", "/predict/batch"])
def test_bad_scale_is_refused(client: TestClient, value: str, path: str) -> None:
    # The same 400 and the same words as POST /analyze/smear.
    field = "files" if path.endswith("batch") else "file"
    files = {field: ("cell.png", cell_png(), "image/png")}
    assert_error(
        client.post(path, files=files, data={"microns_per_pixel": value}),
        400,
        "the field 'microns_per_pixel' is invalid",
    )
    assert_error(
        client.post(f"{path}?microns_per_pixel={value}", files=files),
        400,
        "the field 'microns_per_pixel' is invalid",
    )


def test_scale_out_of_range_is_explained(client: TestClient) -> None:
    assert_error(post(client, cell_png(), microns_per_pixel="9"), 400, "less than or equal to 5")
    assert_error(post(client, cell_png(), microns_per_pixel="0.001"), 400, "greater than or equal")
    assert_error(post(client, cell_png(), "?microns_per_pixel=9"), 400, "less than or equal to 5")


def test_an_empty_scale_field_is_no_scale(client: TestClient) -> None:
    body = post(client, cell_png(), microns_per_pixel="").json()
    assert body["scale"]["known"] is False and "framing" not in body


def test_batch_with_a_scale(client: TestClient) -> None:
    blank = encode(Image.new("RGB", (200, 200), SMEAR_BACKGROUND))
    items = [("analyser.png", ANALYSER), ("blank.png", blank), ("bad.png", b"not an image")]
    response = post_batch(client, items, microns_per_pixel="0.1")
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["scale"] == {
        "microns_per_pixel": 0.1,
        "known": True,
        "training_microns_per_pixel": TRAINING,
    }
    first, second, third = body["results"]
    assert first["framing"]["cell_found"] is True and "prediction" in first
    assert second["framing"]["cell_found"] is False and "prediction" in second
    assert "framing" not in third and third["error"]["status"] == 422
    assert len(body["notes"]) == 1 and body["notes"][0].startswith("1 of 2 images")
    # Each cell gets the answer it gets alone.
    alone = post(client, ANALYSER, microns_per_pixel="0.1").json()
    assert first["prediction"]["probabilities"] == pytest.approx(alone["probabilities"], 1e-5)
    assert body["summary"]["classified"] == 2 and body["summary"]["failed"] == 1


def test_batch_without_a_scale(client: TestClient, model_dir: Path) -> None:
    _, card = load_exported(model_dir)
    body = post_batch(client, [("a.png", cell_png(1)), ("b.png", cell_png(2))]).json()
    assert body["scale"] == {"known": False, "training_microns_per_pixel": TRAINING}
    assert body["notes"] == [unknown_scale_note(card.crop_window_px or 72)]
    assert all("framing" not in r for r in body["results"])


@pytest.fixture
def says_macrocyte(client: TestClient, monkeypatch: pytest.MonkeyPatch) -> TestClient:
    """The client whose model calls every cell a confident macrocyte."""
    predictor = client.app.state.model_slot.predictor  # type: ignore[attr-defined]

    def predict(images: Sequence[Image.Image], **_: Any) -> list[Prediction]:
        probabilities = {c: 0.0 for c in predictor.classes} | {"macrocyte": 1.0}
        return [Prediction("macrocyte", 0, 1.0, probabilities, False) for _ in images]

    monkeypatch.setattr(predictor, "predict", predict)
    return client


def test_size_classes_need_review_without_a_scale(says_macrocyte: TestClient) -> None:
    without = post(says_macrocyte, cell_png()).json()
    assert without["label"] == "macrocyte" and without["needs_review"] is True
    framed = post(says_macrocyte, ANALYSER, microns_per_pixel="0.1").json()
    assert framed["needs_review"] is False
    # A cell cut by the image edge: its size cannot be judged either.
    cut = cell_image((200, 200), (100, 4), 0.1)
    at_edge = post(says_macrocyte, cut, microns_per_pixel="0.1").json()
    assert at_edge["framing"]["at_border"] is True and at_edge["needs_review"] is True
    batch = post_batch(says_macrocyte, [("a.png", cell_png()), ("b.png", cell_png(1))]).json()
    assert batch["summary"]["needs_review"] == 2
    assert all(r["prediction"]["needs_review"] for r in batch["results"])


# --- the default model on real cells ----------------------------------------------------------


@pytest.fixture(scope="module")
def real_client() -> Iterator[TestClient]:
    if not DEFAULT_MODEL.is_dir():
        pytest.skip("needs models/default")
    with TestClient(create_app(make_settings(DEFAULT_MODEL))) as c:
        wait_ready(c)
        yield c


def labelled_cells(stem: str, count: int) -> tuple[Image.Image, list[tuple[int, int]]]:
    """A Chula field and the first `count` labelled cells well inside it."""
    field = Image.open(CHULA / "Dataset" / f"{stem}.jpg").convert("RGB")
    points = []
    for line in (CHULA / "Label" / f"{stem}.txt").read_text().splitlines():
        x, y, _ = (int(v) for v in line.split())
        if 100 <= x < field.width - 100 and 100 <= y < field.height - 100:
            points.append((x, y))
    return field, points[:count]


@pytest.mark.skipif(not CHULA.is_dir(), reason="needs ../shared/datasets/chula-rbc-12")
def test_real_cells_in_analyser_framing_keep_their_class(real_client: TestClient) -> None:
    """Real cells of a Chula test field (0.19 um per pixel), each shown as an analyser would:
    190x190 px around it enlarged to 361x361 (0.1 um per pixel). With the scale, each is cut
    where the smear pipeline's segmentation puts the cell, and classified as its 72-px
    training-framing crop is (most labels: resampling twice is not free); without it, squeezed
    into the network's input, far fewer keep their class."""
    card = real_client.get("/model").json()
    stem = Path(card["dataset"]["test_smears"][0]).stem
    field, points = labelled_cells(stem, 12)
    centroids = np.array([(d.x + 0.5, d.y + 0.5) for d in segment(np.asarray(field)).red_cells])
    fill = median_colour(field)
    direct, analyser = [], []
    for i, (x, y) in enumerate(points):
        crop, _ = crop_cell(field, x, y, 72, fill)
        direct.append((f"{i}.png", encode(crop)))
        region = field.crop((x - 95, y - 95, x + 95, y + 95))
        analyser.append((f"{i}.png", encode(region.resize((361, 361), Image.Resampling.LANCZOS))))
    framed = post_batch(real_client, analyser, microns_per_pixel=f"{0.19 * 190 / 361}").json()
    given = post_batch(real_client, direct).json()
    squeezed = post_batch(real_client, analyser).json()
    for (x, y), item in zip(points, framed["results"], strict=True):
        assert item["framing"]["cell_found"], item
        # Back in the field's pixels: where the field's own segmentation puts the cell.
        framing = item["framing"]
        centre = np.array([framing["x"], framing["y"]]) * 190 / 361 + [x - 95, y - 95]
        nearest = centroids[np.argmin(((centroids - [x, y]) ** 2).sum(axis=1))]
        assert np.abs(centre - nearest).max() <= 1.5, (centre, nearest)

    def agree(answer: dict[str, Any]) -> int:
        return sum(
            a["prediction"]["label"] == b["prediction"]["label"]
            for a, b in zip(answer["results"], given["results"], strict=True)
        )

    assert agree(framed) >= 0.75 * len(points), (agree(framed), len(points))
    assert agree(framed) > agree(squeezed) + len(points) // 3
