"""Grad-CAM on a model whose right answer is known by construction, and the overlay."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from core.classify.gradcam import grad_cam, overlay


def channel0_model() -> nn.Sequential:
    """Body: copy channel 0 (1x1 conv), then average 4x4 blocks (an 8x8 map for 32x32 input).
    Head: global average, then class 0 = +feature, class 1 = -feature."""
    conv = nn.Conv2d(3, 1, kernel_size=1, bias=False)
    linear = nn.Linear(1, 2)
    with torch.no_grad():
        conv.weight.zero_()
        conv.weight[0, 0] = 1.0
        linear.weight.copy_(torch.tensor([[1.0], [-1.0]]))
        linear.bias.zero_()
    body = nn.Sequential(conv, nn.AvgPool2d(4))
    return nn.Sequential(body, nn.AdaptiveAvgPool2d(1), nn.Flatten(), linear).eval()


def bright_quadrant(height: int, width: int, corner: str) -> torch.Tensor:
    x = torch.zeros(3, height, width)
    rows = slice(0, height // 2) if corner[0] == "t" else slice(height // 2, height)
    cols = slice(0, width // 2) if corner[1] == "l" else slice(width // 2, width)
    x[0, rows, cols] = 1.0
    return x


def quadrant_of_max(cam: torch.Tensor) -> str:
    height, width = cam.shape
    row, col = divmod(int(cam.argmax()), width)
    return ("t" if row < height // 2 else "b") + ("l" if col < width // 2 else "r")


def test_heatmap_points_at_the_evidence() -> None:
    model = channel0_model()
    # Not square, so that height and width cannot be swapped unnoticed.
    x = torch.stack([bright_quadrant(32, 48, "tl"), bright_quadrant(32, 48, "br")])
    cam = grad_cam(model, x)
    assert cam.shape == (2, 32, 48)
    assert cam.min() >= 0.0 and cam.max() <= 1.0
    assert quadrant_of_max(cam[0]) == "tl"
    assert quadrant_of_max(cam[1]) == "br"
    # Each map is scaled to its own maximum.
    assert cam.flatten(1).max(dim=1).values.tolist() == pytest.approx([1.0, 1.0])
    # Far from the bright quadrant the map is cold.
    assert float(cam[0, -1, -1]) == pytest.approx(0.0, abs=1e-6)
    assert float(cam[1, 0, 0]) == pytest.approx(0.0, abs=1e-6)
    assert not cam.requires_grad


def test_parameter_gradients_stay_untouched() -> None:
    model = channel0_model()
    grad_cam(model, bright_quadrant(32, 32, "tl")[None])
    assert all(p.grad is None for p in model.parameters())


def test_works_inside_no_grad() -> None:
    model = channel0_model()
    x = bright_quadrant(32, 32, "tl")[None]
    expected = grad_cam(model, x)
    with torch.no_grad():
        cam = grad_cam(model, x)
    torch.testing.assert_close(cam, expected)
    assert quadrant_of_max(cam[0]) == "tl"
    assert all(p.grad is None for p in model.parameters())


def test_class_idx_selects_the_explained_class() -> None:
    model = channel0_model()
    x = bright_quadrant(32, 32, "tl")[None]
    # Nothing in the image speaks for class 1 (it is penalised by the bright channel): after
    # the ReLU its map is empty.
    cam = grad_cam(model, x, class_idx=torch.tensor([1]))
    assert cam.shape == (1, 32, 32)
    assert torch.all(cam == 0)
    torch.testing.assert_close(grad_cam(model, x, class_idx=torch.tensor([0])), grad_cam(model, x))


def test_on_a_registry_model() -> None:
    from training.archs import create_model

    torch.manual_seed(0)
    model = create_model("resnet18", 3, "random").eval()
    cam = grad_cam(model, torch.randn(2, 3, 64, 64))
    assert cam.shape == (2, 64, 64)
    assert cam.min() >= 0.0 and cam.max() <= 1.0
    assert all(p.grad is None for p in model.parameters())


def test_overlay_keeps_shape_and_dtype_and_leaves_cold_pixels_alone() -> None:
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, size=(16, 16, 3), dtype=np.uint8)
    image[0, :, :] = np.arange(16)[:, None] * 17  # a few exact values, 0 and 255 included
    cam = np.zeros((16, 16), dtype=np.float32)
    cam[8:, 8:] = 1.0
    out = overlay(image, cam)
    assert out.shape == image.shape and out.dtype == np.uint8
    np.testing.assert_array_equal(out[cam == 0], image[cam == 0])
    # Hot pixels take on colour.
    assert np.any(out[cam == 1] != image[cam == 1])


def test_overlay_of_an_all_cold_map_is_the_image() -> None:
    image = np.arange(256, dtype=np.uint8).reshape(16, 16, 1).repeat(3, axis=2)
    out = overlay(image, np.zeros((16, 16)), alpha=0.9)
    np.testing.assert_array_equal(out, image)


def test_overlay_refuses_a_heatmap_of_another_size() -> None:
    image = np.zeros((16, 16, 3), dtype=np.uint8)
    with pytest.raises(ValueError, match="differ in size"):
        overlay(image, np.zeros((8, 8)))
    with pytest.raises(ValueError, match="differ in size"):
        overlay(image, np.zeros((16, 15)))
