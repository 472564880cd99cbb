"""Colour, stain and optics augmentation shared by the detector's and the classifier's training.

Laboratories differ in stain strength and tint, white balance, exposure, focus and compression.
Each function takes an RGB uint8 array and a numpy Generator and returns a new RGB uint8 array,
so the training loops stay reproducible from their seed. Everything acts on the whole image:
relative colour inside a cell (a hypochromic cell's pale centre against its rim) is kept.
"""

from __future__ import annotations

import io
import math

import numpy as np
from PIL import Image, ImageFilter

# Haematoxylin-eosin-DAB stain vectors (Ruifrok and Johnston), as scikit-image uses them.
_RGB_FROM_HED = np.array(
    [[0.65, 0.70, 0.29], [0.07, 0.99, 0.11], [0.27, 0.57, 0.78]], dtype=np.float64
)
_RGB_FROM_HED /= np.linalg.norm(_RGB_FROM_HED, axis=1, keepdims=True)
_HED_FROM_RGB = np.linalg.inv(_RGB_FROM_HED)


def stain_jitter(rgb: np.ndarray, rng: np.random.Generator, sigma: float = 0.25) -> np.ndarray:
    """Scale and shift each stain's optical density: another lab's stain strength and tint."""
    od = -np.log(np.clip(rgb.astype(np.float64), 1, 255) / 255.0)
    hed = od @ _HED_FROM_RGB
    alpha = rng.uniform(1 - sigma, 1 + sigma, 3)
    beta = rng.uniform(-0.05, 0.05, 3)
    od = (hed * alpha + beta) @ _RGB_FROM_HED
    return np.clip(255.0 * np.exp(-od), 0, 255).astype(np.uint8)


def colour_jitter(rgb: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    image = rgb.astype(np.float32) / 255.0
    # Hue and saturation: rotate and scale the chroma around the grey axis.
    grey = image.mean(axis=2, keepdims=True)
    chroma = (image - grey) * rng.uniform(0.6, 1.4)
    angle = rng.uniform(-0.25, 0.25)
    axis = np.ones(3) / math.sqrt(3)
    cos, sin = math.cos(angle), math.sin(angle)
    cross = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    rotation = cos * np.eye(3) + sin * cross + (1 - cos) * np.outer(axis, axis)
    image = grey + chroma @ rotation.T.astype(np.float32)
    # Grey-world shift (white balance), brightness, contrast, gamma.
    image = image * rng.uniform(0.9, 1.1, 3).astype(np.float32)
    image = (image - 0.5) * rng.uniform(0.7, 1.3) + 0.5 + rng.uniform(-0.15, 0.15)
    image = np.clip(image, 0, 1) ** rng.uniform(0.7, 1.4)
    return (255 * image).astype(np.uint8)


def degrade(rgb: np.ndarray, rng: np.random.Generator, blur_max: float = 1.5) -> np.ndarray:
    """Defocus (Gaussian blur, sigma 0.3 to `blur_max` px) and JPEG loss, each with p 0.3."""
    image = Image.fromarray(rgb)
    if rng.random() < 0.3:
        image = image.filter(ImageFilter.GaussianBlur(rng.uniform(0.3, blur_max)))
    if rng.random() < 0.3:
        buffer = io.BytesIO()
        image.save(buffer, format="JPEG", quality=int(rng.integers(30, 90)))
        image = Image.open(io.BytesIO(buffer.getvalue())).convert("RGB")
    return np.asarray(image)
