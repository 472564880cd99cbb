"""Weights that make a laboratory's reviewed cells stand for its slides when adapt judges a fit.

A technologist who follows the review queue (records.views.teaching_order) reviews the doubtful
cells of each proposed class first, and every rare class in full: the reviewed cells are not the
slides' cells. Judged on them alone, a fit that reads the doubtful cells better wins even when it
reads the slides' typical cells worse; on a simulated laboratory that made adapt adopt a fit that
loses (bench/bench_lab_loop.py, bccd, the queue's draw 2; docs/training.md).

The selection depended only on what the analysis proposed and how sure it was, which the records
keep for every cell, reviewed or not (POPULATION_FILE of an import-slides output). So each
reviewed cell is weighed by the inverse of its stratum's review rate (Horvitz-Thompson): a
stratum is the proposed class and a third of that class's margins (top-1 minus top-2
probability) among the slides' cells. Random reviews get weights near 1, a slide reviewed in
full exactly 1. A stratum without a reviewed cell cannot be stood for: its share of the cells is
reported as `uncovered`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from training.datasets.slides import POPULATION_COLUMNS
from training.errors import DataError

MARGIN_BINS = 3  # per proposed class: doubtful, middling, sure
MIN_CELLS_PER_BIN = 10  # a class with fewer cells per bin among the slides is one stratum
THIN_SHARE = 0.2  # weighed cells worth less than this share of those judged: adapt says so


@dataclass(frozen=True)
class Judging:
    """Each judged cell's weight (mean 1), and how far the weights reach."""

    weights: np.ndarray
    effective_cells: float  # (sum w)^2 / sum w^2: how many equally weighed cells they are worth
    uncovered: float  # share of the slides' cells in strata no reviewed cell stands for
    strata: int  # strata holding a reviewed cell
    weighed: bool  # False: no population was known, every weight is 1

    def as_dict(self) -> dict[str, object]:
        return {
            "weighed": self.weighed,
            "effective_cells": round(self.effective_cells, 1),
            "uncovered": round(self.uncovered, 4),
            "strata": self.strata,
            "max_weight": round(float(self.weights.max()), 2) if len(self.weights) else None,
        }


def thin_evidence(judging: Judging) -> str | None:
    """A hint when the weighed cells are worth less than THIN_SHARE of those judged: the
    reviews lean on a few kinds of cell, so the judgement is weak and adapt keeps the base more
    often. None otherwise."""
    n = len(judging.weights)
    if not judging.weighed or not n or judging.effective_cells >= THIN_SHARE * n:
        return None
    return (
        f"the reviewed cells stand for their slides as only {judging.effective_cells:.0f} cells "
        f"of {n} would: most are of the kinds the review queue puts first. Reviewing some "
        "slides in full gives adapt firmer evidence"
    )


def unweighed(n: int) -> Judging:
    return Judging(np.ones(n), float(n), 0.0, 0, False)


def strata(population: pd.DataFrame) -> pd.Series:
    """Each cell's stratum: its proposed class and its margin's third within that class
    (thirds of the class's own margins); a cell without a margin is a stratum of its class."""
    label = population["proposed_label"].fillna("").astype(str)
    margin = pd.to_numeric(population["margin"], errors="coerce")
    bins = pd.Series("all", index=population.index, dtype=object)
    for idx in label.groupby(label).groups.values():
        m = margin.loc[idx]
        known = m.dropna()
        if len(known) < MARGIN_BINS * MIN_CELLS_PER_BIN:
            continue
        edges = np.quantile(known.to_numpy(), np.linspace(0, 1, MARGIN_BINS + 1)[1:-1])
        bins.loc[known.index] = np.searchsorted(edges, known.to_numpy(), side="right").astype(str)
        bins.loc[m.index[m.isna()]] = "none"
    return label + "|" + bins.astype(str)


def representative_weights(
    judged_cells: np.ndarray, population: pd.DataFrame | None, group: str = "slide_id"
) -> Judging:
    """Weights for the judged cells (their `cell_id`s, in the judging order) from the cells of
    the slides they come from (`population`: POPULATION_COLUMNS, every red cell of the
    laboratory's slides; `group="field_id"` where adapt holds out fields, not slides). Cells the
    population lacks, or no population at all, weigh 1."""
    n = len(judged_cells)
    if population is None or not n:
        return unweighed(n)
    groups = population.loc[population["cell_id"].isin(judged_cells), group]
    population = population[population[group].isin(groups)].reset_index(drop=True)
    if population.empty:
        return unweighed(n)
    stratum = strata(population)
    of_cell = dict(zip(population["cell_id"].to_numpy(), stratum.to_numpy(), strict=True))
    judged = pd.Series([of_cell.get(c) for c in judged_cells])
    if judged.isna().all():
        return unweighed(n)
    slides_total = stratum.value_counts()
    reviewed_total = judged.dropna().value_counts()
    rate = (reviewed_total / slides_total.reindex(reviewed_total.index)).to_dict()
    weights = np.array([1.0 / rate[s] if pd.notna(s) else np.nan for s in judged])
    known = ~np.isnan(weights)
    weights[known] *= known.sum() / weights[known].sum()  # mean 1 over the weighed cells
    weights[~known] = 1.0
    covered = slides_total.index.isin(reviewed_total.index)
    return Judging(
        weights=weights,
        effective_cells=float(weights.sum() ** 2 / (weights**2).sum()),
        uncovered=float(slides_total[~covered].sum() / slides_total.sum()),
        strata=int(covered.sum()),
        weighed=True,
    )


def read_population(path: Path, slides: set[object]) -> pd.DataFrame | None:
    """The population file's cells of `slides`, or None when there is no such file (a crop set
    imported before it was written, or made by hand)."""
    if not path.is_file():
        return None
    population = pd.read_csv(path)
    missing = set(POPULATION_COLUMNS) - set(population.columns)
    if missing:
        raise DataError(f"{path} lacks the columns {sorted(missing)}")
    return population[population["slide_id"].isin(slides)].reset_index(drop=True)
