"""research/other_labs_head_probe.py: the calls and flags it counts, and the rule that picks the
other laboratories' weight from Chula alone."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from core.classify.calibration import Calibration
from research.other_labs_head_probe import choose, crop_figures, field_figures

CLASSES = ["normal", "spherocyte", "target_cell"]


def _calibration(threshold: float) -> Calibration:
    return Calibration(
        temperature=1.0,
        review_threshold=threshold,
        target_accuracy=0.97,
        cell_threshold=1.0,
        field_threshold=1.0,
    )


def test_field_figures_count_normal_unflagged_abnormal_and_spherocyte_calls() -> None:
    weight = torch.eye(3)  # each cell is called by its largest feature
    feats = np.array(
        [[5.0, 0, 0], [0, 5.0, 0], [0, 0.1, 0], [0, 0, 5.0]], dtype=np.float32
    )  # normal, a sure spherocyte, an unsure spherocyte (flagged), a sure target cell
    got = field_figures(weight, feats, _calibration(0.6), CLASSES)
    assert got == {"called_normal": 0.25, "abnormal_unflagged": 0.5, "called_spherocyte": 0.5}


def test_crop_figures_score_spherocytes_and_abnormal_cells_called_normal() -> None:
    weight = torch.eye(3)
    feats = np.array([[5.0, 0, 0], [5.0, 0, 0], [0, 5.0, 0], [0, 5.0, 0]], dtype=np.float32)
    truth = np.array([0, 1, 1, 0])  # a spherocyte called normal, a normal called spherocyte
    got = crop_figures(weight, feats, truth, _calibration(0.6), CLASSES)
    assert got["accuracy"] == 0.5
    assert got["normal_called_normal"] == 0.5
    assert got["abnormal_called_normal_unflagged"] == 0.5
    assert got["spherocyte_recall"] == 0.5
    assert got["spherocyte_precision"] == 0.5


def test_the_heaviest_weight_that_keeps_chula_is_chosen() -> None:
    candidates = [
        {"weight": 0.1, "forgetting": 0.005},
        {"weight": 0.25, "forgetting": 0.019},
        {"weight": 0.5, "forgetting": 0.03},
    ]
    assert choose(candidates) == pytest.approx(0.25)
    assert choose([{"weight": 0.1, "forgetting": 0.05}]) is None
