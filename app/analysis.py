"""One smear field, from bytes to a result, under the service's settings (RBC_*).

POST /analyze/smear and `python -m app analyze-smear` both go through here, so a file gets the
same answer, the same limits and the same refusals from the command line as from the API.
Errors are core's (ImageError, SmearTooLarge, SmearError); each caller words them its own way
(an HTTP status, or a line on stderr).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import BinaryIO

from PIL import Image

from app.config import Settings
from core.classify.predictor import Predictor
from core.detect.learned import CellDetector
from core.imageio import decode_image, read_bounded
from core.smear.analysis import AnalysedField, analyze_smear, check_working_size


def read_field(
    stream: BinaryIO, name: str, settings: Settings, microns_per_pixel: float | None
) -> Image.Image:
    """Read and decode one field within the byte, pixel, format and aspect caps; the smear
    budget (RBC_MAX_SMEAR_PIXELS at the working scale) is checked from the header, before any
    pixel is decoded."""
    data = read_bounded(stream, settings.max_upload_bytes, name)

    def fits(width: int, height: int) -> None:
        check_working_size((width, height), microns_per_pixel, settings.max_smear_pixels)

    return decode_image(
        data,
        max_pixels=settings.max_pixels,
        accepted_formats=settings.accepted_formats,
        max_aspect_ratio=settings.max_aspect_ratio,
        check_size=fits,
        name=name,
    )


def analyze_field(
    image: Image.Image,
    predictor: Predictor,
    detector: CellDetector | None,
    settings: Settings,
    microns_per_pixel: float | None,
    *,
    keep_crops: bool = False,
    check: Callable[[], None] | None = None,
) -> AnalysedField:
    """Find, classify, count and grade the cells of a decoded field (core.smear.analysis)."""
    return analyze_smear(
        image,
        predictor,
        microns_per_pixel,
        keep_crops=keep_crops,
        max_working_pixels=settings.max_smear_pixels,
        max_cells=settings.max_smear_cells,
        check=check,
        detector=detector,
    )
