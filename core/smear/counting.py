"""Counts, percentages and grades of classified cells: the one place they are computed (the
batch summary, a smear field, a slide, the smear evaluation, and the page's reclassified cells,
which it sends back to POST /analyze/smear/counts)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

from core.smear.grading import grade


def count_labels(labels: Iterable[str], classes: Sequence[str]) -> dict[str, int]:
    """Cells per class, every class of `classes` present (0 when none); labels outside
    `classes` are not counted."""
    counts = dict.fromkeys(classes, 0)
    for label in labels:
        if label in counts:
            counts[label] += 1
    return counts


def percentages(counts: Mapping[str, int]) -> dict[str, float]:
    """Each class's share of the counted cells, in %; all 0 when nothing was counted."""
    total = sum(counts.values())
    return {c: (100.0 * n / total if total else 0.0) for c, n in counts.items()}


def grades(shares: Mapping[str, float]) -> dict[str, str]:
    """The ICSH grade of every graded class ('none', '1+', '2+', '3+'; core/smear/grading.py)."""
    graded = {c: grade(c, p) for c, p in shares.items()}
    return {c: g for c, g in graded.items() if g is not None}
