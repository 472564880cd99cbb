"""Class activation maps for a `Sequential(body, head)` classifier, and an overlay.

Two ways to weigh a layer's activations A (N, C, h, w) by the gradient G of the class score:
- Grad-CAM (Selvaraju et al., 2017): one weight per channel, the gradient averaged over the map,
  ReLU(sum_c mean(G_c) * A_c). Meant for the last convolutional layer; on an early layer a
  channel fires wherever its pattern is, and one weight per channel lights all of those places
  alike, the ones the class reads and the ones it ignores.
- LayerCAM (Jiang et al., 2021): a weight per position, ReLU(sum_c ReLU(G_c) * A_c): a place
  counts where raising it raises the class score, which keeps the map faithful on early layers.

Which layer: a stride picks the deepest stage of the body whose map is at least 1/stride of the
input's side. The body's own output (stride 32 for the registry's networks) gives only 3x3 cells
at our 96-px input, each wider than half a red cell, and its Grad-CAM lit the neighbours and the
background more than the cell (issue #12). Several strides give several maps, combined.

`grad_cam`, what the service and the training report draw, is LayerCAM on the stride-8 and
stride-16 stages (12x12 and 6x6 at 96 px), combined by their geometric mean: the 12x12 map's
detail where the 6x6 map agrees, which drops the stride-8 map's faint haze over the background.
research/heatmap_mass.py made that choice: the share of each method's heatmap inside the explained
cell's outline on the Chula test crops (research/results/classification/heatmap-mass-shipped.json;
docs/classification.md, "Heatmaps that show the cell"). The other methods stay available by name
in `class_activation_maps`; the heatmaps before issue #12 are
`class_activation_maps(model, x, method="gradcam", strides=(32,))`.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

METHODS = ("gradcam", "layercam")
FUSIONS = ("mean", "product")
# What `grad_cam` (and so the service's heatmaps) uses: chosen by research/heatmap_mass.py.
DEFAULT_METHOD = "layercam"
DEFAULT_STRIDES: tuple[int, ...] = (8, 16)
DEFAULT_FUSION = "product"


def candidate_layers(body: nn.Module) -> list[nn.Module]:
    """The body's stages in the order they run, the body itself last: modules whose outputs a map
    can be drawn on. An EfficientNet-Lite body gives its MBConv blocks; a Sequential body (the
    torchvision families, toy models) its leaves, nested Sequentials opened (a ResNet's blocks,
    a DenseNet's dense blocks and transitions); any other module only itself."""
    from core.classify.nets import EfficientNetLiteBody

    layers: list[nn.Module] = []
    if isinstance(body, EfficientNetLiteBody):
        blocks = body.net._blocks
        assert isinstance(blocks, nn.ModuleList)
        layers = list(blocks)
    elif isinstance(body, nn.Sequential):
        stack = list(body)
        while stack:
            first = stack.pop(0)
            if isinstance(first, nn.Sequential):
                stack = list(first) + stack
            else:
                layers.append(first)
    return [*layers, body]


def _pick(shapes: Sequence[torch.Size], input_height: int, stride: int) -> int:
    """Index of the deepest 4-d output whose height is at least input_height / stride; the last
    (the body's output) when every map is coarser."""
    chosen = len(shapes) - 1
    for i, shape in enumerate(shapes):
        if len(shape) == 4 and shape[2] * stride >= input_height:
            chosen = i
    return chosen


def _normalise(cam: torch.Tensor) -> torch.Tensor:
    """Each map (N, H, W) scaled to [0, 1] by its own minimum and maximum (all zeros stays)."""
    flat = cam.flatten(1)
    lo, hi = flat.min(dim=1).values, flat.max(dim=1).values
    return (cam - lo[:, None, None]) / (hi - lo).clamp_min(1e-8)[:, None, None]


def class_activation_maps(
    model: nn.Sequential,
    x: torch.Tensor,
    class_idx: torch.Tensor | None = None,
    method: str = DEFAULT_METHOD,
    strides: Sequence[int] = DEFAULT_STRIDES,
    fusion: str = DEFAULT_FUSION,
    return_raw: bool = False,
) -> torch.Tensor:
    """Heatmaps in [0, 1] of shape (N, H, W) for a normalised batch `x` of shape (N, 3, H, W).

    `method`: "gradcam" or "layercam" (module docstring). `strides`: the layers, by the stride
    of their map (see `_pick`; 32 or more is the body's output). With several layers, each map
    is scaled to [0, 1] and brought to the input's size, then `fusion` combines them: "mean"
    averages them, "product" takes their geometric mean (heat only where every layer has some).
    `class_idx` selects the class each map explains (default: the predicted class). The model
    should be in eval mode; its parameters' gradients are left untouched, and it may have
    requires_grad off. With `return_raw`: the finest chosen layer's map before upsampling,
    unnormalised, (N, h, w).
    """
    if method not in METHODS:
        raise ValueError(f"unknown CAM method {method!r}; expected one of {', '.join(METHODS)}")
    if fusion not in FUSIONS:
        raise ValueError(f"unknown fusion {fusion!r}; expected one of {', '.join(FUSIONS)}")
    if not strides:
        raise ValueError("strides is empty: no layer to draw a map on")
    body, head = model[0], model[1:]
    layers = candidate_layers(body)
    outputs: dict[int, torch.Tensor] = {}
    # The model is shared: the service's other threads classify (or draw heatmaps) with it while
    # the hooks are on. Only this call's own forward pass is kept.
    caller = threading.get_ident()

    def keeper(index: int) -> Callable[[nn.Module, object, object], None]:
        def keep(_module: nn.Module, _inputs: object, output: object) -> None:
            if isinstance(output, torch.Tensor) and threading.get_ident() == caller:
                outputs[index] = output

        return keep

    handles = [layer.register_forward_hook(keeper(i)) for i, layer in enumerate(layers)]
    try:
        with torch.enable_grad():
            # Gradients flow from the input, so the parameters need none (the predictor turns
            # them off); torch.autograd.grad below fills no parameter's .grad.
            logits = head(body(x.detach().requires_grad_(True)))
            if class_idx is None:
                class_idx = logits.argmax(dim=1)
            kept = sorted(outputs)
            shapes = [outputs[i].shape for i in kept]
            picked = sorted({kept[_pick(shapes, x.shape[-2], s)] for s in strides})
            chosen = logits.gather(1, class_idx.view(-1, 1).to(logits.device)).sum()
            grads = torch.autograd.grad(chosen, [outputs[i] for i in picked])
    finally:
        for handle in handles:
            handle.remove()
    maps = []
    for i, grad in zip(picked, grads, strict=True):
        acts = outputs[i].detach()
        weights = grad.mean(dim=(2, 3), keepdim=True) if method == "gradcam" else F.relu(grad)
        maps.append(F.relu((weights * acts).sum(dim=1)).detach())
    if return_raw:
        return max(maps, key=lambda m: m.shape[-2] * m.shape[-1])
    size = x.shape[-2:]
    scaled = torch.stack(
        [
            _normalise(
                F.interpolate(m[:, None], size=size, mode="bilinear", align_corners=False)[:, 0]
            )
            for m in maps
        ]
    )
    # The geometric mean: a place is hot only where every layer's map is.
    fused = scaled.mean(dim=0) if fusion == "mean" else scaled.prod(dim=0) ** (1.0 / len(maps))
    return _normalise(fused)


def grad_cam(
    model: nn.Sequential, x: torch.Tensor, class_idx: torch.Tensor | None = None
) -> torch.Tensor:
    """The service's heatmaps: in [0, 1], of shape (N, H, W) for a normalised batch `x` of shape
    (N, 3, H, W): DEFAULT_METHOD on the layers of DEFAULT_STRIDES, combined by DEFAULT_FUSION
    (LayerCAM at strides 8 and 16, geometric mean: 12x12 detail at 96 px), upsampled bilinearly
    to the input's size.

    `class_idx` selects the class each map explains (default: the predicted class). The model
    should be in eval mode; its parameters' gradients are left untouched.
    """
    return class_activation_maps(
        model, x, class_idx, DEFAULT_METHOD, DEFAULT_STRIDES, DEFAULT_FUSION
    )


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
