"""Cell crops exactly as training saw them: shared by the importer and the smear pipeline, so a
cell found in a smear reaches the classifier cut the same way as the cells it was trained on."""

from __future__ import annotations

import numpy as np
from PIL import Image

# Cells are ~40 px across (macrocytes ~50 px): 72 px keeps a whole cell plus some context.
DEFAULT_WINDOW = 72


def median_colour(image: Image.Image) -> tuple[int, int, int]:
    """The image's median RGB colour. On a smear that is background (plasma): padding a crop with
    it adds no fake edge."""
    red, green, blue = (int(v) for v in np.median(np.asarray(image).reshape(-1, 3), axis=0))
    return red, green, blue


def crop_cell(
    image: Image.Image, x: int, y: int, window: int, fill: tuple[int, int, int]
) -> tuple[Image.Image, float]:
    """Cut a `window` x `window` RGB crop centred on pixel (x, y), at native scale.

    The crop covers columns `x - window // 2` to `x - window // 2 + window - 1` (rows likewise), so
    (x, y) lands on pixel (window // 2, window // 2) of the crop. It is never rescaled, because cell
    size is diagnostic (macrocyte, microcyte). Where the window runs past the image border it is
    filled with `fill`; pass a background-like colour such as the image's median colour.

    Returns the crop and the fraction of the window that lay outside the image (0.0 to 1.0).
    Pure: `image` is not modified.
    """
    if image.mode != "RGB":
        raise ValueError(f"crop_cell expects an RGB image, got mode {image.mode!r}")
    if window < 1:
        raise ValueError(f"window must be positive, got {window}")
    left, top = x - window // 2, y - window // 2
    width, height = image.size
    # Intersection of the window with the image, in image coordinates.
    x0, y0 = max(left, 0), max(top, 0)
    x1, y1 = min(left + window, width), min(top + window, height)
    crop = Image.new("RGB", (window, window), fill)
    inside = max(x1 - x0, 0) * max(y1 - y0, 0)
    if inside > 0:
        crop.paste(image.crop((x0, y0, x1, y1)), (x0 - left, y0 - top))
    return crop, 1.0 - inside / (window * window)
