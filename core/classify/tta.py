"""Test-time augmentation by the symmetries of a square: a red cell has no "up", so its class does
not change when the crop is turned by 90 degrees or mirrored. Averaging the network's
probabilities over these views removes some of the network's orientation noise at the price of
one forward pass per view. Exact on pixels (no interpolation), so it works on the normalised
tensor the network already takes."""

from __future__ import annotations

from collections.abc import Callable

import torch

# 1: the image; 2: + mirror; 4: the four quarter turns; 8: the four turns, each also mirrored.
TTA_VIEWS = (1, 2, 4, 8)


def dihedral_view(batch: torch.Tensor, index: int) -> torch.Tensor:
    """View `index` (0-7) of an (N, C, H, W) batch: `index // 2` quarter turns, mirrored if odd."""
    turned = torch.rot90(batch, index // 2, dims=(2, 3)) if index // 2 else batch
    return torch.flip(turned, dims=(3,)) if index % 2 else turned


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
    """Mean softmax probabilities (N, classes) of `logits_of` over `views` views of `batch`.

    All views go through the network as one batch (a single cell becomes a batch of `views`);
    in eval mode BatchNorm uses its running statistics, so batching does not change the result."""
    indices = view_indices(views)
    stacked = torch.cat([dihedral_view(batch, i) for i in indices]) if views > 1 else batch
    probs = torch.softmax(logits_of(stacked).float(), dim=1)
    return probs.view(len(indices), len(batch), -1).mean(dim=0)
