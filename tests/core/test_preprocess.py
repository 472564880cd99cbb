"""core.classify.preprocess feeds the network exactly what the exported learner's test pipeline
does."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from core.classify.preprocess import Preprocessor, pad_resize
from core.modelcard import ModelCard
from training.classify.learner import load_exported

SIZES = [(24, 24), (37, 21), (19, 44), (32, 32), (100, 61), (8, 9), (5, 200)]


@pytest.fixture(scope="module")
def exported(trained_run: Path) -> tuple[object, ModelCard]:
    return load_exported(trained_run / "model")


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    folder = tmp_path_factory.mktemp("pre")
    rng = np.random.default_rng(3)
    paths = []
    for w, h in SIZES:
        arr = rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8)
        arr[h // 4 : h // 2, w // 4 : w // 2] = (150, 40, 60)
        path = folder / f"{w}x{h}.png"
        Image.fromarray(arr).save(path)
        paths.append(path)
    return paths


def test_pad_resize_pads_with_the_border() -> None:
    arr = np.zeros((10, 20, 3), dtype=np.uint8)
    arr[0, :] = 200  # top row
    arr[-1, :] = 50  # bottom row
    out = np.asarray(pad_resize(Image.fromarray(arr), 20))
    assert out.shape == (20, 20, 3)
    assert (out[:3] == 200).all() and (out[-3:] == 50).all()


@pytest.mark.parametrize("index", range(len(SIZES)))
def test_tensor_equals_the_learners_test_pipeline(
    exported: tuple[object, ModelCard], images: list[Path], index: int
) -> None:
    learn, card = exported
    path = images[index]
    expected = learn.dls.test_dl([path]).one_batch()[0][0].cpu()  # type: ignore[attr-defined]
    ours = torch.from_numpy(Preprocessor.from_card(card)(Image.open(path)))
    assert ours.shape == expected.shape == (3, card.input_size, card.input_size)
    assert torch.allclose(ours, expected, atol=1e-5), (ours - expected).abs().max()


def test_batched_predictions_equal_learn_predict(
    exported: tuple[object, ModelCard], images: list[Path]
) -> None:
    learn, card = exported
    model = learn.model.eval()  # type: ignore[attr-defined]
    pre = Preprocessor.from_card(card)
    with torch.inference_mode():
        batch = torch.from_numpy(pre.batch([Image.open(p) for p in images]))
        probs = torch.softmax(model(batch), dim=1)
    for path, ours in zip(images, probs, strict=True):
        _, _, theirs = learn.predict(path)  # type: ignore[attr-defined]
        assert torch.allclose(ours, theirs.float(), atol=1e-5), (ours, theirs)


def test_card_with_unknown_resize_method_is_refused(exported: tuple[object, ModelCard]) -> None:
    _, card = exported
    odd = ModelCard(**{**card.__dict__, "resize_method": "squish"})
    with pytest.raises(ValueError, match="squish"):
        Preprocessor.from_card(odd)
