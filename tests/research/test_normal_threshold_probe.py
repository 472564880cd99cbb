"""research/normal_threshold_probe.py: a threshold of its own for the cells called normal."""

from __future__ import annotations

import numpy as np

from core.classify.calibration import Calibration
from research.normal_threshold_probe import figures


def test_a_higher_normal_threshold_flags_doubtful_normal_calls_only() -> None:
    calibration = Calibration(
        temperature=1.0,
        review_threshold=0.6,
        target_accuracy=0.97,
        cell_threshold=1.0,
        field_threshold=1.0,
    )
    # Classes: 0 normal, 1 spherocyte. Confidences 0.95, 0.73, 0.73, 0.73 (softmax of the gap).
    gap = {0.95: np.log(0.95 / 0.05), 0.73: np.log(0.73 / 0.27)}
    logits = np.array(
        [[gap[0.95], 0], [gap[0.73], 0], [gap[0.73], 0], [0, gap[0.73]]], dtype=np.float32
    )
    truth = np.array([0, 0, 1, 1])  # the third: an abnormal cell called normal
    near = np.zeros(4, dtype=np.float32)
    at_model = figures(logits, near, truth, calibration, normal=0, t_normal=0.0)
    assert at_model == {"missed": 0.5, "normal_flagged": 0.0, "unflagged": 1.0, "accuracy": 0.75}
    raised = figures(logits, near, truth, calibration, normal=0, t_normal=0.9)
    # The doubtful normal calls are flagged, the confident one and the spherocyte call are not.
    assert raised == {"missed": 0.0, "normal_flagged": 0.5, "unflagged": 0.5, "accuracy": 0.75}
    far = np.array([0, 0, 2, 0], dtype=np.float32)  # unlike the training cells: flagged anyway
    assert figures(logits, far, truth, calibration, normal=0, t_normal=0.0)["missed"] == 0.0
