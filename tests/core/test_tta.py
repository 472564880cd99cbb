"""Test-time augmentation: the 8 views are the 8 distinct symmetries of the square, the
probabilities are their mean, and evaluation, publishing and the service all use them alike."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from core.classify.tta import TTA_VIEWS, dihedral_view, tta_probabilities, view_indices
from training.classify.export import ExportError, publish_run


def test_the_eight_views_are_distinct_symmetries_of_the_square() -> None:
    batch = torch.arange(2 * 3 * 4 * 4, dtype=torch.float32).reshape(2, 3, 4, 4)
    views = [dihedral_view(batch, i) for i in range(8)]
    assert all(v.shape == batch.shape for v in views)
    assert torch.equal(views[0], batch)
    # All 8 differ from each other on an asymmetric image, and each is a pixel permutation.
    flat = {tuple(v[0, 0].flatten().tolist()) for v in views}
    assert len(flat) == 8
    for v in views:
        assert torch.equal(v.flatten(2).sort(dim=2).values, batch.flatten(2).sort(dim=2).values)
    assert torch.equal(views[1], batch.flip(3))
    assert torch.equal(views[2], torch.rot90(batch, 1, dims=(2, 3)))
    # The service turns numpy batches: the same views, pixel for pixel.
    for i in range(8):
        assert np.array_equal(dihedral_view(batch.numpy(), i), views[i].numpy())


@pytest.mark.parametrize("views,expected", [(1, [0]), (2, [0, 1]), (4, [0, 2, 4, 6])])
def test_view_subsets(views: int, expected: list[int]) -> None:
    assert view_indices(views) == expected
    assert view_indices(8) == list(range(8))
    assert set(TTA_VIEWS) == {1, 2, 4, 8}


@pytest.mark.parametrize("bad", [0, 3, 16, -1])
def test_unsupported_view_counts_are_refused(bad: int) -> None:
    with pytest.raises(ValueError, match="one of"):
        view_indices(bad)


def test_probabilities_are_the_mean_over_views() -> None:
    torch.manual_seed(0)
    weights = torch.randn(3 * 5 * 5, 4)

    def logits_of(x: torch.Tensor) -> torch.Tensor:
        return x.flatten(1) @ weights  # depends on orientation

    batch = torch.randn(6, 3, 5, 5)
    for views in TTA_VIEWS:
        got = tta_probabilities(logits_of, batch, views)
        expected = torch.stack(
            [torch.softmax(logits_of(dihedral_view(batch, i)), 1) for i in view_indices(views)]
        ).mean(0)
        assert torch.allclose(got, expected, atol=1e-6)
        assert torch.allclose(got.sum(1), torch.ones(6), atol=1e-5)
    # A network that cannot see orientation gets nothing from extra views.
    pooled = tta_probabilities(lambda x: x.mean(dim=(2, 3)), batch, 8)
    assert torch.allclose(pooled, torch.softmax(batch.mean(dim=(2, 3)), 1), atol=1e-6)


# --- Through the pipeline: evaluation, publishing and the service's predictor -----------------


def _test_items(imported: Path) -> pd.DataFrame:
    manifest = pd.read_csv(imported / "manifest.csv")
    return manifest[manifest["split"] == "test"].assign(
        path=lambda d: str(imported) + "/" + d["path"]
    )


def test_learner_and_service_agree_with_views(trained_run: Path, imported: Path) -> None:
    from core.classify.predictor import Predictor
    from training.classify.evaluate import predict
    from training.classify.learner import load_exported

    learn, _ = load_exported(trained_run / "model")
    items = _test_items(imported)
    one, four = predict(learn, items), predict(learn, items, 4)
    assert not np.allclose(one.probs, four.probs)  # the views do change the average
    predictor = Predictor.load(trained_run / "model", device="cpu", tta_views=4)
    assert predictor.tta_views == 4
    images = [Image.open(p).convert("RGB") for p in items["path"]]
    served = predictor.forward(predictor.preprocess.batch(images))
    assert np.allclose(served, four.probs, atol=1e-5)
    assert np.allclose(four.losses, -np.log(four.probs[np.arange(len(items)), four.targets]))


def test_publish_with_views_measures_again_and_serves_them(
    trained_run: Path, imported: Path, tmp_path: Path
) -> None:
    from core.classify.predictor import ModelLoadError, Predictor
    from core.modelcard import ModelCard
    from training.classify.evaluate import evaluate

    dest = publish_run(trained_run, tmp_path / "models", "viewed", tta_views=4)
    card = ModelCard.load(dest)
    assert card.tta_views == 4 and card.metrics["tta_views"] == 4
    assert card.metrics["split"] == "test" and "per_class" in card.metrics
    assert "Served with 4 test-time views" in (dest / "report.md").read_text()
    # evaluate and the service take the card's views unless told otherwise.
    result = evaluate(dest, imported, progress=False)
    assert result["tta_views"] == 4 and result["accuracy"] == card.metrics["accuracy"]
    assert evaluate(dest, imported, progress=False, tta_views=1)["tta_views"] == 1
    assert Predictor.load(dest, device="cpu").tta_views == 4
    assert Predictor.load(dest, device="cpu", tta_views=1).tta_views == 1
    with pytest.raises(ModelLoadError, match="one of"):
        Predictor.load(dest, device="cpu", tta_views=3)


def test_publish_with_views_refuses_missing_or_changed_data(
    trained_run: Path, imported: Path, tmp_path: Path
) -> None:
    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    card_path = run / "model" / "model_card.json"
    card = json.loads(card_path.read_text())
    changed = tmp_path / "changed"
    shutil.copytree(imported, changed)
    first = next(p for p in sorted(changed.rglob("*.png")))
    Image.open(first).rotate(90).save(first)
    for source, message in [(tmp_path / "gone", "not there"), (changed, "fingerprint")]:
        card["dataset"]["source"] = str(source)
        card_path.write_text(json.dumps(card))
        with pytest.raises(ExportError, match=message):
            publish_run(run, tmp_path / "models", "viewed", tta_views=4)
        models = tmp_path / "models"
        assert not models.exists() or not list(models.iterdir())  # nothing half-published


def test_service_setting_overrides_the_card(model_dir: Path) -> None:
    from fastapi.testclient import TestClient

    from app.main import create_app
    from tests.app.helpers import make_settings, wait_ready

    with TestClient(create_app(make_settings(model_dir, tta_views=2))) as client:
        wait_ready(client)
        body = client.get("/model").json()
        assert body["served_tta_views"] == 2 and body["tta_views"] == 1  # the card's own
    with pytest.raises(ValueError, match="tta_views"):
        make_settings(model_dir, tta_views=3)


def test_service_reads_the_views_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    from app.config import Settings

    monkeypatch.setenv("RBC_TTA_VIEWS", "4")
    assert Settings().tta_views == 4
    monkeypatch.setenv("RBC_TTA_VIEWS", "3")
    with pytest.raises(ValueError, match="one of"):
        Settings()
