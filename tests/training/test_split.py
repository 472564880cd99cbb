"""Smear-grouped, stratified, seeded split."""

import math
from collections import Counter

import numpy as np
import pytest

from training.datasets.split import SPLITS, grouped_split, validate_fractions


def random_groups(seed: int, n_groups: int = 300) -> dict[str, dict[str, int]]:
    """Groups of varying size; class prevalence from common to rare (a few groups only)."""
    rng = np.random.default_rng(seed)
    prevalence = {"common": 0.9, "medium": 0.4, "uncommon": 0.1, "rare": 0.02}
    groups: dict[str, dict[str, int]] = {}
    for i in range(n_groups):
        groups[f"img{i}"] = {
            cls: int(rng.integers(1, 30)) for cls, p in prevalence.items() if rng.random() < p
        }
    # A class found in exactly 3 groups: the minimum that must reach all three splits.
    for i in rng.choice(n_groups, 3, replace=False):
        groups[f"img{i}"]["three_groups"] = int(rng.integers(1, 5))
    return groups


def cell_fractions(
    groups: dict[str, dict[str, int]], assignment: dict[str, str], cls: str | None = None
) -> dict[str, float]:
    cells: Counter[str] = Counter()
    for group, counts in groups.items():
        cells[assignment[group]] += sum(n for c, n in counts.items() if cls in (None, c))
    total = sum(cells.values())
    return {s: cells[s] / total for s in SPLITS}


def splits_holding(groups: dict[str, dict[str, int]], assignment: dict[str, str]) -> dict:
    holding: dict[str, set[str]] = {}
    for group, counts in groups.items():
        for cls, n in counts.items():
            if n > 0:
                holding.setdefault(cls, set()).add(assignment[group])
    return holding


def test_every_group_gets_one_split() -> None:
    groups = random_groups(0)
    assignment = grouped_split(groups)
    assert set(assignment) == set(groups)
    assert set(assignment.values()) == set(SPLITS)


def test_deterministic_and_independent_of_dict_order() -> None:
    groups = random_groups(1)
    assignment = grouped_split(groups, seed=5)
    assert grouped_split(groups, seed=5) == assignment
    reordered = {g: dict(reversed(list(c.items()))) for g, c in reversed(list(groups.items()))}
    assert grouped_split(reordered, seed=5) == assignment
    # The seed matters.
    assert any(grouped_split(groups, seed=s) != assignment for s in range(6, 10))


@pytest.mark.parametrize("seed", range(5))
def test_fractions_roughly_respected(seed: int) -> None:
    groups = random_groups(seed)
    assignment = grouped_split(groups, seed=seed)
    for cls in [None, "common", "medium", "uncommon"]:
        fractions = cell_fractions(groups, assignment, cls)
        for got, want in zip(fractions.values(), (0.7, 0.15, 0.15), strict=True):
            assert abs(got - want) < (0.02 if cls is None else 0.05), (cls, fractions)


@pytest.mark.parametrize("seed", range(5))
def test_class_in_three_groups_reaches_every_split(seed: int) -> None:
    groups = random_groups(seed)
    holding = splits_holding(groups, grouped_split(groups, seed=seed))
    assert holding["three_groups"] == set(SPLITS)
    assert holding["rare"] == set(SPLITS)


def test_presence_when_rarer_classes_took_all_groups() -> None:
    # Handling the rarer classes places all of "common"'s groups in train and valid; a later
    # move must bring one to test.
    groups = {
        "g1": {"rare": 1, "common": 5},
        "g2": {"rare": 1, "common": 5},
        "g3": {"rarest": 1, "common": 5},
    }
    for seed in range(10):
        holding = splits_holding(groups, grouped_split(groups, seed=seed))
        assert holding["common"] == set(SPLITS)


@pytest.mark.parametrize("seed", range(5))
def test_few_groups_go_where_most_wanted(seed: int) -> None:
    groups = {"a": {"x": 3}, "b": {"y": 2}, "c": {"y": 2}}
    groups |= {f"n{i}": {"z": 10} for i in range(20)}
    assignment = grouped_split(groups, seed=seed)
    assert assignment["a"] == "train"
    assert {assignment["b"], assignment["c"]} in ({"train", "valid"}, {"train", "test"})


def test_zero_fraction_split_gets_nothing() -> None:
    groups = random_groups(2, n_groups=60)
    assignment = grouped_split(groups, fractions=(0.8, 0.2, 0.0))
    assert set(assignment.values()) == {"train", "valid"}
    assert cell_fractions(groups, assignment)["valid"] == pytest.approx(0.2, abs=0.03)


def test_groups_without_cells_are_spread() -> None:
    groups: dict[str, dict[str, int]] = {f"empty{i}": {} for i in range(18)}
    groups |= {f"zero{i}": {"x": 0} for i in range(2)}
    groups |= {f"g{i}": {"x": 4} for i in range(10)}
    assignment = grouped_split(groups)
    empty = Counter(s for g, s in assignment.items() if not g.startswith("g"))
    assert empty == {"train": 14, "valid": 3, "test": 3}


def test_empty_input() -> None:
    assert grouped_split({}) == {}


@pytest.mark.parametrize(
    "fractions",
    [(0.5, 0.5), (0.8, 0.3, -0.1), (0.5, 0.3, 0.1), (math.nan, 0.5, 0.5), (0.7, 0.15, 0.15, 0.0)],
)
def test_bad_fractions(fractions: tuple[float, ...]) -> None:
    with pytest.raises(ValueError, match="fractions"):
        grouped_split({"a": {"x": 1}}, fractions=fractions)  # type: ignore[arg-type]


def test_validate_fractions_accepts_rounding() -> None:
    assert validate_fractions([0.7, 0.2, 0.1]) == (0.7, 0.2, 0.1)
    assert validate_fractions((1, 0, 0)) == (1.0, 0.0, 0.0)


def test_negative_counts() -> None:
    with pytest.raises(ValueError, match="negative"):
        grouped_split({"a": {"x": -1}})
