"""How research/nucleus_probe.py chooses the nucleus rule: within the red-cell budget on every
validation split used, the rule recognising the most labelled white cells, then the one losing
the fewest red cells, then the loosest."""

from __future__ import annotations

from typing import Any

import pytest

from research.nucleus_probe import MAX_RED_LOSS, RULES, choose, folds, validation_splits


def table(scores: dict[str, tuple[int, int]]) -> dict[str, Any]:
    """A probe table over every rule of the grid: `scores` gives some rules (red cells lost of
    1,000, labelled white cells recognised of 50) on two splits; the rest lose every red cell."""
    out: dict[str, Any] = {}
    for rule in RULES:
        lost, whites = scores.get(rule.key(), (1000, 50))
        out[rule.key()] = {
            where: {"red": [lost, 1000], "labelled_white": [whites, 50]}
            for where in ("a:val", "b:val")
        }
    return out


def test_the_red_cell_budget_comes_first() -> None:
    budget = int(MAX_RED_LOSS * 1000)
    scores = {"T1.3-F0.05": (budget + 1, 50), "T2.0-B0.5-F0.1": (budget, 40)}
    assert choose(table(scores), ["a:val", "b:val"]) == "T2.0-B0.5-F0.1"


def test_most_white_cells_then_the_fewest_red_cells_lost() -> None:
    scores = {"T2.5-B0.3-F0.3": (0, 49), "T1.3-B0.7-F0.1": (4, 50), "T2.0-B0.7-F0.2": (1, 50)}
    # Two rules recognise all 50 within the budget: the one at the budget's edge loses more red
    # cells, so the other is taken though it is stricter.
    assert choose(table(scores), ["a:val", "b:val"]) == "T2.0-B0.7-F0.2"


def test_then_the_loosest_rule() -> None:
    scores = {"T2.0-B0.7-F0.1": (0, 50), "T2.0-B0.7-F0.2": (0, 50), "T2.5-B0.3-F0.3": (0, 50)}
    # All recognise 50 and lose nothing: the lower share is the looser.
    assert choose(table(scores), ["a:val", "b:val"]) == "T2.0-B0.7-F0.1"
    scores["T1.6-B0.5-F0.3"] = (0, 50)  # lower darkness is looser still
    assert choose(table(scores), ["a:val", "b:val"]) == "T1.6-B0.5-F0.3"


def test_no_rule_within_the_budget_chooses_none() -> None:
    assert choose(table({}), ["a:val"]) is None


def test_each_source_is_left_out_in_turn_chula_too() -> None:
    assert folds("") == [["bccd"], ["bcd"], ["raabin"], ["chula"]]
    assert folds("bccd,bcd")[-1] == ["bccd", "bcd"]
    assert validation_splits(["chula"]) == ["bccd:val", "bcd:val", "raabin:val"]
    assert validation_splits(["bccd", "bcd"]) == ["raabin:val", "chula:val"]
    with pytest.raises(ValueError, match="unknown source"):
        folds("elsewhere")
