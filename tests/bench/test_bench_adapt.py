"""The simulated-laboratory bench (bench/bench_adapt.py): what a clinic of healthy donors sees."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from PIL import Image

from bench.bench_adapt import _missed_abnormal, _normal_calls


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
