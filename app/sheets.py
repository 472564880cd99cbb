"""The one CSV writer: cells as spreadsheet rows, for `python -m app analyze-smear` (a field's red
cells), GET /slides/{id}/cells.csv (a slide's cells with their reviews), and the page's downloads
(POST /analyze/smear/cells.csv: a field's cells as reclassified; POST /predict/batch/results.csv).
Text a person typed never runs as a formula in the spreadsheet that opens it."""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable, Sequence
from typing import Any

from app.schemas import BatchItemIn, SmearCellIn
from core.smear.result import FieldResult
from records.store import CellRecord, FieldRecord

# A field's red cells, one row each (python -m app analyze-smear: <stem>_cells.csv).
FIELD_COLUMNS = (
    "id", "x", "y", "x0", "y0", "x1", "y1", "at_border", "counted", "label", "confidence",
    "needs_review", "familiarity",
)  # fmt: skip


# A slide's cells, one row each (GET /slides/{id}/cells.csv).
CSV_COLUMNS = (
    "field", "field_id", "filename", "cell_id", "kind", "x", "y", "x0", "y0", "x1", "y1",
    "at_border", "counted", "proposed_class", "final_class", "class", "confidence",
    "needs_review", "reviewed_by", "reviewed_at", "version",
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


def slide_rows(fields: Sequence[FieldRecord], cells: Iterable[CellRecord]) -> list[list[Any]]:
    """A slide's cells as CSV_COLUMNS rows, each with its field's ordinal and file name."""
    by_id = {f.id: f for f in fields}
    rows = []
    for c in cells:
        f = by_id.get(c.field_id)
        rows.append(
            [
                f.ordinal if f else "",
                c.field_id,
                sheet_text(f.filename if f else None),
                c.id,
                c.kind,
                f"{c.x:.1f}",
                f"{c.y:.1f}",
                *c.box,
                c.at_border,
                c.counted,
                c.proposed_label or "",
                c.final_label or "",
                c.label or "",
                "" if c.confidence is None else f"{c.confidence:.4f}",
                c.needs_review,
                sheet_text(c.reviewed_by),
                c.reviewed_at.isoformat() if c.reviewed_at else "",
                c.version,
            ]
        )
    return rows


# The page's two downloads keep the columns and the number formats the page wrote before the
# server did (lower-case true/false, six decimals), so that spreadsheets built on them still work.
def page_flag(value: bool) -> str:
    return "true" if value else "false"


def page_number(value: float | None, decimals: int = 6) -> str:
    return "" if value is None else f"{value:.{decimals}f}"


def smear_columns(classes: Sequence[str]) -> list[str]:
    """A field's cells as the page holds them: one probability column per class."""
    return [
        "id", "x", "y", "x0", "y0", "x1", "y1", "at_border", "counted", "label", "model_label",
        "reclassified", "confidence", "needs_review", *(f"p_{c}" for c in classes),
    ]  # fmt: skip


def smear_rows(cells: Iterable[SmearCellIn], classes: Sequence[str]) -> list[list[Any]]:
    return [
        [
            c.id,
            page_number(c.x, 1),
            page_number(c.y, 1),
            *(c.box or ("", "", "", "")),
            page_flag(c.at_border),
            page_flag(c.counted),
            c.label,
            c.model_label or c.label,
            page_flag(c.reclassified),
            page_number(c.confidence),
            page_flag(c.needs_review),
            *(page_number(c.probabilities.get(k)) for k in classes),
        ]
        for c in cells
    ]


def batch_columns(classes: Sequence[str]) -> list[str]:
    """Single-cell results, one row per file sent."""
    return [
        "filename",
        "label",
        "confidence",
        "needs_review",
        "error",
        *(f"p_{c}" for c in classes),
    ]


def batch_rows(items: Iterable[BatchItemIn], classes: Sequence[str]) -> list[list[Any]]:
    rows: list[list[Any]] = []
    for item in items:
        p = item.prediction
        rows.append(
            [
                sheet_text(item.filename),
                p.label if p else "",
                page_number(p.confidence) if p else "",
                page_flag(p.needs_review) if p else "",
                sheet_text(item.error.detail if item.error else None),
                *(page_number(p.probabilities.get(k)) if p else "" for k in classes),
            ]
        )
    return rows
