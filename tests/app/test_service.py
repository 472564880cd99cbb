"""The service's skeleton: start-up checks, health, readiness, model card, one-cell prediction."""

from __future__ import annotations

import base64
import io
import json
import os
import shutil
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from fastapi.testclient import TestClient
from PIL import Image

from app.config import Settings
from app.main import create_app
from app.state import ModelSlot
from core.modelcard import CARD_FILE, ONNX_FILE, STATE_FILE
from tests.app.helpers import ROOT, cell_png, make_settings, wait_ready
from training.classify.learner import load_exported


def test_healthz_answers_at_once(client: TestClient) -> None:
    started = time.perf_counter()
    response = client.get("/healthz")
    assert response.status_code == 200 and response.json() == {"status": "ok"}
    assert time.perf_counter() - started < 0.5


def test_readyz_once_loaded(client: TestClient, model_dir: Path) -> None:
    body = client.get("/readyz").json()
    assert body["status"] == "ready" and body["model"] == model_dir.parent.name


def test_model_card(client: TestClient, model_dir: Path) -> None:
    _, card = load_exported(model_dir)
    body = client.get("/model").json()
    assert body["classes"] == card.classes
    assert body["weights_sha256"] == card.weights_sha256
    assert body["state_file"] == STATE_FILE and body["state_sha256"] == card.state_sha256
    assert body["input_size"] == card.input_size
    # ONNX Runtime classifies on a CPU; the card says torch measured its figures.
    assert body["served_engine"].startswith("onnxruntime ") and body["onnx_file"] == ONNX_FILE
    assert body["metrics_engine"].startswith("torch ")


def test_predict_one_cell(client: TestClient, model_dir: Path, tmp_path: Path) -> None:
    learn, card = load_exported(model_dir)
    data = cell_png(seed=1)
    response = client.post("/predict", files={"file": ("cell.png", data, "image/png")})
    assert response.status_code == 200, response.text
    body = response.json()
    probs = body["probabilities"]
    assert list(probs) == card.classes
    assert sum(probs.values()) == pytest.approx(1.0, abs=1e-5)
    assert body["label"] == max(probs, key=probs.__getitem__)
    assert body["confidence"] == pytest.approx(probs[body["label"]])
    assert body["needs_review"] == (body["confidence"] < body["review_threshold"])
    assert body["model"]["weights_sha256"] == card.state_sha256  # the file loaded
    assert "heatmap" not in body
    # The same probabilities as the learner's own (slow, stateful) predict.
    path = tmp_path / "cell.png"
    path.write_bytes(data)
    _, _, expected = learn.predict(path)
    assert torch.allclose(torch.tensor(list(probs.values())), expected.float(), atol=1e-5)


def test_predict_with_heatmap(client: TestClient, model_dir: Path) -> None:
    _, card = load_exported(model_dir)
    response = client.post(
        "/predict?heatmap=true", files={"file": ("cell.png", cell_png(2), "image/png")}
    )
    assert response.status_code == 200, response.text
    url = response.json()["heatmap"]
    assert url.startswith("data:image/png;base64,")
    image = Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1])))
    assert image.size == (card.input_size, card.input_size) and image.mode == "RGB"


def test_review_threshold_from_settings(model_dir: Path) -> None:
    with TestClient(create_app(make_settings(model_dir, review_threshold=1.0))) as c:
        wait_ready(c)
        body = c.post("/predict", files={"file": ("a.png", cell_png(), "image/png")}).json()
    assert body["needs_review"] is True and body["review_threshold"] == 1.0


def test_missing_model_dir_stops_the_start(tmp_path: Path) -> None:
    app = create_app(make_settings(tmp_path / "absent"))
    with pytest.raises(RuntimeError, match=r"does not exist.*RBC_MODEL_DIR"), TestClient(app):
        pass


def test_hash_mismatch_stops_the_start_before_loading(
    model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The service loads model_state.pt (not export.pkl): that is the file whose hash must match.
    altered = tmp_path / "model"
    shutil.copytree(model_dir, altered)
    with open(altered / STATE_FILE, "ab") as fh:
        fh.write(b"\0")

    def no_loading(*args: object, **kwargs: object) -> None:
        raise AssertionError("an unverified file was loaded")

    monkeypatch.setattr("fastai.learner.load_learner", no_loading)
    monkeypatch.setattr("torch.load", no_loading)
    app = create_app(make_settings(altered))
    with pytest.raises(RuntimeError, match="sha256"), TestClient(app):
        pass


def test_card_without_state_file_stops_the_start(model_dir: Path, tmp_path: Path) -> None:
    # A model exported before model_state.pt existed: the message says how to fix it.
    old = tmp_path / "model"
    shutil.copytree(model_dir, old)
    (old / STATE_FILE).unlink()
    raw = json.loads((old / CARD_FILE).read_text())
    del raw["state_file"], raw["state_sha256"]
    (old / CARD_FILE).write_text(json.dumps(raw))
    app = create_app(make_settings(old))
    with pytest.raises(RuntimeError, match="python -m training export"), TestClient(app):
        pass


def test_a_model_trained_at_another_scale_stops_the_start(model_dir: Path, tmp_path: Path) -> None:
    # The card states its training scale; the service cuts cells at one scale and says so.
    other = tmp_path / "model"
    shutil.copytree(model_dir, other)
    raw = json.loads((other / CARD_FILE).read_text())
    assert raw["microns_per_pixel"] == 0.19  # an export states it
    raw["microns_per_pixel"] = 0.38
    (other / CARD_FILE).write_text(json.dumps(raw))
    app = create_app(make_settings(other))
    with pytest.raises(RuntimeError, match=r"0\.38 um per pixel"), TestClient(app):
        pass


def test_serves_without_the_pickled_learner(model_dir: Path, tmp_path: Path) -> None:
    # The card, model_state.pt and model.onnx are all the service needs; export.pkl is never
    # read.
    bare = tmp_path / "model"
    bare.mkdir()
    for name in (CARD_FILE, STATE_FILE, ONNX_FILE):
        shutil.copy2(model_dir / name, bare / name)
    with TestClient(create_app(make_settings(bare))) as c:
        wait_ready(c)
        response = c.post("/predict", files={"file": ("a.png", cell_png(4), "image/png")})
    assert response.status_code == 200, response.text


def test_start_up_never_imports_fastai(model_dir: Path) -> None:
    # In a fresh interpreter (this one has imported fastai for other tests).
    script = textwrap.dedent(
        """
        import json, sys
        from pathlib import Path
        from fastapi.testclient import TestClient
        from app.config import Settings
        from app.main import create_app

        settings = Settings(model_dir=Path(sys.argv[1]), device="cpu", api_token=None)
        app = create_app(settings)
        with TestClient(app) as client:
            slot = app.state.model_slot
            assert slot.loaded.wait(90) and slot.predictor is not None, slot.error
            assert client.get("/readyz").status_code == 200
        print(json.dumps(sorted(m for m in sys.modules if m.split(".")[0] == "fastai")))
        """
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("RBC_")}
    done = subprocess.run(
        [sys.executable, "-c", script, str(model_dir)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert json.loads(done.stdout.splitlines()[-1]) == []


def test_not_ready_while_loading(model_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    release = threading.Event()
    original = ModelSlot.load

    def slow_load(self: ModelSlot, settings: Settings) -> None:
        release.wait(30)
        original(self, settings)

    monkeypatch.setattr(ModelSlot, "load", slow_load)
    with TestClient(create_app(make_settings(model_dir))) as c:
        assert c.get("/healthz").status_code == 200
        response = c.get("/readyz")
        assert response.status_code == 503 and "loading" in response.json()["detail"]
        response = c.post("/predict", files={"file": ("a.png", cell_png(), "image/png")})
        assert response.status_code == 503 and "loading" in response.json()["detail"]
        release.set()
        wait_ready(c)
        assert c.get("/readyz").status_code == 200


def test_load_failure_keeps_readyz_503(model_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(*args: object, **kwargs: object) -> None:
        from core.classify.predictor import ModelLoadError

        raise ModelLoadError("classes differ")

    monkeypatch.setattr("core.classify.predictor.Predictor.load", broken)
    with TestClient(create_app(make_settings(model_dir))) as c:
        c.app.state.model_slot.loaded.wait(30)  # type: ignore[attr-defined]
        response = c.get("/readyz")
    assert response.status_code == 503
    assert response.json() == {"detail": "the model failed to load: classes differ"}


class TestToken:
    @pytest.fixture(scope="class")
    def guarded(self, model_dir: Path) -> Iterator[TestClient]:
        with TestClient(create_app(make_settings(model_dir, api_token="s3cret"))) as c:
            wait_ready(c)
            yield c

    def test_no_token_is_401(self, guarded: TestClient) -> None:
        for response in (
            guarded.post("/predict", files={"file": ("a.png", cell_png(), "image/png")}),
            guarded.get("/model"),
            guarded.post("/predict/batch", files=[("files", ("a.png", cell_png(), "image/png"))]),
        ):
            assert response.status_code == 401
            assert "token" in response.json()["detail"]
            assert response.headers["www-authenticate"] == "Bearer"

    def test_wrong_token_is_401(self, guarded: TestClient) -> None:
        response = guarded.get("/model", headers={"Authorization": "Bearer nope"})
        assert response.status_code == 401 and response.json() == {
            "detail": "the token is not valid"
        }

    def test_right_token(self, guarded: TestClient) -> None:
        headers = {"Authorization": "Bearer s3cret"}
        assert guarded.get("/model", headers=headers).status_code == 200
        response = guarded.post(
            "/predict", headers=headers, files={"file": ("a.png", cell_png(), "image/png")}
        )
        assert response.status_code == 200

    def test_health_and_page_need_no_token(self, guarded: TestClient) -> None:
        assert guarded.get("/healthz").status_code == 200
        assert guarded.get("/readyz").status_code == 200
        assert guarded.get("/").status_code == 200


def test_settings_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RBC_ACCEPTED_FORMATS", "png, jpeg")
    monkeypatch.setenv("RBC_CORS_ORIGINS", "https://lab.example.org")
    monkeypatch.setenv("RBC_MAX_FILES", "7")
    monkeypatch.setenv("RBC_API_TOKEN", "")
    settings = Settings()
    assert settings.accepted_formats == ("PNG", "JPEG")
    assert settings.cors_origins == ("https://lab.example.org",)
    assert settings.max_files == 7 and settings.api_token is None


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("RBC_CORS_ORIGINS", "*"),
        ("RBC_DEVICE", "tpu"),
        ("RBC_REVIEW_THRESHOLD", "1.5"),
        ("RBC_MAX_FILES", "0"),
    ],
)
def test_bad_settings_fail_fast(monkeypatch: pytest.MonkeyPatch, name: str, value: str) -> None:
    monkeypatch.setenv(name, value)
    with pytest.raises(ValueError):
        Settings()


def test_cors_only_for_listed_origins(model_dir: Path) -> None:
    settings = make_settings(model_dir, cors_origins=("https://lab.example.org",))
    with TestClient(create_app(settings)) as c:
        ok = c.get("/healthz", headers={"Origin": "https://lab.example.org"})
        other = c.get("/healthz", headers={"Origin": "https://evil.example.com"})
    assert ok.headers["access-control-allow-origin"] == "https://lab.example.org"
    assert "access-control-allow-origin" not in other.headers


def test_a_token_protected_api_answers_its_origins_preflights(model_dir: Path) -> None:
    # A preflight carries no credentials (the CORS standard): refused, no page of an allowed
    # origin could call the API with its token. The call itself still needs the token.
    settings = make_settings(
        model_dir, cors_origins=("https://lab.example.org",), api_token="secret"
    )
    preflight = {
        "Origin": "https://lab.example.org",
        "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "authorization",
    }
    with TestClient(create_app(settings)) as c:
        asked = c.options("/predict", headers=preflight)
        call = c.post("/predict", headers={"Origin": "https://lab.example.org"})
    assert asked.status_code == 200, asked.text
    assert asked.headers["access-control-allow-origin"] == "https://lab.example.org"
    assert call.status_code == 401
