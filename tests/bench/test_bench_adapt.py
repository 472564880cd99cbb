"""The simulated-laboratory bench (bench/bench_adapt.py): what a clinic of healthy donors sees,
and which cells a laboratory that follows the review queue reviews."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from PIL import Image

from bench.bench_adapt import (
    _lab_folder,
    _missed_abnormal,
    _normal_calls,
    _population,
    _reviewed_first,
)
from records.views import _draw
from training.adapt.judging import read_population
from training.datasets.slides import POPULATION_FILE


@dataclass
class Called:
    label: str
    needs_review: bool


class Scripted:
    """A predictor that answers a fixed list, whatever the images."""

    def __init__(self, answers: list[Called]) -> None:
        self.answers = answers

    def predict(self, images: list[Any]) -> list[Called]:
        assert len(images) == len(self.answers)
        return self.answers


def test_normal_calls_count_abnormal_calls_without_the_cells_own_flag() -> None:
    answers = [
        Called("normal", False),
        Called("normal", True),  # normal, even if flagged
        Called("spherocyte", True),  # abnormal, but a person will look at it
        Called("spherocyte", False),  # abnormal and unflagged: the harm
    ]
    images = [Image.new("RGB", (8, 8))] * len(answers)
    assert _normal_calls(Scripted(answers), images) == (0.5, 0.25)


def test_missed_abnormal_counts_normal_calls_nobody_will_look_at() -> None:
    answers = [Called("normal", False), Called("normal", True), Called("target_cell", False)]
    images = [Image.new("RGB", (8, 8))] * len(answers)
    assert _missed_abnormal(Scripted(answers), images) == round(1 / 3, 4)


@dataclass
class Proposed:
    label: str
    confidence: float
    probabilities: dict[str, float]
    needs_review: bool = False


def _slides(tops: dict[str, list[float]]) -> tuple[pd.DataFrame, list[Proposed]]:
    """Crops of slides (smear -> each cell's top probability), all proposed normal."""
    rows, answers = [], []
    for smear, values in tops.items():
        for i, top in enumerate(values):
            rows.append({"source_image": smear, "path": f"{smear}{i}.png", "label": "normal"})
            answers.append(Proposed("normal", top, {"normal": top, "spherocyte": 1 - top}))
    return pd.DataFrame(rows), answers


def test_the_queue_takes_each_slides_most_doubtful_cells_first() -> None:
    # Two slides of four cells; the margin (top-1 minus top-2) is what the queue orders by.
    margins = {"a": [0.9, 0.1, 0.5, 0.3], "b": [0.2, 0.8, 0.05, 0.6]}
    table, answers = _slides({k: [(1 + m) / 2 for m in v] for k, v in margins.items()})
    head = _reviewed_first(table, 4, answers)
    # Each slide's queue: one cell in ten (here one of four, drawn by records.views._draw) is a
    # random check, placed after the others here; the rest go least margin first. Every slide
    # is reviewed to the same depth: the first two of each queue.
    expected = []
    for sid, (smear, values) in enumerate(margins.items(), start=1):
        ids = [4 * (sid - 1) + i + 1 for i in range(4)]  # the cells' ids: row number + 1
        spot = min(ids, key=lambda c: (_draw(sid, c), c))
        main = sorted((c for c in ids if c != spot), key=lambda c: values[(c - 1) % 4])
        expected += [f"{smear}{(c - 1) % 4}.png" for c in main[:2]]
    assert sorted(head["path"]) == sorted(expected)
    assert list(head["source_image"]) == ["a", "b", "a", "b"]
    assert _reviewed_first(table, 100, answers).shape[0] == 8  # no more than there are
    # The rows keep their index: it is each crop's cell id in the laboratory's folder.
    assert all(table.loc[i, "path"] == row.path for i, row in head.iterrows())


def test_the_pages_default_list_takes_each_slides_least_confident_cells_first() -> None:
    table, answers = _slides({"a": [0.9, 0.6, 0.7, 0.95], "b": [0.55, 0.99, 0.8, 0.65]})
    head = _reviewed_first(table, 3, answers, order="confidence")
    assert list(head["path"]) == ["a1.png", "b0.png", "a2.png"]


def test_the_laboratorys_folder_lists_every_cell_of_its_reviewed_slides(tmp_path: Path) -> None:
    """population.csv as import-slides writes it: every crop of the smears that have a reviewed
    cell, with the base model's call, its margin and whether it was reviewed; read back by
    adapt's weighing."""
    table, answers = _slides({"a": [0.9, 0.6, 0.7, 0.95], "b": [0.55, 0.99], "c": [0.8]})
    table.index = table.index + 100  # cell ids are the crops' row indices, whatever they are
    reviewed = table.loc[[100, 101, 104]]
    chula = tmp_path / "chula"  # the smears' fields, for their colours
    (chula / "Dataset").mkdir(parents=True)
    for smear in "abc":
        Image.new("RGB", (16, 16), (200, 180, 190)).save(chula / "Dataset" / smear, format="PNG")
    lab = tmp_path / "lab"
    crops = [Image.new("RGB", (8, 8))] * 3
    _lab_folder(lab, reviewed, crops, chula, None, _population(table, answers))
    manifest = pd.read_csv(lab / "manifest.csv")
    population = pd.read_csv(lab / POPULATION_FILE)
    assert list(manifest["cell_id"]) == [100, 101, 104]
    assert sorted(population["cell_id"]) == [100, 101, 102, 103, 104, 105]  # not slide c's
    assert set(population.loc[population["reviewed"], "cell_id"]) == {100, 101, 104}
    by_id = population.set_index("cell_id")
    assert by_id.loc[101, "margin"] == pytest.approx(0.2)  # 0.6 - 0.4
    assert by_id.loc[104, "slide_id"] == manifest.loc[2, "slide_id"] != manifest.loc[0, "slide_id"]
    assert set(read_population(lab / POPULATION_FILE, {1, 2})["cell_id"]) == set(by_id.index)
