"""The one CSV writer: cells as spreadsheet rows, for `python -m app analyze-smear` (a field's red
cells) and GET /slides/{id}/cells.csv (a slide's cells with their reviews). Text a person typed
never runs as a formula in the spreadsheet that opens it."""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable, Sequence
from typing import Any

from core.smear.result import FieldResult

# A field's red cells, one row each (python -m app analyze-smear: <stem>_cells.csv).
FIELD_COLUMNS = (
    "id", "x", "y", "x0", "y0", "x1", "y1", "at_border", "counted", "label", "confidence",
    "needs_review", "familiarity",
)  # fmt: skip


def sheet_text(value: str | None) -> str:
    """Text that a spreadsheet will not run as a formula."""
    if not value:
        return ""
    return "'" + value if value[0] in "=+-@\t\r" else value


def csv_text(columns: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    """A CSV document (RFC 4180 line ends) of a header and rows."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\r\n")
    writer.writerow(columns)
    writer.writerows(rows)
    return out.getvalue()


def field_rows(result: FieldResult) -> list[list[Any]]:
    """A field's red cells as FIELD_COLUMNS rows."""
    return [
        [
            c.id,
            f"{c.x:.1f}",
            f"{c.y:.1f}",
            *c.box,
            c.at_border,
            c.counted,
            c.label,
            f"{c.confidence:.4f}",
            c.needs_review,
            "" if c.familiarity is None else f"{c.familiarity:.4f}",
        ]
        for c in result.cells
    ]
