"""Bounded reading and safe decoding of images: the one path every image takes, from the
service's uploads and from the command line alike, so that a file gets the same answer both ways.

The format is sniffed from the bytes (never from the file name or the declared type); the pixel
count, the aspect ratio and the number of frames are checked from the header before any pixel is
decoded (decompression bombs, 20000x1 strips, TIFFs of 100,000 pages); and an image far larger
than its consumer needs is shrunk while it is decoded (JPEG draft mode) or right after, so that no
request keeps more than a bounded number of pixels. Every image mode becomes the RGB image the
model was trained on, or a clear error.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from typing import BinaryIO

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

MIB = 1 << 20
# The limits both the service (app/config.py, RBC_* settings) and the command line start from.
DEFAULT_FORMATS = ("PNG", "JPEG", "TIFF", "BMP")  # Pillow's names, sniffed from the bytes
DEFAULT_MAX_BYTES = 10 * MIB
DEFAULT_MAX_PIXELS = 4096 * 4096
DEFAULT_MAX_ASPECT_RATIO = 10.0


class ImageError(ValueError):
    """An image that cannot be used, in plain words; `status` is the HTTP code it maps to."""

    status = 422

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail


class BadImage(ImageError):
    """Empty, corrupt, truncated, not an image, multi-page, or of a kind the model cannot take."""


class TooLarge(ImageError):
    status = 413


class UnsupportedFormat(ImageError):
    status = 415


SIXTEEN_BIT_MODES = {"I;16", "I;16B", "I;16L", "I;16N", "I"}

# Called with the header's (width, height) before any pixel is decoded; raises to refuse.
SizeCheck = Callable[[int, int], None]


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


def has_more_frames(image: Image.Image) -> bool:
    """Whether the file holds a second frame or page, in constant time: `n_frames` walks every
    page of a TIFF (a 10 MB file of 100,000 one-pixel pages costs a minute); Pillow's
    `is_animated` reads one header (TIFF: the next-page pointer; GIF, APNG: the first frames)."""
    if hasattr(image, "is_animated"):
        return bool(image.is_animated)
    try:
        image.seek(1)
    except EOFError:
        return False
    return True


def shrink_factor(width: int, height: int, max_side: int | None) -> int:
    """The integer factor that brings the longer side to at most ~max_side (at least max_side
    itself stays): box-averaging by an integer is exact, fast and needs no temporary copy."""
    if max_side is None:
        return 1
    return max(1, max(width, height) // max_side)


def decode_image(
    data: bytes,
    *,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    accepted_formats: tuple[str, ...] = DEFAULT_FORMATS,
    max_aspect_ratio: float = DEFAULT_MAX_ASPECT_RATIO,
    max_side: int | None = None,
    check_size: SizeCheck | None = None,
    name: str = "the file",
) -> Image.Image:
    """Bytes of one uploaded image -> a loaded RGB PIL image, upright per its EXIF tag.

    `max_side`: the consumer needs no more than this many pixels along the longer side (a cell
    classified at 96 px); larger images are decoded at a reduced scale where the format allows
    (JPEG) and box-averaged by an integer factor otherwise, so that the longer side lies between
    max_side and 2 * max_side. `check_size` may refuse the header's size by raising.
    """
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
        if max(width, height) > max_aspect_ratio * min(width, height):
            raise BadImage(
                f"{name} is {width}x{height} pixels: a cell image or smear field is not more "
                f"than {max_aspect_ratio:g} times longer than it is wide"
            )
        if check_size is not None:
            check_size(width, height)
        try:
            if has_more_frames(image):
                raise BadImage(
                    f"{name} holds several frames (animated or multi-page): "
                    "send one still image per request"
                )
            factor = shrink_factor(width, height, max_side)
            if factor > 1 and fmt == "JPEG":
                # Decode at 1/2, 1/4 or 1/8 scale: the full-size pixels are never held.
                image.draft("RGB", (width // factor, height // factor))
            image.load()
            decoded: Image.Image = image
            factor = shrink_factor(*image.size, max_side)
            if factor > 1:
                try:
                    decoded = image.reduce(factor)
                except ValueError:  # a mode reduce() does not take (16-bit grey, palette...)
                    decoded = to_rgb(image).reduce(factor)
            upright = ImageOps.exif_transpose(decoded)
            return to_rgb(upright)
        except BadImage:
            raise
        except Exception as exc:  # Pillow raises many kinds on hostile input
            raise BadImage(f"{name} is corrupt or truncated and could not be decoded") from exc
