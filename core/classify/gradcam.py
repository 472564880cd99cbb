"""Grad-CAM (Selvaraju et al., 2017) for a `Sequential(body, head)` classifier, and an overlay.

The models built by `training.archs` are `nn.Sequential(body, *head)`, so the body's feature map is
available without hooks: run the body, keep its output's gradient, run the head.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


def grad_cam(
    model: nn.Sequential, x: torch.Tensor, class_idx: torch.Tensor | None = None
) -> torch.Tensor:
    """Heatmaps in [0, 1] of shape (N, H, W) for a normalised batch `x` of shape (N, 3, H, W).

    `class_idx` selects the class each map explains (default: the predicted class). The model
    should be in eval mode; its parameters' gradients are left untouched.
    """
    body, head = model[0], model[1:]
    with torch.enable_grad():
        feats = body(x).detach().requires_grad_(True)
        logits = head(feats)
        if class_idx is None:
            class_idx = logits.argmax(dim=1)
        chosen = logits.gather(1, class_idx.view(-1, 1)).sum()
        (grads,) = torch.autograd.grad(chosen, feats)
    weights = grads.mean(dim=(2, 3), keepdim=True)
    cam = F.relu((weights * feats).sum(dim=1, keepdim=True))
    cam = F.interpolate(cam, size=x.shape[-2:], mode="bilinear", align_corners=False)[:, 0]
    flat = cam.flatten(1)
    lo, hi = flat.min(dim=1).values, flat.max(dim=1).values
    cam = (cam - lo[:, None, None]) / (hi - lo).clamp_min(1e-8)[:, None, None]
    return cam.detach()


def _jet(values: np.ndarray) -> np.ndarray:
    """A jet-like colour map for values in [0, 1], without importing matplotlib."""
    v = np.clip(values, 0.0, 1.0)[..., None]
    r = np.clip(1.5 - np.abs(4 * v - 3), 0, 1)
    g = np.clip(1.5 - np.abs(4 * v - 2), 0, 1)
    b = np.clip(1.5 - np.abs(4 * v - 1), 0, 1)
    return np.concatenate([r, g, b], axis=-1)


def overlay(image: np.ndarray, cam: np.ndarray, alpha: float = 0.45) -> np.ndarray:
    """Blend a heatmap (H, W) in [0, 1] over an RGB uint8 image of the same size.

    The colour's weight grows with the heat, so cold regions show the plain cell.
    """
    if image.shape[:2] != cam.shape:
        raise ValueError(f"image {image.shape[:2]} and heatmap {cam.shape} differ in size")
    base = image.astype(np.float32) / 255.0
    weight = alpha * np.clip(cam, 0.0, 1.0)[..., None]
    mixed = (1 - weight) * base + weight * _jet(cam)
    return (mixed * 255).round().astype(np.uint8)
