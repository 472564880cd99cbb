"""The plain-torch networks (core.classify.nets) and the state file the service loads, not a pickle.

The networks must take a fastai-trained model's state dict with strict=True and compute the same
outputs; the state file must be checked against the card before it is read, and every way a model
folder can be wrong must say so clearly.
"""

from __future__ import annotations

import json
import pickle
import shutil
from dataclasses import asdict
from pathlib import Path

import pytest
import torch
from torch import nn

from core.classify.nets import (
    AdaptiveConcatPool2d,
    UnknownArchitectureError,
    build_body,
    build_head,
    build_network,
    load_network,
)
from core.modelcard import (
    CARD_FILE,
    STATE_FILE,
    WEIGHTS_FILE,
    ModelCard,
    ModelFileError,
    sha256_file,
    verified_state_path,
)
from training.archs import ARCHS, create_model
from training.classify.export import ExportError, publish_run, save_state
from training.classify.learner import load_exported


@pytest.fixture(autouse=True)
def one_thread() -> object:
    # Small forward passes on a busy two-core machine: one thread avoids OpenMP spin-waiting.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _randomise_bn_stats(model: nn.Module, seed: int = 0) -> None:
    """Fresh BN layers have mean 0 / var 1 / weight 1 / bias 0 (or fastai's 1e-3): give them values,
    so that a swapped or ignored buffer would change the outputs."""
    generator = torch.Generator().manual_seed(seed)
    for module in model.modules():
        if isinstance(module, nn.BatchNorm1d | nn.BatchNorm2d):
            n = module.num_features
            assert module.running_mean is not None and module.running_var is not None
            module.running_mean.copy_(torch.randn(n, generator=generator) * 0.1)
            module.running_var.copy_(torch.rand(n, generator=generator) + 0.5)
            module.weight.data.copy_(torch.rand(n, generator=generator) + 0.5)
            module.bias.data.copy_(torch.randn(n, generator=generator) * 0.1)


# --- the head and the networks match fastai's ---------------------------------------------------


def test_concat_pool_is_max_then_average() -> None:
    x = torch.arange(2 * 3 * 4 * 4, dtype=torch.float32).view(2, 3, 4, 4)
    out = AdaptiveConcatPool2d()(x)
    assert out.shape == (2, 6, 1, 1)
    torch.testing.assert_close(out[:, :3, 0, 0], x.amax(dim=(2, 3)))
    torch.testing.assert_close(out[:, 3:, 0, 0], x.mean(dim=(2, 3)))


@pytest.mark.parametrize(("n_features", "n_classes"), [(512, 3), (1280, 13)])
def test_head_is_fastais_create_head_layer_for_layer(n_features: int, n_classes: int) -> None:
    from fastai.vision.learner import create_head

    theirs = create_head(n_features, n_classes, concat_pool=True, lin_ftrs=[512], ps=0.5)
    ours = build_head(n_features, n_classes)
    assert [type(m).__name__ for m in ours] == [type(m).__name__ for m in theirs]
    for a, b in zip(ours, theirs, strict=True):
        # Same layer settings (features, bias flags, dropout p, inplace...), not only the type.
        assert repr(a) == repr(b)
    assert {k: v.shape for k, v in ours.state_dict().items()} == {
        k: v.shape for k, v in theirs.state_dict().items()
    }
    _randomise_bn_stats(theirs)
    ours.load_state_dict(theirs.state_dict(), strict=True)
    x = torch.randn(4, n_features, 3, 3)
    with torch.no_grad():
        assert torch.equal(ours.eval()(x), theirs.eval()(x))


@pytest.mark.parametrize("name", sorted(ARCHS))
def test_fastai_trained_state_dict_loads_strictly_with_the_same_outputs(name: str) -> None:
    torch.manual_seed(0)
    trained = create_model(name, 3, "random")
    _randomise_bn_stats(trained)
    network = build_network(name, 3)
    network.load_state_dict(trained.state_dict(), strict=True)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(network.eval()(x), trained.eval()(x))


def test_unknown_architecture() -> None:
    with pytest.raises(UnknownArchitectureError, match="resnet9000"):
        build_body("resnet9000")
    with pytest.raises(UnknownArchitectureError, match="mobilenet_v2"):
        build_body("mobilenet_v2")


# --- load_network on a hand-made model folder -----------------------------------------------------


CLASSES = ["normal", "spherocyte", "target_cell"]


def _card(**changes: object) -> ModelCard:
    values: dict[str, object] = {
        "name": "tiny",
        "classes": CLASSES,
        "architecture": "resnet18",
        "input_size": 32,
        "normalization": {"mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]},
        "crop_window_px": 24,
        "resize_method": "pad-border",
        "weights_sha256": "0" * 64,
    }
    values.update(changes)
    return ModelCard(**values)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def network() -> nn.Sequential:
    torch.manual_seed(3)
    net = build_network("resnet18", len(CLASSES))
    _randomise_bn_stats(net, seed=3)
    return net.eval()


@pytest.fixture
def state_dir(tmp_path: Path, network: nn.Sequential) -> Path:
    folder = tmp_path / "model"
    folder.mkdir()
    state_file, state_sha256 = save_state(network, folder)
    _card(state_file=state_file, state_sha256=state_sha256).save(folder)
    return folder


def test_load_network_gives_the_saved_network(state_dir: Path, network: nn.Sequential) -> None:
    loaded, card = load_network(state_dir)
    assert card.state_file == STATE_FILE
    assert card.state_sha256 == sha256_file(state_dir / STATE_FILE)
    assert not loaded.training
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(loaded(x), network(x))


def test_tampered_state_file_is_refused_before_it_is_read(
    state_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with open(state_dir / STATE_FILE, "ab") as fh:
        fh.write(b"\0")

    def no_loading(*args: object, **kwargs: object) -> None:
        raise AssertionError("a file that failed its hash check was read")

    monkeypatch.setattr(torch, "load", no_loading)
    with pytest.raises(ModelFileError, match="sha256"):
        load_network(state_dir)


def test_card_without_a_state_file_says_to_re_export(state_dir: Path) -> None:
    raw = json.loads((state_dir / CARD_FILE).read_text())
    del raw["state_file"], raw["state_sha256"]  # a card written before state files existed
    (state_dir / CARD_FILE).write_text(json.dumps(raw))
    assert ModelCard.load(state_dir).state_file is None  # old cards still load
    with pytest.raises(ModelFileError, match=r"names no state file.*python -m training export"):
        load_network(state_dir)


def test_missing_state_file(state_dir: Path) -> None:
    (state_dir / STATE_FILE).unlink()
    with pytest.raises(ModelFileError, match=f"{STATE_FILE} is missing"):
        verified_state_path(state_dir)


def test_state_file_cannot_point_outside_the_model_dir(state_dir: Path) -> None:
    card = ModelCard.load(state_dir)
    shutil.move(state_dir / STATE_FILE, state_dir.parent / "elsewhere.pt")
    card.state_file = "../elsewhere.pt"
    card.save(state_dir)
    with pytest.raises(ModelFileError, match="missing") as err:
        load_network(state_dir)
    assert str(state_dir / "elsewhere.pt") in str(err.value)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"classes": [*CLASSES, "extra"]}, "does not fit resnet18 with 4 classes"),
        ({"architecture": "resnet34"}, "does not fit resnet34"),
        ({"architecture": "resnet9000"}, "unknown architecture 'resnet9000'"),
    ],
)
def test_card_that_does_not_describe_the_state_file(
    state_dir: Path, changes: dict[str, object], message: str
) -> None:
    card = ModelCard.load(state_dir)
    for key, value in changes.items():
        setattr(card, key, value)
    card.save(state_dir)
    with pytest.raises(ModelFileError, match=message):
        load_network(state_dir)


class _Payload:
    """Unpickling this creates `marker`: proof that arbitrary code ran."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[Path]]:
        return (Path.touch, (self.marker,))


def test_state_file_with_code_is_refused_unexecuted(
    state_dir: Path, network: nn.Sequential
) -> None:
    control = state_dir / "control"
    pickle.loads(pickle.dumps(_Payload(control)))
    assert control.exists(), "the payload is live"

    # Even a file whose hash the card vouches for is read as tensors only.
    marker = state_dir / "pwned"
    torch.save({**network.state_dict(), "extra": _Payload(marker)}, state_dir / STATE_FILE)
    card = ModelCard.load(state_dir)
    card.state_sha256 = sha256_file(state_dir / STATE_FILE)
    card.save(state_dir)
    with pytest.raises(ModelFileError, match="cannot read"):
        load_network(state_dir)
    assert not marker.exists(), "weights_only loading must not run pickled code"


# --- export and publish ------------------------------------------------------------------------


def test_export_writes_the_state_file_and_its_hash(trained_run: Path) -> None:
    model_dir = trained_run / "model"
    card = ModelCard.load(model_dir)
    assert card.state_file == STATE_FILE
    assert card.state_sha256 == sha256_file(model_dir / STATE_FILE)
    assert card.weights_sha256 == sha256_file(model_dir / WEIGHTS_FILE)
    learn, _ = load_exported(model_dir)
    network, _ = load_network(model_dir)
    x = torch.randn(4, 3, card.input_size, card.input_size)
    with torch.no_grad():
        assert torch.equal(network(x), learn.model.eval()(x))


def _old_run(trained_run: Path, tmp_path: Path) -> Path:
    """A copy of the run as exported before state files existed: export.pkl and an old card."""
    run = tmp_path / "old-run"
    shutil.copytree(trained_run, run)
    (run / "model" / STATE_FILE).unlink()
    raw = asdict(ModelCard.load(run / "model"))
    del raw["state_file"], raw["state_sha256"]
    (run / "model" / CARD_FILE).write_text(json.dumps(raw))
    return run


def test_publish_adds_the_state_file_to_an_old_run(trained_run: Path, tmp_path: Path) -> None:
    run = _old_run(trained_run, tmp_path)
    dest = publish_run(run, tmp_path / "models", "upgraded")
    card = ModelCard.load(dest)
    assert card.name == "upgraded" and card.state_file == STATE_FILE
    assert card.state_sha256 == sha256_file(dest / STATE_FILE)
    assert not (run / "model" / STATE_FILE).exists(), "the run folder is left as it was"
    learn, _ = load_exported(dest)
    network, _ = load_network(dest)
    x = torch.randn(2, 3, card.input_size, card.input_size)
    with torch.no_grad():
        assert torch.equal(network(x), learn.model.eval()(x))


def test_publish_copies_a_current_state_file(trained_run: Path, tmp_path: Path) -> None:
    dest = publish_run(trained_run, tmp_path / "models", "copied")
    source = ModelCard.load(trained_run / "model")
    assert ModelCard.load(dest).state_sha256 == source.state_sha256
    assert (dest / STATE_FILE).read_bytes() == (trained_run / "model" / STATE_FILE).read_bytes()


def test_publish_refuses_a_state_file_that_is_not_the_learner(
    trained_run: Path, tmp_path: Path
) -> None:
    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    card = ModelCard.load(run / "model")
    # Another network's weights, with a card that vouches for them: the hash passes, the check not.
    other = build_network(card.architecture, len(card.classes))
    _randomise_bn_stats(other, seed=7)
    _, card.state_sha256 = save_state(other, run / "model")
    card.save(run / "model")
    with pytest.raises(ExportError, match=f"rebuilt from {STATE_FILE} predicts differently"):
        publish_run(run, tmp_path / "models", "wrong")
    assert not (tmp_path / "models" / "wrong").exists()
