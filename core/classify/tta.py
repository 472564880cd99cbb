"""Test-time augmentation by the symmetries of a square: a red cell has no "up", so its class does
not change when the crop is turned by 90 degrees or mirrored. Averaging the network's
probabilities over these views removes some of the network's orientation noise at the price of
one forward pass per view. Exact on pixels (no interpolation), so it works on the normalised
batch the network already takes.

The service turns numpy batches (it runs without torch); training turns torch tensors. Both go
through `dihedral_view`, so the views are the same."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np

if TYPE_CHECKING:
    import torch

# 1: the image; 2: + mirror; 4: the four quarter turns; 8: the four turns, each also mirrored.
TTA_VIEWS = (1, 2, 4, 8)

Batch = TypeVar("Batch", np.ndarray, "torch.Tensor")


def dihedral_view(batch: Batch, index: int) -> Batch:
    """View `index` (0-7) of an (N, C, H, W) batch (numpy or torch): `index // 2` quarter turns,
    mirrored if odd."""
    turns, mirrored = index // 2, index % 2
    if isinstance(batch, np.ndarray):
        view = np.rot90(batch, turns, axes=(2, 3)) if turns else batch
        return np.ascontiguousarray(view[..., ::-1] if mirrored else view)
    tensor: Any = batch
    turned = tensor.rot90(turns, dims=(2, 3)) if turns else tensor
    return turned.flip(dims=(3,)) if mirrored else turned


def view_indices(views: int) -> list[int]:
    if views not in TTA_VIEWS:
        raise ValueError(f"test-time views must be one of {TTA_VIEWS}, not {views}")
    if views == 2:
        return [0, 1]
    if views == 4:
        return [0, 2, 4, 6]
    return list(range(views))


def tta_probabilities(
    logits_of: Callable[[torch.Tensor], torch.Tensor], batch: torch.Tensor, views: int
) -> torch.Tensor:
    """Mean softmax probabilities (N, classes) of a torch network `logits_of` over `views` views
    of `batch` (training's evaluation; the service averages in core/classify/predictor.py).

    All views go through the network as one batch (a single cell becomes a batch of `views`);
    in eval mode BatchNorm uses its running statistics, so batching does not change the result."""
    import torch

    indices = view_indices(views)
    stacked = torch.cat([dihedral_view(batch, i) for i in indices]) if views > 1 else batch
    probs = torch.softmax(logits_of(stacked).float(), dim=1)
    return probs.view(len(indices), len(batch), -1).mean(dim=0)
