"""Network modules that an exported learner refers to by name.

A pickled learner stores class names, not code, so every module class in a model must live in an
importable module that both training and serving install: this one.
"""

from __future__ import annotations

import torch
from torch import nn


class EfficientNetLiteBody(nn.Module):
    """The convolutional part of an EfficientNet-Lite (stem, blocks, head conv), no pooling or fc.

    Wraps `efficientnet_lite_pytorch.EfficientNet` so that fastai's head can sit on its feature map,
    keeping the network's own drop-connect schedule in the blocks.
    """

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net
        # Drop the ImageNet classifier: the fastai head replaces it.
        self.net._fc = nn.Identity()
        self.net._dropout = nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features: torch.Tensor = self.net.extract_features(x)  # type: ignore[operator]
        return features
