"""The ground of the networks, in plain torch: the architecture registry that training and
serving share, ImageNet networks built without any download, their convolutional bodies, and the
two fastai building blocks the classifier head uses.

Both models stand on it: the classifier (core/classify/nets.py puts the thesis head on a body)
and the cell detector (core/detect/learned.py builds its backbone here). A pickle stores class
paths, so the module classes of a trained model live in a module that training and serving both
install; learners pickled when they lived in core.classify.nets or core.nets still unpickle,
since both re-export them.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

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
