"""The classifier's networks, in plain torch: the thesis head on a body (core.backbones), and
loading an exported state dict.

Training wraps these networks in a fastai Learner and pickles it (export.pkl); a pickle stores class
names, not code, so every module class in a model must live in an importable module that both
training and serving install: core.backbones and this one. The service does not unpickle
anything: it rebuilds the network here, without fastai, and loads the exported state dict
(model_state.pt) into it.

`build_head` reproduces `fastai.vision.learner.create_head(nf, n_out, concat_pool=True,
lin_ftrs=[512], ps=0.5)` layer for layer (same indices, so the same state-dict keys); the modules
it uses have fastai's attribute names. tests/core/test_nets.py checks the equivalence against
fastai for every architecture.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from core.backbones import (
    ARCHS,
    IMAGENET_STATS,
    LITE_PREFIX,
    LITE_STATS,
    LITE_VARIANTS,
    TORCHVISION_PREFIXES,
    AdaptiveConcatPool2d,
    ArchSpec,
    EfficientNetLiteBody,
    Flatten,
    UnknownArchitectureError,
    build_body,
    cut_body,
    imagenet_network,
    num_features,
)
from core.modelcard import ModelCard, ModelFileError, verified_state_path

# The registry and the bodies are core.backbones'; they are re-exported here for the code that
# imports them from this module, and for learners pickled with these class paths.
__all__ = [
    "ARCHS",
    "IMAGENET_STATS",
    "LITE_PREFIX",
    "LITE_STATS",
    "LITE_VARIANTS",
    "TORCHVISION_PREFIXES",
    "AdaptiveConcatPool2d",
    "ArchSpec",
    "EfficientNetLiteBody",
    "Flatten",
    "UnknownArchitectureError",
    "build_body",
    "build_head",
    "build_network",
    "cut_body",
    "imagenet_network",
    "load_network",
    "num_features",
]


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
