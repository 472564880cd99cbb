"""Test-time augmentation: the 8 views are the 8 distinct symmetries of the square, and the
probabilities are their mean."""

from __future__ import annotations

import pytest
import torch

from core.tta import TTA_VIEWS, dihedral_view, tta_probabilities, view_indices


def test_the_eight_views_are_distinct_symmetries_of_the_square() -> None:
    batch = torch.arange(2 * 3 * 4 * 4, dtype=torch.float32).reshape(2, 3, 4, 4)
    views = [dihedral_view(batch, i) for i in range(8)]
    assert all(v.shape == batch.shape for v in views)
    assert torch.equal(views[0], batch)
    # All 8 differ from each other on an asymmetric image, and each is a pixel permutation.
    flat = {tuple(v[0, 0].flatten().tolist()) for v in views}
    assert len(flat) == 8
    for v in views:
        assert torch.equal(v.flatten(2).sort(dim=2).values, batch.flatten(2).sort(dim=2).values)
    assert torch.equal(views[1], batch.flip(3))
    assert torch.equal(views[2], torch.rot90(batch, 1, dims=(2, 3)))


@pytest.mark.parametrize("views,expected", [(1, [0]), (2, [0, 1]), (4, [0, 2, 4, 6])])
def test_view_subsets(views: int, expected: list[int]) -> None:
    assert view_indices(views) == expected
    assert view_indices(8) == list(range(8))
    assert set(TTA_VIEWS) == {1, 2, 4, 8}


@pytest.mark.parametrize("bad", [0, 3, 16, -1])
def test_unsupported_view_counts_are_refused(bad: int) -> None:
    with pytest.raises(ValueError, match="one of"):
        view_indices(bad)


def test_probabilities_are_the_mean_over_views() -> None:
    torch.manual_seed(0)
    weights = torch.randn(3 * 5 * 5, 4)

    def logits_of(x: torch.Tensor) -> torch.Tensor:
        return x.flatten(1) @ weights  # depends on orientation

    batch = torch.randn(6, 3, 5, 5)
    for views in TTA_VIEWS:
        got = tta_probabilities(logits_of, batch, views)
        expected = torch.stack(
            [torch.softmax(logits_of(dihedral_view(batch, i)), 1) for i in view_indices(views)]
        ).mean(0)
        assert torch.allclose(got, expected, atol=1e-6)
        assert torch.allclose(got.sum(1), torch.ones(6), atol=1e-5)
    # A network that cannot see orientation gets nothing from extra views.
    pooled = tta_probabilities(lambda x: x.mean(dim=(2, 3)), batch, 8)
    assert torch.allclose(pooled, torch.softmax(batch.mean(dim=(2, 3)), 1), atol=1e-6)
