"""The last layer refitted on a laboratory's reviewed cells and the replayed base cells.

Why the last layer only: it reads 512 features of the body, which stay as they were, so the
replay can travel as features, the familiarity statistics stay in the same space, a few hundred
reviewed cells cannot overfit a body of 3.6 M weights, and the fit takes seconds on a CPU. A first
measurement on a real laboratory (issue #27) found a linear layer on these features trained on
its reviews called spherocytes at precision 0.78 / recall 0.90 where the shipped model gave
0.41 / 0.995; re-estimating the body's BatchNorm statistics on that lab instead made it worse.

The loss: cross-entropy on the lab's cells (weighted `lab_weight`) plus cross-entropy on the
replayed base cells (so that classes the lab did not review are kept), plus `l2` times the squared
distance to the base weights (so that a small review set moves the layer only as far as it must).
A class the base lacks starts from zero weights and is pulled only by NEW_ROW_L2 (it has no
base to stay near). Full-batch L-BFGS: deterministic, no learning rate to choose.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch.nn import functional as F

# Chosen on simulated laboratories (bench/bench_adapt.py), never on a foreign lab's image.
LAB_WEIGHT = 1.0
L2 = 1e-3
MAX_ITER = 300
NEW_ROW_L2 = 1e-4  # a new class's row: kept finite, not held at zero


@dataclass(frozen=True)
class HeadFit:
    weight: torch.Tensor  # (classes, D)
    loss: float
    iterations: int


def extend_weights(base: torch.Tensor, base_classes: list[str], classes: list[str]) -> torch.Tensor:
    """The base layer's rows in the order of `classes`; zeros for a class the base lacks."""
    rows = []
    for name in classes:
        if name in base_classes:
            rows.append(base[base_classes.index(name)])
        else:
            rows.append(torch.zeros(base.shape[1], dtype=base.dtype))
    return torch.stack(rows)


def fit_last_layer(
    start: torch.Tensor,
    lab: tuple[np.ndarray, np.ndarray],
    replay: tuple[np.ndarray, np.ndarray],
    *,
    new_rows: int = 0,
    lab_weight: float = LAB_WEIGHT,
    l2: float = L2,
    max_iter: int = MAX_ITER,
    replay_class_weights: torch.Tensor | None = None,
) -> HeadFit:
    """Fit a bias-free linear layer from `start` (classes, D). `lab` and `replay` are (features,
    class indices into the rows of `start`); either may be empty but not both. The last
    `new_rows` rows are classes the base lacks. `replay_class_weights` (classes,) weighs the
    replayed cells' loss by class (a replay in its training mix, weighed as it was trained)."""
    anchor = start.double()
    pull = torch.full((len(start), 1), l2, dtype=torch.float64)
    if new_rows:
        pull[len(start) - new_rows :] = NEW_ROW_L2
    weight = anchor.clone().requires_grad_(True)
    replay_weights = None if replay_class_weights is None else replay_class_weights.double()
    parts = [
        (
            torch.from_numpy(np.array(x, dtype=np.float64)),
            torch.from_numpy(np.array(y, dtype=np.int64)),
            w,
            by_class,
        )
        for (x, y), w, by_class in ((lab, lab_weight, None), (replay, 1.0, replay_weights))
        if len(y)
    ]
    if not parts:
        raise ValueError("no cells to fit the last layer on")
    optimiser = torch.optim.LBFGS(
        [weight], lr=1.0, max_iter=max_iter, history_size=20, line_search_fn="strong_wolfe"
    )
    calls = 0

    def objective() -> torch.Tensor:
        loss = (pull * (weight - anchor).pow(2)).sum()
        for x, y, w, by_class in parts:
            loss = loss + w * F.cross_entropy(x @ weight.T, y, weight=by_class)
        return loss

    def closure() -> torch.Tensor:
        nonlocal calls
        calls += 1
        optimiser.zero_grad()
        loss = objective()
        loss.backward()
        return loss

    optimiser.step(closure)
    with torch.no_grad():
        final = float(objective())
    return HeadFit(weight=weight.detach().float(), loss=final, iterations=calls)
