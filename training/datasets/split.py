"""Grouped, stratified, seeded train/valid/test split.

Cells of one smear image are not independent, so whole groups (smear images) are assigned to a
split. Within that constraint the split is stratified by iterative stratification (Sechidis et al.,
2011): classes are handled from the rarest to the commonest, and each group goes to the split that
is furthest below its target for that class. A local search then moves single groups while that
brings the per-class and overall counts closer to their targets.
"""

import math
import random
from collections.abc import Mapping, Sequence

SPLITS: tuple[str, str, str] = ("train", "valid", "test")
# The local search converges in a few passes; the cap only bounds the worst case.
_MAX_REFINE_PASSES = 20


def validate_fractions(fractions: Sequence[float]) -> tuple[float, float, float]:
    """Return `fractions` as a 3-tuple of floats; ValueError unless three non-negative numbers
    summing to 1."""
    values = tuple(float(f) for f in fractions)
    if len(values) != 3:
        raise ValueError(f"fractions must be three numbers (train, valid, test), got {fractions!r}")
    if any(not math.isfinite(f) or f < 0 for f in values):
        raise ValueError(f"fractions must be finite and non-negative, got {fractions!r}")
    if not math.isclose(sum(values), 1.0, abs_tol=1e-6):
        raise ValueError(f"fractions must sum to 1, got {fractions!r} (sum {sum(values):g})")
    return values[0], values[1], values[2]


class _State:
    """Running per-split tallies of cells and of groups per class."""

    def __init__(
        self,
        counts: Mapping[str, Mapping[str, int]],
        fractions: tuple[float, float, float],
        order: Mapping[str, int],
    ) -> None:
        self.counts = counts
        self.order = order  # seeded position of each group, for reproducible tie breaks
        self.active = [s for s, f in zip(SPLITS, fractions, strict=True) if f > 0]
        totals: dict[str, int] = {}
        for group_counts in counts.values():
            for cls, n in group_counts.items():
                totals[cls] = totals.get(cls, 0) + n
        self.class_totals = totals
        grand_total = sum(totals.values())
        self.want_total = {s: f * grand_total for s, f in zip(SPLITS, fractions, strict=True)}
        self.want = {
            s: {c: f * t for c, t in totals.items()} for s, f in zip(SPLITS, fractions, strict=True)
        }
        self.cells = {s: dict.fromkeys(totals, 0) for s in SPLITS}
        self.groups_with = {s: dict.fromkeys(totals, 0) for s in SPLITS}
        self.cells_total = dict.fromkeys(SPLITS, 0)
        self.assignment: dict[str, str] = {}

    def _tally(self, group: str, split: str, sign: int) -> None:
        for cls, n in self.counts[group].items():
            self.cells[split][cls] += sign * n
            self.groups_with[split][cls] += sign
            self.cells_total[split] += sign * n

    def add(self, group: str, split: str) -> None:
        self._tally(group, split, 1)
        self.assignment[group] = split

    def move(self, group: str, split: str) -> None:
        self._tally(group, self.assignment[group], -1)
        self.add(group, split)

    def deficit_key(self, split: str, cls: str) -> tuple[float, float]:
        return (
            self.want[split][cls] - self.cells[split][cls],
            self.want_total[split] - self.cells_total[split],
        )

    def keeps_presence(self, group: str, target: str) -> bool:
        """False if moving `group` to `target` would take a class out of a split it is the last
        group of while that class is already in `target` (fewer splits would hold the class)."""
        source = self.assignment[group]
        return not any(
            self.groups_with[source][c] == 1 and self.groups_with[target][c] > 0
            for c in self.counts[group]
        )

    def n_groups_with(self, cls: str) -> int:
        return sum(self.groups_with[s][cls] for s in SPLITS)

    def _cost(self, split: str, cls: str | None, cells: int) -> float:
        """Squared deviation from the target, relative to the class total (None: all cells)."""
        if cls is None:
            # The overall fraction matters most: weigh it like all classes together.
            grand_total = sum(self.class_totals.values())
            return len(self.class_totals) * ((cells - self.want_total[split]) / grand_total) ** 2
        return ((cells - self.want[split][cls]) / self.class_totals[cls]) ** 2

    def move_gain(self, group: str, source: str, target: str) -> float:
        """How much moving `group` from `source` to `target` lowers the total cost."""
        moved: list[tuple[str | None, int, int, int]] = [
            (
                None,
                sum(self.counts[group].values()),
                self.cells_total[source],
                self.cells_total[target],
            )
        ]
        moved += [
            (c, n, self.cells[source][c], self.cells[target][c])
            for c, n in self.counts[group].items()
        ]
        return sum(
            self._cost(source, c, at_source)
            + self._cost(target, c, at_target)
            - self._cost(source, c, at_source - n)
            - self._cost(target, c, at_target + n)
            for c, n, at_source, at_target in moved
        )


def grouped_split(
    group_counts: Mapping[str, Mapping[str, int]],
    fractions: tuple[float, float, float] = (0.7, 0.15, 0.15),
    seed: int = 0,
) -> dict[str, str]:
    """Assign each group (a smear image id) to "train", "valid" or "test".

    `group_counts[group][class]` is the number of cells of `class` in `group`. Guarantees:
    - a group is never split;
    - the result depends only on the content of `group_counts`, `fractions` and `seed`
      (not on dict ordering);
    - a class found in at least as many groups as there are splits with a positive fraction
      (3 with the default fractions) is present in each of those splits;
    - cell counts per split are close to `fractions`, per class and overall, as far as the group
      sizes allow.
    Groups without cells are spread by number of groups. A split whose fraction is 0 gets nothing.
    Raises ValueError for bad fractions or negative counts.
    """
    fracs = validate_fractions(fractions)
    for group, per_class in group_counts.items():
        if any(n < 0 for n in per_class.values()):
            raise ValueError(f"negative cell count in group {group!r}: {dict(per_class)!r}")
    # Drop zero counts so that "group contains class" means "has at least one cell of it"; sort
    # classes so that float sums do not depend on the caller's dict order.
    counts = {
        str(g): {c: n for c, n in sorted((str(c), int(n)) for c, n in per_class.items()) if n > 0}
        for g, per_class in group_counts.items()
    }
    shuffled = sorted(counts)
    random.Random(seed).shuffle(shuffled)
    state = _State(counts, fracs, {g: i for i, g in enumerate(shuffled)})

    # Rarest first: rare classes have the fewest groups to place, so they get first pick.
    classes = sorted(state.class_totals, key=lambda c: (state.class_totals[c], c))
    for cls in classes:
        todo = [g for g in shuffled if g not in state.assignment and cls in counts[g]]
        # Presence first: give one group to each split still lacking the class, most wanted first.
        missing = [s for s in state.active if state.groups_with[s][cls] == 0]
        missing.sort(key=lambda s: state.deficit_key(s, cls), reverse=True)
        for split, group in zip(missing, todo, strict=False):
            state.add(group, split)
        for group in todo:
            if group not in state.assignment:
                best = max(state.active, key=lambda s: state.deficit_key(s, cls))
                state.add(group, best)

    # Empty groups do not change cell counts, so spread them by number of groups instead.
    empty = [g for g in shuffled if g not in state.assignment]
    placed = dict.fromkeys(SPLITS, 0)
    for group in empty:
        best = max(
            state.active,
            key=lambda s: fracs[SPLITS.index(s)] * len(empty) - placed[s],
        )
        placed[best] += 1
        state.assignment[group] = best

    required = {c for c in classes if state.n_groups_with(c) >= len(state.active)}
    _repair_presence(state, classes, required)
    _refine(state, shuffled)
    return {g: state.assignment[g] for g in sorted(counts)}


def _repair_presence(state: _State, classes: list[str], required: set[str]) -> None:
    """Move groups so that every class with enough groups is present in every active split.

    The main pass can miss this when all groups of a common class were already placed while
    handling rarer classes. A move never takes the last group of a required class out of a split.
    """
    for cls in classes:
        if cls not in required:
            continue
        for target in state.active:
            if state.groups_with[target][cls] > 0:
                continue
            candidates = []
            for group, source in state.assignment.items():
                if cls not in state.counts[group] or state.groups_with[source][cls] < 2:
                    continue
                lost = [k for k in state.counts[group] if state.groups_with[source][k] == 1]
                if any(k in required for k in lost):
                    continue
                # Prefer moves that remove no class from the source, then the smallest group.
                size = sum(state.counts[group].values())
                candidates.append((len(lost), size, state.order[group], group))
            if candidates:
                state.move(min(candidates)[-1], target)


def _refine(state: _State, shuffled: list[str]) -> None:
    """Local search: move single groups between splits while that brings the per-class and
    overall cell counts closer to their targets. Fixes the imbalance the greedy pass leaves on
    common classes, whose groups are mostly placed while handling rarer ones.

    A move never lowers the number of splits a class is present in.
    """
    for _ in range(_MAX_REFINE_PASSES):
        improved = False
        for group in shuffled:
            source = state.assignment[group]
            gains = {
                target: state.move_gain(group, source, target)
                for target in state.active
                if target != source and state.counts[group] and state.keeps_presence(group, target)
            }
            best = max(gains, key=lambda t: gains[t], default=None)
            # Strict improvement only, so the search cannot cycle.
            if best is not None and gains[best] > 1e-12:
                state.move(group, best)
                improved = True
        if not improved:
            return
