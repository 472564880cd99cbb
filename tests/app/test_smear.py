"""POST /analyze/smear: a whole field in, every cell, counts, grades and an overlay out."""

from __future__ import annotations

import base64
import io
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from app.main import create_app
from core.smear.result import FieldCell, FieldResult
from tests.app.helpers import encode, make_settings, wait_ready
from tests.app.test_inputs import assert_error, png_header_only
from tests.synthetic import make_smear

ROOT = Path(__file__).resolve().parents[2]
CHULA = ROOT.parent / "shared" / "datasets" / "chula-rbc-12"
DEFAULT_MODEL = ROOT / "models" / "default"


def smear_png(**kwargs: object) -> tuple[bytes, int]:
    array, interior, _ = make_smear(**kwargs)  # type: ignore[arg-type]
    return encode(Image.fromarray(array)), len(interior)


def post(client: TestClient, data: bytes, query: str = "") -> object:
    return client.post(
        "/analyze/smear" + query, files={"file": ("smear.png", data, "application/octet-stream")}
    )


def decode_data_url(url: str) -> Image.Image:
    head, data = url.split(",", 1)
    assert head == "data:image/png;base64"
    return Image.open(io.BytesIO(base64.b64decode(data)))


def test_smear_answer(client: TestClient) -> None:
    data, n_interior = smear_png()
    response = post(client, data, "?crops=true")
    assert response.status_code == 200, response.text  # type: ignore[attr-defined]
    body = response.json()  # type: ignore[attr-defined]
    assert body["cells_counted"] == n_interior and body["cells_at_border"] == 1
    assert body["other_objects"] == 1
    assert sum(body["counts"].values()) == n_interior
    assert sum(body["percentages"].values()) == pytest.approx(100.0)
    assert set(body["counts"]) == set(body["class_colours"])
    assert body["scale"]["known"] is False and body["notes"]
    assert body["grading"]["source"].startswith("ICSH")
    assert len(body["cells"]) == n_interior + 1
    # One shape: the answer is core's FieldResult (every key of it, cells with their crops) and
    # what the service adds.
    served = {"overlay", "review_threshold", "model", "detector_weights_sha256"}
    assert set(body) - served == set(FieldResult.model_fields)
    cell_keys = set(FieldCell.model_fields)  # a null familiarity is left out (no calibration)
    assert cell_keys - {"familiarity"} <= set(body["cells"][0]) <= cell_keys | {"crop"}
    for cell in body["cells"]:
        assert cell["counted"] == (not cell["at_border"])
        assert sum(cell["probabilities"].values()) == pytest.approx(1.0, abs=1e-4)
        assert cell["label"] in body["counts"]
        x0, y0, x1, y1 = cell["box"]
        assert x0 <= cell["x"] <= x1 and y0 <= cell["y"] <= y1
        crop = decode_data_url(cell["crop"])
        assert crop.size[0] == crop.size[1]  # the model card's crop window
    with decode_data_url(body["overlay"]) as overlay:
        assert overlay.size == (320, 240)
    assert body["model"]["weights_sha256"]
    # Crops only when asked: they are most of the answer's size.
    plain = post(client, data).json()  # type: ignore[attr-defined]
    assert all("crop" not in c for c in plain["cells"])
    assert [c["label"] for c in plain["cells"]] == [c["label"] for c in body["cells"]]


def test_scale_parameter(client: TestClient) -> None:
    array, interior, _ = make_smear()
    image = Image.fromarray(array)
    half = image.resize((160, 120), Image.Resampling.LANCZOS)
    body = post(client, encode(half), "?microns_per_pixel=0.38").json()  # type: ignore[attr-defined]
    assert body["cells_counted"] == len(interior)
    assert body["scale"] == {
        "microns_per_pixel": 0.38,
        "known": True,
        "estimated": False,
        "training_microns_per_pixel": 0.19,
    }
    assert body["notes"] == []


@pytest.mark.parametrize("value", ["0", "-1", "abc"])
def test_bad_scale_is_refused(client: TestClient, value: str) -> None:
    data, _ = smear_png()
    response = post(client, data, f"?microns_per_pixel={value}")
    assert_error(response, 400, "'microns_per_pixel' is invalid")


def test_scale_out_of_range_is_explained(client: TestClient) -> None:
    # The range is the schema's (OpenAPI says 0.01-5), so it is checked with the other fields.
    data, _ = smear_png()
    assert_error(post(client, data, "?microns_per_pixel=9"), 400, "less than or equal to 5")
    assert_error(post(client, data, "?microns_per_pixel=0.001"), 400, "greater than or equal")


@pytest.mark.parametrize(
    ("colour", "words"),
    [((255, 255, 255), "uniform"), ((0, 0, 0), "uniform"), ((128, 100, 120), "uniform")],
)
def test_blank_and_saturated_images(
    client: TestClient, colour: tuple[int, int, int], words: str
) -> None:
    data = encode(Image.new("RGB", (320, 240), colour))
    assert_error(post(client, data), 422, words)


def test_noise_and_empty_and_not_an_image(client: TestClient) -> None:
    noise = np.random.default_rng(0).integers(120, 124, size=(240, 320, 3)).astype(np.uint8)
    assert_error(post(client, encode(Image.fromarray(noise))), 422, "contrast")
    assert_error(post(client, b""), 422, "empty")
    assert_error(post(client, b"GIF89a not really"), 422, "not an image")
    truncated, _ = smear_png()
    assert_error(post(client, truncated[: len(truncated) // 2]), 422)


def test_huge_images(client: TestClient) -> None:
    assert_error(post(client, png_header_only(50_000, 50_000)), 413, "pixels")
    # Fine as sent, too large once brought to the training scale.
    data, _ = smear_png()
    assert_error(post(client, data, "?microns_per_pixel=4.5"), 413, "at most")


@pytest.fixture(scope="module")
def real_client() -> Iterator[TestClient]:
    if not DEFAULT_MODEL.is_dir():
        pytest.skip("needs models/default")
    with TestClient(create_app(make_settings(DEFAULT_MODEL))) as c:
        wait_ready(c)
        yield c


@pytest.mark.skipif(not CHULA.is_dir(), reason="needs ../shared/datasets/chula-rbc-12")
def test_real_smear_with_the_default_model(real_client: TestClient) -> None:
    card = real_client.get("/model").json()
    stem = Path(card["dataset"]["test_smears"][0]).stem
    data = (CHULA / "Dataset" / f"{stem}.jpg").read_bytes()
    labels = (CHULA / "Label" / f"{stem}.txt").read_text().split("\n")
    body = post(real_client, data).json()  # type: ignore[attr-defined]
    assert body["cells_found"] >= 0.8 * len([line for line in labels if line.strip()])
    assert set(body["grades"]) <= set(body["counts"])
    assert body["timings_ms"]["total"] > 0
