"""Bounded reading and safe decoding of uploaded images.

The format is sniffed from the bytes (never from the file name or the declared type), the pixel
count is checked from the header before any pixel is decoded (decompression bombs), and every
image mode becomes the RGB image the model was trained on, or a clear error.
"""

from __future__ import annotations

import io
from typing import BinaryIO

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from app.errors import BadImage, TooLarge, UnsupportedFormat

SIXTEEN_BIT_MODES = {"I;16", "I;16B", "I;16L", "I;16N", "I"}


def read_bounded(stream: BinaryIO, max_bytes: int, name: str = "the file") -> bytes:
    """All of `stream`, or TooLarge once it passes `max_bytes`."""
    data = stream.read(max_bytes + 1)
    if len(data) > max_bytes:
        raise TooLarge(f"{name} is larger than the {max_bytes:,}-byte limit per image")
    return data


def to_rgb(image: Image.Image) -> Image.Image:
    """An 8-bit RGB version of any Pillow mode; transparency is laid over white."""
    mode = image.mode
    if mode == "RGB":
        return image
    if mode in SIXTEEN_BIT_MODES:
        # 16-bit grey (PNG, TIFF): scale 0..65535 to 0..255 instead of clipping at 255.
        values = np.asarray(image, dtype=np.float64) / 257.0
        grey = np.clip(np.round(values), 0, 255).astype(np.uint8)
        return Image.fromarray(grey, mode="L").convert("RGB")
    if mode == "F":
        raise BadImage("floating-point images are not supported: send an 8- or 16-bit image")
    if image.has_transparency_data:
        rgba = image.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return image.convert("RGB")


def decode_image(
    data: bytes, *, max_pixels: int, accepted_formats: tuple[str, ...], name: str = "the file"
) -> Image.Image:
    """Bytes of one uploaded cell image -> a loaded RGB PIL image, upright per its EXIF tag."""
    if not data:
        raise BadImage(f"{name} is empty")
    try:
        image = Image.open(io.BytesIO(data))
    except Image.DecompressionBombError as exc:
        raise TooLarge(f"{name} has too many pixels (limit {max_pixels:,})") from exc
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise BadImage(f"{name} is not an image that can be read") from exc
    with image:
        fmt = (image.format or "").upper()
        if fmt not in accepted_formats:
            raise UnsupportedFormat(
                f"{name} is a {fmt or 'unknown'} image; accepted formats: "
                + ", ".join(accepted_formats)
            )
        width, height = image.size
        if width < 1 or height < 1:
            raise BadImage(f"{name} has no pixels")
        if width * height > max_pixels:
            raise TooLarge(
                f"{name} is {width}x{height} pixels, more than the limit of {max_pixels:,}"
            )
        frames = int(getattr(image, "n_frames", 1))
        if frames > 1:
            raise BadImage(
                f"{name} holds {frames} frames (animated or multi-page): "
                "send one still image per cell"
            )
        try:
            image.load()
            upright = ImageOps.exif_transpose(image)
            return to_rgb(upright)
        except BadImage:
            raise
        except Exception as exc:  # Pillow raises many kinds on hostile input
            raise BadImage(f"{name} is corrupt or truncated and could not be decoded") from exc
