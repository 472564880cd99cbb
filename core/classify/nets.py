"""The networks, in plain torch: bodies, the thesis head, and loading an exported state dict.

Training wraps these networks in a fastai Learner and pickles it (export.pkl); a pickle stores class
names, not code, so every module class in a model must live in an importable module that both
training and serving install: this one. The service does not unpickle anything: it rebuilds the
network here, without fastai, and loads the exported state dict (model_state.pt) into it.

`build_head` reproduces `fastai.vision.learner.create_head(nf, n_out, concat_pool=True,
lin_ftrs=[512], ps=0.5)` layer for layer (same indices, so the same state-dict keys); the modules
it uses have fastai's attribute names. tests/core/test_nets.py checks the equivalence against
fastai for every architecture.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from core.modelcard import ModelCard, ModelFileError, verified_state_path

# The architecture registry, the one list training and serving share: each name's family, its
# ImageNet normalisation and the input side its ImageNet weights were trained at.
IMAGENET_STATS = ([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])
# The TF EfficientNet-Lite models were trained on (x - 127) / 128.
LITE_STATS = ([0.498, 0.498, 0.498], [0.502, 0.502, 0.502])


@dataclass(frozen=True)
class ArchSpec:
    name: str
    family: str  # "torchvision" or "efficientnet_lite"
    mean: list[float]
    std: list[float]
    # Input side the ImageNet weights were trained at (the thesis used 224 for all).
    native_size: int


ARCHS: dict[str, ArchSpec] = {
    name: ArchSpec(name, "torchvision", *IMAGENET_STATS, 224)
    for name in (
        "resnet18",
        "resnet34",
        "resnet50",
        "alexnet",
        "vgg16",
        "vgg19",
        "densenet121",
        "densenet169",
    )
}
ARCHS.update(
    {
        "efficientnet_lite0": ArchSpec("efficientnet_lite0", "efficientnet_lite", *LITE_STATS, 224),
        "efficientnet_lite1": ArchSpec("efficientnet_lite1", "efficientnet_lite", *LITE_STATS, 240),
        "efficientnet_lite2": ArchSpec("efficientnet_lite2", "efficientnet_lite", *LITE_STATS, 260),
    }
)


TORCHVISION_PREFIXES = ("resnet", "densenet", "alexnet", "vgg")
LITE_PREFIX = "efficientnet_lite"
LITE_VARIANTS = tuple(n for n, spec in ARCHS.items() if spec.family == "efficientnet_lite")


class UnknownArchitectureError(ValueError):
    """An architecture name this module cannot build."""


class EfficientNetLiteBody(nn.Module):
    """The convolutional part of an EfficientNet-Lite (stem, blocks, head conv), no pooling or fc.

    Wraps `efficientnet_lite_pytorch.EfficientNet` so that the head can sit on its feature map,
    keeping the network's own drop-connect schedule in the blocks.
    """

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net
        # Drop the ImageNet classifier: the head replaces it.
        self.net._fc = nn.Identity()
        self.net._dropout = nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features: torch.Tensor = self.net.extract_features(x)  # type: ignore[operator]
        return features


class AdaptiveConcatPool2d(nn.Module):
    """fastai's `AdaptiveConcatPool2d`: max pooling then average pooling, side by side."""

    def __init__(self, size: int | None = None) -> None:
        super().__init__()
        self.size = size or 1
        self.ap = nn.AdaptiveAvgPool2d(self.size)
        self.mp = nn.AdaptiveMaxPool2d(self.size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.mp(x), self.ap(x)], 1)


class Flatten(nn.Module):
    """fastai's `Flatten`: (N, C, 1, 1) -> (N, C), or a rank-1 tensor when `full`."""

    def __init__(self, full: bool = False) -> None:
        super().__init__()
        self.full = full

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.view(-1) if self.full else x.view(x.size(0), -1)

    def extra_repr(self) -> str:
        return f"full={self.full}"


def build_head(n_features: int, n_classes: int) -> nn.Sequential:
    """The thesis head on a body of `n_features` channels: concat pool, flatten, BN, dropout 0.25,
    linear to 512 (no bias: BN before it), ReLU, BN, dropout 0.5, linear to n classes (no bias)."""
    width = 2 * n_features  # max and average pooling
    return nn.Sequential(
        AdaptiveConcatPool2d(),
        Flatten(),
        nn.BatchNorm1d(width),
        nn.Dropout(0.25),
        nn.Linear(width, 512, bias=False),
        nn.ReLU(inplace=True),
        nn.BatchNorm1d(512),
        nn.Dropout(0.5),
        nn.Linear(512, n_classes, bias=False),
    )


def imagenet_network(architecture: str) -> nn.Module:
    """The whole ImageNet network of `architecture` (classifier included), randomly initialised;
    nothing is downloaded. Load weights into it, then cut it with `cut_body`."""
    if architecture in LITE_VARIANTS:
        from efficientnet_lite_pytorch import EfficientNet

        variant = architecture.removeprefix("efficientnet_")  # "lite0"
        lite: nn.Module = EfficientNet.from_name(f"efficientnet-{variant}")
        return lite
    if architecture.startswith(TORCHVISION_PREFIXES):
        import torchvision.models as tvm

        try:
            net: nn.Module = tvm.get_model(architecture, weights=None)
        except ValueError as exc:
            raise UnknownArchitectureError(f"unknown architecture {architecture!r}") from exc
        return net
    raise UnknownArchitectureError(f"unknown architecture {architecture!r}")


def _child(net: nn.Module, name: str) -> nn.Module:
    part = getattr(net, name)
    assert isinstance(part, nn.Module)
    return part


def cut_body(architecture: str, net: nn.Module) -> nn.Module:
    """The convolutional body of an `imagenet_network(architecture)` (pooling and classifier off).

    The body shares its modules (and so its weights) with `net`."""
    if architecture.startswith(LITE_PREFIX):
        return EfficientNetLiteBody(net)
    if architecture.startswith("resnet"):
        return nn.Sequential(*list(net.children())[:-2])
    if architecture.startswith("densenet"):
        # torchvision's DenseNet applies this ReLU in forward(), outside `features`.
        return nn.Sequential(_child(net, "features"), nn.ReLU(inplace=False))
    if architecture.startswith(("alexnet", "vgg")):
        return _child(net, "features")
    raise UnknownArchitectureError(f"unknown architecture {architecture!r}")


def build_body(architecture: str) -> nn.Module:
    """The body of `architecture`, randomly initialised, without any download."""
    return cut_body(architecture, imagenet_network(architecture))


def num_features(body: nn.Module) -> int:
    """Channels of the body's feature map, probed with a small input (the body's mode is kept)."""
    was_training = body.training
    with torch.no_grad():
        n = int(body.eval()(torch.zeros(1, 3, 64, 64)).shape[1])
    body.train(was_training)
    return n


def build_network(architecture: str, n_classes: int) -> nn.Sequential:
    """`Sequential(body, head)`, randomly initialised: the layout of every trained model, ready
    for `load_state_dict` of an exported model_state.pt."""
    body = build_body(architecture)
    return nn.Sequential(body, build_head(num_features(body), n_classes))


def load_network(
    model_dir: Path, device: str | torch.device = "cpu"
) -> tuple[nn.Sequential, ModelCard]:
    """The exported network of `model_dir` in eval mode, and its card, without fastai or pickle.

    The state file's sha256 is checked against the card before it is read; it is then read with
    `weights_only=True` (tensors only, no code) and loaded with strict=True into the network that
    `build_network` makes for the card's architecture and classes.
    """
    path, card = verified_state_path(model_dir)
    try:
        state = torch.load(path, map_location=device, weights_only=True)
    except Exception as exc:
        raise ModelFileError(f"cannot read {path} as a state dict of tensors: {exc}") from exc
    if not isinstance(state, dict):
        raise ModelFileError(f"{path} does not hold a state dict")
    try:
        network = build_network(card.architecture, len(card.classes)).to(device)
    except UnknownArchitectureError as exc:
        raise ModelFileError(f"model card of {model_dir}: {exc}") from exc
    try:
        network.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        detail = " ".join(str(exc).split())[:600]
        raise ModelFileError(
            f"{path} does not fit {card.architecture} with {len(card.classes)} classes "
            f"(as the model card says): {detail}"
        ) from exc
    return network.eval(), card
