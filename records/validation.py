"""Checks on what callers hand the records, before anything is written (InvalidInput, 422)."""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from typing import Any, Final

from records.entities import CellInput
from records.errors import (
    InvalidInput,
)
from records.schema import CELL_KINDS

MAX_PAGE: Final = 1000


_SHA256 = re.compile(r"[0-9a-f]{64}")


def _text(value: object, what: str, max_len: int, *, empty: bool = False) -> str:
    if not isinstance(value, str):
        raise InvalidInput(f"{what} must be text")
    value = value.strip()
    if not value and not empty:
        raise InvalidInput(f"{what} is empty")
    if len(value) > max_len:
        raise InvalidInput(f"{what} is longer than {max_len} characters")
    return value


def _scale(value: float | None, what: str = "microns_per_pixel") -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InvalidInput(f"{what} must be a number")
    if not math.isfinite(value) or value <= 0:
        raise InvalidInput(f"{what} must be a positive number")
    return float(value)


def _json(value: Mapping[str, Any], what: str) -> dict[str, Any]:
    try:
        return dict(json.loads(json.dumps(dict(value), allow_nan=False)))
    except (TypeError, ValueError) as exc:
        raise InvalidInput(f"{what} is not plain JSON: {exc}") from None


def _finite(value: object, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise InvalidInput(f"{what} must be a finite number")
    return float(value)


def _cell_row(i: int, cell: CellInput) -> dict[str, Any]:
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
    confidence = None if cell.confidence is None else _finite(cell.confidence, where)
    if confidence is not None and not 0 <= confidence <= 1:
        raise InvalidInput(f"{where}: confidence {confidence} is outside [0, 1]")
    probabilities: dict[str, float] | None = None
    if cell.kind == "red_cell":
        label = _text(cell.label, f"{where}: label", 64)
        if confidence is None:
            raise InvalidInput(f"{where}: a red cell needs a confidence")
        if cell.probabilities is not None:
            probabilities = {
                _text(k, f"{where}: class", 64): _finite(v, f"{where}: probability")
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
        "x": _finite(cell.x, f"{where}: x"),
        "y": _finite(cell.y, f"{where}: y"),
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


def _check_page(offset: int, limit: int) -> None:
    if offset < 0:
        raise InvalidInput("offset must be >= 0")
    if not 1 <= limit <= MAX_PAGE:
        raise InvalidInput(f"limit must be between 1 and {MAX_PAGE}")
