"""Checks on what callers hand the records, before anything is written (InvalidInput, 422)."""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from typing import Any, Final

from records.entities import CellInput, FieldInput
from records.errors import (
    InvalidInput,
)
from records.schema import CELL_KINDS

MAX_PAGE: Final = 1000


SHA256 = re.compile(r"[0-9a-f]{64}")


def checked_text(value: object, what: str, max_len: int, *, empty: bool = False) -> str:
    if not isinstance(value, str):
        raise InvalidInput(f"{what} must be text")
    value = value.strip()
    if not value and not empty:
        raise InvalidInput(f"{what} is empty")
    if len(value) > max_len:
        raise InvalidInput(f"{what} is longer than {max_len} characters")
    return value


def checked_scale(value: float | None, what: str = "microns_per_pixel") -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InvalidInput(f"{what} must be a number")
    if not math.isfinite(value) or value <= 0:
        raise InvalidInput(f"{what} must be a positive number")
    return float(value)


def checked_json(value: Mapping[str, Any], what: str) -> dict[str, Any]:
    try:
        return dict(json.loads(json.dumps(dict(value), allow_nan=False)))
    except (TypeError, ValueError) as exc:
        raise InvalidInput(f"{what} is not plain JSON: {exc}") from None


def checked_finite(value: object, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise InvalidInput(f"{what} must be a finite number")
    return float(value)


def cell_row(i: int, cell: CellInput) -> dict[str, Any]:
    where = f"cell {i}"
    if cell.kind not in CELL_KINDS:
        raise InvalidInput(f"{where}: kind {cell.kind!r} is not one of {', '.join(CELL_KINDS)}")
    if len(cell.box) != 4 or not all(
        isinstance(v, int) and not isinstance(v, bool) for v in cell.box
    ):
        raise InvalidInput(f"{where}: box must be four integers x0, y0, x1, y1")
    x0, y0, x1, y1 = cell.box
    if x0 > x1 or y0 > y1:
        raise InvalidInput(f"{where}: box {cell.box} has x0 > x1 or y0 > y1")
    confidence = None if cell.confidence is None else checked_finite(cell.confidence, where)
    if confidence is not None and not 0 <= confidence <= 1:
        raise InvalidInput(f"{where}: confidence {confidence} is outside [0, 1]")
    probabilities: dict[str, float] | None = None
    if cell.kind == "red_cell":
        label = checked_text(cell.label, f"{where}: label", 64)
        if confidence is None:
            raise InvalidInput(f"{where}: a red cell needs a confidence")
        if cell.probabilities is not None:
            probabilities = {
                checked_text(k, f"{where}: class", 64): checked_finite(v, f"{where}: probability")
                for k, v in cell.probabilities.items()
            }
            if label not in probabilities:
                raise InvalidInput(f"{where}: label {label!r} is not among its probabilities")
    else:
        if cell.label is not None or cell.probabilities is not None:
            raise InvalidInput(f"{where}: a {cell.kind} has no label or probabilities")
        label = None
    return {
        "kind": cell.kind,
        "x": checked_finite(cell.x, f"{where}: x"),
        "y": checked_finite(cell.y, f"{where}: y"),
        "x0": x0,
        "y0": y0,
        "x1": x1,
        "y1": y1,
        "at_border": bool(cell.at_border),
        "counted": bool(cell.counted),
        "proposed_label": label,
        "confidence": confidence,
        "probabilities": probabilities,
        "needs_review": bool(cell.needs_review),
        "version": 1,
    }


def check_page(offset: int, limit: int) -> None:
    if offset < 0:
        raise InvalidInput("offset must be >= 0")
    if not 1 <= limit <= MAX_PAGE:
        raise InvalidInput(f"limit must be between 1 and {MAX_PAGE}")


def field_values(field_in: FieldInput) -> dict[str, Any]:
    """A field's columns, checked (InvalidInput before anything is written)."""
    filename = checked_text(field_in.filename, "filename", 255)
    media_type = checked_text(field_in.media_type, "media_type", 64)
    if not isinstance(field_in.image, bytes) or not field_in.image:
        raise InvalidInput("image must be non-empty bytes")
    for what, value in (("width", field_in.width), ("height", field_in.height)):
        if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
            raise InvalidInput(f"{what} must be a positive integer")
    classifier_name = checked_text(field_in.classifier_name, "classifier_name", 128)
    detector_name = checked_text(field_in.detector_name, "detector_name", 128)
    for what, digest in (
        ("classifier_sha256", field_in.classifier_sha256),
        ("detector_sha256", field_in.detector_sha256),
    ):
        if (digest is not None or what == "classifier_sha256") and not (
            isinstance(digest, str) and SHA256.fullmatch(digest)
        ):
            raise InvalidInput(f"{what} must be 64 lowercase hex digits")
    return {
        "filename": filename,
        "image": field_in.image,
        "media_type": media_type,
        "width": field_in.width,
        "height": field_in.height,
        "microns_per_pixel": checked_scale(field_in.microns_per_pixel),
        "scale_estimated": bool(field_in.scale_estimated),
        "classifier_name": classifier_name,
        "classifier_sha256": field_in.classifier_sha256,
        "detector_name": detector_name,
        "detector_sha256": field_in.detector_sha256,
        "summary": checked_json(field_in.summary, "summary"),
    }
