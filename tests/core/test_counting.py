"""core/smear/counting.py: the one place counts, percentages and grades are computed."""

from __future__ import annotations

import pytest

from core.smear.counting import count_labels, grades, percentages


def test_counts_keep_every_class_and_skip_unknown_labels() -> None:
    counts = count_labels(
        ["normal", "spherocyte", "normal", "alien"], ["normal", "spherocyte", "teardrop"]
    )
    assert counts == {"normal": 2, "spherocyte": 1, "teardrop": 0}


def test_percentages_of_nothing_are_zero() -> None:
    assert percentages({"a": 0, "b": 0}) == {"a": 0.0, "b": 0.0}
    assert percentages({"a": 1, "b": 3}) == {"a": pytest.approx(25.0), "b": pytest.approx(75.0)}


def test_grades_only_for_graded_classes() -> None:
    shares = percentages(
        count_labels(["spherocyte"] * 30 + ["normal"] * 70, ["normal", "spherocyte"])
    )
    graded = grades(shares)
    assert "normal" not in graded and graded["spherocyte"] in {"1+", "2+", "3+"}
