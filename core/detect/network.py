"""The learned detector's network, in torch: training builds and trains it
(training/detect/), and the service runs it where no detector.onnx can (a GPU, an older model,
RBC_ENGINE=torch). A serving install without torch never imports this module: it runs
detector.onnx (core/detect/learned.py)."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from core.detect.field import KINDS


def _conv(c_in: int, c_out: int, k: int = 3) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, k, padding=k // 2, bias=False),
        nn.BatchNorm2d(c_out),
        nn.ReLU(inplace=True),
    )


class CentreNet(nn.Module):
    """EfficientNet-Lite body, top-down feature pyramid to stride 4, two heads:
    `heat` (logits, one channel per kind) and `size` (log of box width and height / STRIDE)."""

    def __init__(self, backbone: str = "efficientnet_lite0", width: int = 64) -> None:
        super().__init__()
        from core.backbones import imagenet_network

        net: Any = imagenet_network(backbone)  # efficientnet_lite_pytorch.EfficientNet
        self.stem = nn.Sequential(net._conv_stem, net._bn0, net._swish)
        self.blocks: nn.ModuleList = net._blocks
        self.drop_connect = float(net._global_params.drop_connect_rate or 0.0)
        self.taps, channels = self._find_taps()
        self.lateral = nn.ModuleList(nn.Conv2d(c, width, 1) for c in channels)
        self.smooth = _conv(width, width)
        self.heat = nn.Sequential(_conv(width, width), nn.Conv2d(width, len(KINDS), 1))
        self.size = nn.Sequential(_conv(width, width), nn.Conv2d(width, 2, 1))
        # Focal-loss prior: start every heatmap near 0.1, not 0.5.
        last = self.heat[-1]
        assert isinstance(last, nn.Conv2d) and last.bias is not None
        nn.init.constant_(last.bias, -2.19)

    @torch.no_grad()
    def _find_taps(self) -> tuple[list[int], list[int]]:
        """Indices of the last block at strides 4, 8, 16 and 32, and their channels."""
        was = self.training
        self.eval()
        x = self.stem(torch.zeros(1, 3, 64, 64))
        last_at: dict[int, tuple[int, int]] = {}
        for i, block in enumerate(self.blocks):
            x = block(x)
            last_at[64 // x.shape[-1]] = (i, int(x.shape[1]))
        self.train(was)
        strides = [4, 8, 16, 32]
        return [last_at[s][0] for s in strides], [last_at[s][1] for s in strides]

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.stem(x)
        taps = []
        n = len(self.blocks)
        for i, block in enumerate(self.blocks):
            rate = self.drop_connect * i / n if self.training else 0.0
            x = block(x, drop_connect_rate=rate)
            if i in self.taps:
                taps.append(x)
        top = self.lateral[-1](taps[-1])
        for lateral, feature in zip(reversed(self.lateral[:-1]), reversed(taps[:-1]), strict=True):
            top = F.interpolate(top, size=feature.shape[-2:], mode="nearest") + lateral(feature)
        top = self.smooth(top)
        return self.heat(top), self.size(top)
