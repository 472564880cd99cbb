"""The classifier's engines (core/classify/engines.py): ONNX Runtime gives torch's answers, and
each engine is chosen or refused in plain words."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from core.classify.engines import EngineError, OnnxEngine, TorchEngine, choose_engine
from core.classify.predictor import ModelLoadError, Predictor
from core.modelcard import CARD_FILE, ONNX_FILE, ModelCard, verified_onnx_path


def cells(n: int, seed: int = 0) -> list[Image.Image]:
    """Cell-like crops: a dark disc on a light background, jittered."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        yy, xx = np.mgrid[:72, :72]
        r = rng.uniform(14, 22)
        disc = (xx - 36 + rng.normal(0, 3)) ** 2 + (yy - 36 + rng.normal(0, 3)) ** 2 < r**2
        rgb = np.where(disc[..., None], rng.uniform(90, 160, 3), rng.uniform(200, 240, 3))
        rgb = rgb + rng.normal(0, 6, rgb.shape)
        out.append(Image.fromarray(np.clip(rgb, 0, 255).astype(np.uint8)))
    return out


def test_an_export_carries_a_verified_onnx_graph(model_dir: Path) -> None:
    card = ModelCard.load(model_dir)
    assert card.onnx_file == ONNX_FILE and card.onnx_sha256
    assert card.metrics_engine and card.metrics_engine.startswith("torch ")
    assert verified_onnx_path(model_dir) == model_dir / ONNX_FILE


@pytest.mark.parametrize("views", [1, 8])
def test_onnx_runtime_gives_torchs_answers(model_dir: Path, views: int) -> None:
    onnx = Predictor.load(model_dir, device="cpu", engine="onnx", tta_views=views)
    torch_ = Predictor.load(model_dir, device="cpu", engine="torch", tta_views=views)
    assert isinstance(onnx.engine, OnnxEngine) and isinstance(torch_.engine, TorchEngine)
    crops = cells(40)
    a, b = onnx.predict(crops), torch_.predict(crops)
    assert [p.label for p in a] == [p.label for p in b]
    gap = max(
        abs(p.probabilities[c] - q.probabilities[c])
        for p, q in zip(a, b, strict=True)
        for c in p.probabilities
    )
    assert gap < 1e-4
    batch = np.stack([onnx.preprocess(c) for c in crops])
    fa, fb = onnx.outputs(batch)[1], torch_.outputs(batch)[1]
    np.testing.assert_allclose(fa, fb, atol=1e-4, rtol=1e-4)  # what familiarity measures


def test_auto_takes_onnx_and_falls_back_to_torch(model_dir: Path, tmp_path: Path) -> None:
    assert Predictor.load(model_dir, device="cpu").engine.name.startswith("onnxruntime ")
    older = tmp_path / "model"
    shutil.copytree(model_dir, older)
    raw = json.loads((older / CARD_FILE).read_text())
    raw["onnx_file"] = raw["onnx_sha256"] = None  # a model exported before model.onnx
    (older / CARD_FILE).write_text(json.dumps(raw))
    assert Predictor.load(older, device="cpu").engine.name.startswith("torch ")
    with pytest.raises(ModelLoadError, match="export-onnx"):
        Predictor.load(older, device="cpu", engine="onnx")


def test_an_altered_onnx_graph_is_refused(model_dir: Path, tmp_path: Path) -> None:
    altered = tmp_path / "model"
    shutil.copytree(model_dir, altered)
    with open(altered / ONNX_FILE, "ab") as f:
        f.write(b"\0")
    with pytest.raises(ModelLoadError, match="sha256"):
        Predictor.load(altered, device="cpu")


def test_an_unknown_engine_or_onnx_on_a_gpu_is_refused(model_dir: Path) -> None:
    onnx_path = verified_onnx_path(model_dir)
    model = Predictor.load(model_dir, device="cpu", engine="torch").model

    def network() -> torch.nn.Sequential:
        return model

    with pytest.raises(EngineError, match="not one of"):
        choose_engine("tensorrt", network, "cpu", onnx_path)
    with pytest.raises(EngineError, match="CPU only"):
        choose_engine("onnx", network, "cuda", onnx_path)
    # auto on a GPU: torch (no tensor is moved here: the engine is only chosen)
    assert isinstance(choose_engine("auto", network, "cuda", onnx_path), TorchEngine)


def test_a_served_network_leaves_numpy_one_blas_thread(model_dir: Path) -> None:
    """numpy's BLAS threads spin after each small product and took the cores from ONNX Runtime's
    pool (core/blas.py): once a serving engine exists, every BLAS library runs one thread, and a
    product still gives the same numbers."""
    from threadpoolctl import threadpool_info

    a = np.random.default_rng(0).normal(size=(64, 512)).astype(np.float32)
    before = a @ a.T
    choose_engine(
        "onnx",
        lambda: pytest.fail("the torch network was loaded"),
        "cpu",
        verified_onnx_path(model_dir),
    )
    blas = [pool for pool in threadpool_info() if pool["user_api"] == "blas"]
    assert blas and all(pool["num_threads"] == 1 for pool in blas)
    np.testing.assert_allclose(a @ a.T, before, rtol=1e-5, atol=1e-4)
