"""Class activation maps on models whose right answer is known by construction, the overlay, and
the heatmap-mass benchmark (research/heatmap_mass.py, issue #12)."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from core.classify.gradcam import class_activation_maps, grad_cam, overlay

ROOT = Path(__file__).resolve().parents[2]


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


# --- issue #12: maps fine enough to outline a cell, and the heatmap-mass benchmark -------------


class TopLeftHead(nn.Module):
    """Reads only the top-left quadrant of its feature map: the class depends on that region."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        return x[:, :, : h // 2, : w // 2].mean(dim=(2, 3))


def staged_model() -> nn.Sequential:
    """Body: copy channel 0, then stages at stride 8 (8x8 for a 64-px input) and 16 (4x4).
    Head: the top-left quadrant's mean, class 0 = +feature, class 1 = -feature."""
    conv = nn.Conv2d(3, 1, kernel_size=1, bias=False)
    linear = nn.Linear(1, 2, bias=False)
    with torch.no_grad():
        conv.weight.zero_()
        conv.weight[0, 0] = 1.0
        linear.weight.copy_(torch.tensor([[1.0], [-1.0]]))
    body = nn.Sequential(conv, nn.AvgPool2d(8), nn.AvgPool2d(2))
    return nn.Sequential(body, TopLeftHead(), linear).eval()


def two_patches() -> torch.Tensor:
    """Bright patches in the top-left and the bottom-right quadrants of a 64x64 image."""
    x = torch.zeros(1, 3, 64, 64)
    x[0, 0, 8:24, 8:24] = 1.0
    x[0, 0, 40:56, 40:56] = 1.0
    return x


def test_default_heatmap_is_the_evidence_the_class_reads() -> None:
    model = staged_model()
    model.requires_grad_(False)  # as the predictor has it
    x = two_patches()
    cam = grad_cam(model, x)
    assert cam.shape == (1, 64, 64) and float(cam.max()) == pytest.approx(1.0)
    mass = cam[0] / cam[0].sum()
    # Both patches are bright, but the class reads the top-left one only: the heat is there.
    assert float(mass[:32, :32].sum()) > 0.95
    assert float(mass[40:56, 40:56].sum()) < 0.01
    assert quadrant_of_max(cam[0]) == "tl"
    # Grad-CAM weighs each channel by its gradient averaged over the map: it lights both patches
    # alike (why it is not the default on an early layer).
    old = class_activation_maps(model, x, method="gradcam", strides=(8,))
    assert float(old[0, 40:56, 40:56].max()) == pytest.approx(1.0)


def test_strides_pick_the_stage() -> None:
    model = staged_model()
    x = two_patches()
    # No stage at stride 4: the deepest one at least that fine is the 1x1 convolution's output.
    for stride, side in ((8, 8), (16, 4), (32, 4), (4, 64)):
        raw = class_activation_maps(model, x, strides=(stride,), return_raw=True)
        assert raw.shape == (1, side, side), stride
    # Fused: the finest layer's map is the one returned raw.
    assert class_activation_maps(model, x, strides=(16, 8), return_raw=True).shape == (1, 8, 8)
    with pytest.raises(ValueError, match="unknown CAM method"):
        class_activation_maps(model, x, method="nope")
    with pytest.raises(ValueError, match="unknown fusion"):
        class_activation_maps(model, x, strides=(8, 16), fusion="nope")


def test_default_map_on_efficientnet_lite_is_at_least_12x12() -> None:
    from core.classify.gradcam import DEFAULT_FUSION, DEFAULT_METHOD, DEFAULT_STRIDES
    from core.classify.nets import build_network

    torch.manual_seed(0)
    model = build_network("efficientnet_lite0", 4).eval()
    model.requires_grad_(False)
    x = torch.randn(2, 3, 96, 96)  # the default model's input size
    raw = class_activation_maps(
        model, x, None, DEFAULT_METHOD, DEFAULT_STRIDES, DEFAULT_FUSION, return_raw=True
    )
    assert raw.shape[0] == 2 and min(raw.shape[1:]) >= 12
    # Before issue #12: Grad-CAM on the body's output, 3x3 at 96 px.
    before = class_activation_maps(model, x, None, "gradcam", (32,), return_raw=True)
    assert before.shape == (2, 3, 3)
    cam = grad_cam(model, x)
    assert cam.shape == (2, 96, 96) and cam.min() >= 0.0 and cam.max() <= 1.0
    assert all(p.grad is None for p in model.parameters())


# The benchmark's outline and measure.

BACKGROUND = np.array([205.0, 210.0, 200.0])
CELL = np.array([175.0, 115.0, 130.0])


def synthetic_field(discs: list[tuple[float, float, float, bool]]) -> np.ndarray:
    """A 72x72 crop of discs (row, col, radius, pale centre), soft-edged, a little noise. A pale
    centre is nearly the background's colour over the inner 55 % of the radius."""
    from scipy import ndimage

    yy, xx = np.mgrid[:72, :72]
    rgb = np.broadcast_to(BACKGROUND, (72, 72, 3)).copy()
    for row, col, radius, pale in discs:
        d = np.hypot(yy - row, xx - col)
        rgb[d <= radius] = CELL
        if pale:
            rgb[d <= 0.55 * radius] = 0.9 * BACKGROUND + 0.1 * CELL
    rgb = ndimage.gaussian_filter(rgb, (1.0, 1.0, 0))
    rgb += np.random.default_rng(0).normal(0, 2, rgb.shape)
    return np.clip(rgb, 0, 255).astype(np.uint8)


def test_outline_is_the_centre_cell_filled() -> None:
    from scipy import ndimage

    from research.heatmap_mass import cell_outline

    # A pale-centred cell at the centre, a neighbour cut by the crop's edge.
    rgb = synthetic_field([(36, 36, 18, True), (36, 76, 16, False)])
    mask = cell_outline(rgb)
    _, n = ndimage.label(mask)
    assert n == 1
    assert mask[36, 36]  # the pale centre is inside
    assert not ndimage.binary_fill_holes(mask)[~mask].any()  # no holes
    disc = np.hypot(*np.mgrid[-36:36, -36:36]) <= 18
    assert abs(int(mask.sum()) - int(disc.sum())) < 0.15 * disc.sum()
    assert not mask[:, 62:].any()  # not the neighbour
    # The centre pixel on background: the cell nearest it.
    off = cell_outline(synthetic_field([(36, 58, 13, False)]))
    assert off[36, 58] and not off[36, 36] and off[36, 47]
    # Or the cell at a given point.
    two = synthetic_field([(20, 20, 14, False), (52, 52, 14, False)])
    assert cell_outline(two, (52, 52))[52, 52] and not cell_outline(two, (52, 52))[20, 20]
    # Nothing to outline.
    assert not cell_outline(np.full((72, 72, 3), 200, dtype=np.uint8)).any()


def test_mass_inside() -> None:
    from research.heatmap_mass import mass_inside

    mask = np.zeros((8, 8), dtype=bool)
    mask[:2] = True
    assert mass_inside(np.ones((8, 8)), mask) == pytest.approx(0.25)  # uniform: the area share
    hot = np.zeros((8, 8))
    hot[0, 0] = 0.5
    assert mass_inside(hot, mask) == pytest.approx(1.0)
    assert mass_inside(np.zeros((8, 8)), mask) is None


def test_bench_runs_end_to_end(tmp_path: Path) -> None:
    import json

    from PIL import Image

    from research.heatmap_mass import METHODS, main

    root = tmp_path / "crops"
    rows = ["path,label,split,source_image,x,y,border_fraction"]
    for k, label in enumerate(["normal", "target_cell", "spherocyte", "elliptocyte", "normal"]):
        (root / label).mkdir(parents=True, exist_ok=True)
        rel = f"{label}/{k}.png"
        field = synthetic_field(
            [(36 + k % 2, 36, 17 - k, label == "target_cell"), (8, 70, 15, False)]
        )
        Image.fromarray(field).save(root / rel)
        rows.append(f"{rel},{label},{'train' if k == 4 else 'test'},{k}.jpg,36,36,0.0")
    (root / "manifest.csv").write_text("\n".join(rows) + "\n")
    out = tmp_path / "report" / "mass.json"
    examples = tmp_path / "report" / "examples.png"
    code = main(
        [
            "--model", str(ROOT / "models" / "default"), "--data", str(root), "--out", str(out),
            "--examples", str(examples), "--limit", "3", "--no-progress",
        ]
    )  # fmt: skip
    assert code == 0
    report = json.loads(out.read_text())
    # 4 test crops, 1 elliptocyte (not a class of the model): 3 known, all taken.
    assert report["n"] == 3 and report["n_test_known_classes"] == 3
    assert report["skipped_labels"] == {"elliptocyte": 1}
    assert set(report["methods"]) == set(METHODS)
    assert report["default"] == "layercam-s8xs16" and report["before"] == "gradcam-s32"
    assert report["methods"]["layercam-s8xs16"]["map_side"] == [12, 12]
    assert report["methods"]["gradcam-s32"]["map_side"] == [3, 3]
    assert 0.0 < report["chance"]["mean"] < 0.5
    for figures in report["methods"].values():
        assert 0.0 <= figures["mean"] <= 1.0 and 0.0 <= figures["median"] <= 1.0
        assert figures["ms_per_crop"] >= 0.0
    with Image.open(examples) as grid:
        assert grid.size[0] > 72 * len(METHODS) and grid.size[1] > 72


class Interleaved(nn.Module):
    """A body that, in the middle of the heatmap's own forward pass, lets another thread run the
    shared model (as the service's threads do): the race, made certain."""

    def __init__(self, inner: nn.Module, model: list[nn.Module], other: torch.Tensor) -> None:
        super().__init__()
        self.inner, self.model, self.other = inner, model, other
        self.interleave = True

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.inner(x)
        if self.interleave:
            self.interleave = False

            def classify() -> None:
                with torch.inference_mode():
                    self.model[0](self.other)

            worker = threading.Thread(target=classify)
            worker.start()
            worker.join()
        return out


def test_another_threads_forward_pass_does_not_enter_the_heatmap() -> None:
    model = staged_model()
    x = two_patches()
    expected = class_activation_maps(model, x, strides=(8, 16))
    holder: list[nn.Module] = []
    # The interleaving stage comes after the stride-8 one, whose output the other thread's pass
    # then replaces.
    last = model[0][2]
    model[0][2] = Interleaved(last, holder, torch.rand(1, 3, 64, 64))
    holder.append(model)
    # Before the fix: the other thread's inference tensors replaced this call's activations
    # ("One of the differentiated Tensors does not require grad").
    cam = class_activation_maps(model, x, strides=(8, 16))
    torch.testing.assert_close(cam, expected)
