"""Grades of red-cell morphology from the percentage of counted cells.

Scale: ICSH 2015 — L. Palmer et al., "ICSH recommendations for the standardization of nomenclature
and grading of peripheral blood cell morphological features", Int J Lab Hematol 2015;37:287-303,
its grading table for red cells, as this project reads it (transcribed, not re-checked against
the PDF when written; docs/smear.md says so too):
- most morphologies (macrocytes, microcytes, hypochromic, target, stomatocytes, ovalocytes,
  elliptocytes; echinocytes (burr cells) on the same general scale): 1+ 11-20 %, 2+ 21-50 %,
  3+ > 50 %;
- spherocytes and teardrop cells (dacrocytes): 1+ 5-10 %, 2+ 11-20 %, 3+ > 20 %;
- schistocytes: 1+ < 1 %, 2+ 1-2 %, 3+ > 2 % (ICSH asks for at least 1,000 red cells counted).
Percentages are rounded first (whole percent; schistocytes to 0.1 %), then compared with the lower
bound of each grade. Normal and uncategorised cells are not graded. A lab with its own cut-offs
should use them: the bounds are data (GRADING_SCALES), and the API returns them with each result.
"""

from __future__ import annotations

from dataclasses import dataclass

GRADING_SOURCE = (
    "ICSH 2015 (Palmer L. et al., Int J Lab Hematol 2015;37:287-303), grading of red cell "
    "morphology; percentages of the red cells counted"
)
GRADES = ("none", "1+", "2+", "3+")


@dataclass(frozen=True)
class GradingScale:
    bounds: tuple[float, float, float]  # lowest rounded percentage of 1+, 2+, 3+
    decimals: int = 0  # rounding before comparing


_GENERAL = GradingScale((11, 21, 51))
_SPHERO = GradingScale((5, 11, 21))
GRADING_SCALES: dict[str, GradingScale] = {
    "macrocyte": _GENERAL,
    "microcyte": _GENERAL,
    "hypochromia": _GENERAL,
    "target_cell": _GENERAL,
    "stomatocyte": _GENERAL,
    "ovalocyte": _GENERAL,
    "elliptocyte": _GENERAL,
    "burr_cell": _GENERAL,
    "spherocyte": _SPHERO,
    "teardrop": _SPHERO,
    "schistocyte": GradingScale((0.1, 1.0, 2.1), decimals=1),
}


def grade(label: str, percentage: float) -> str | None:
    """'none', '1+', '2+' or '3+' for a class's percentage; None for classes that are not graded."""
    scale = GRADING_SCALES.get(label)
    if scale is None:
        return None
    value = round(percentage, scale.decimals)
    return GRADES[sum(value >= bound for bound in scale.bounds)]


def scales_for(classes: list[str]) -> dict[str, dict[str, object]]:
    """The scales of the graded classes among `classes`, as plain data (for the API and page)."""
    return {
        c: {"bounds": list(GRADING_SCALES[c].bounds), "decimals": GRADING_SCALES[c].decimals}
        for c in classes
        if c in GRADING_SCALES
    }
