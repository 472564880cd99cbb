"""Classification metrics against scikit-learn, and the averaging choices made explicit."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import accuracy_score, f1_score, precision_score, recall_score
from sklearn.metrics import confusion_matrix as sk_confusion_matrix

from training.classify.evaluate import classification_metrics, confusion_matrix, most_confused

CLASSES = ["normal", "spherocyte", "target cell", "teardrop"]


def test_confusion_matrix_matches_sklearn() -> None:
    rng = np.random.default_rng(3)
    targets = rng.integers(0, 4, 200)
    preds = rng.integers(0, 4, 200)
    expected = sk_confusion_matrix(targets, preds, labels=range(4))
    np.testing.assert_array_equal(confusion_matrix(targets, preds, 4), expected)


def test_metrics_equal_sklearn_on_a_random_example() -> None:
    rng = np.random.default_rng(0)
    targets = rng.integers(0, 4, 300)
    # Mostly right, with class-dependent mistakes, so the per-class numbers differ.
    preds = np.where(rng.random(300) < 0.7, targets, rng.integers(0, 4, 300))
    preds[(targets == 2) & (rng.random(300) < 0.3)] = 3
    labels = list(range(4))

    m = classification_metrics(targets, preds, CLASSES)

    assert m["n"] == 300
    assert m["accuracy"] == pytest.approx(accuracy_score(targets, preds), abs=5e-5)
    assert m["macro_f1"] == pytest.approx(
        f1_score(targets, preds, average="macro", labels=labels), abs=5e-5
    )
    f1 = f1_score(targets, preds, average=None, labels=labels)
    precision = precision_score(targets, preds, average=None, labels=labels)
    recall = recall_score(targets, preds, average=None, labels=labels)
    support = np.bincount(targets, minlength=4)
    assert list(m["per_class"]) == CLASSES
    for i, name in enumerate(CLASSES):
        row = m["per_class"][name]
        assert row["f1"] == pytest.approx(f1[i], abs=5e-5), name
        assert row["precision"] == pytest.approx(precision[i], abs=5e-5), name
        assert row["recall"] == pytest.approx(recall[i], abs=5e-5), name
        assert row["support"] == support[i]
    assert sum(row["support"] for row in m["per_class"].values()) == 300


def test_macro_f1_averages_only_classes_with_support() -> None:
    # "teardrop" (3) never occurs in the targets, but is predicted once by mistake.
    targets = np.array([0, 0, 0, 1, 1, 2, 2, 2])
    preds = np.array([0, 0, 3, 1, 1, 2, 2, 0])
    m = classification_metrics(targets, preds, CLASSES)

    assert m["per_class"]["teardrop"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 0}
    present = [0, 1, 2]
    expected = f1_score(targets, preds, average="macro", labels=present, zero_division=0)
    assert m["macro_f1"] == pytest.approx(expected, abs=5e-5)
    # scikit-learn's macro over all four labels counts the absent class as an F1 of 0:
    # a lower number that would change with whether a set happens to hold the class.
    over_all = f1_score(targets, preds, average="macro", labels=range(4), zero_division=0)
    assert over_all < m["macro_f1"]
    assert over_all == pytest.approx(m["macro_f1"] * 3 / 4, abs=1e-4)


def test_perfect_and_hopeless_predictions() -> None:
    targets = np.array([0, 1, 2, 3, 0, 1])
    perfect = classification_metrics(targets, targets.copy(), CLASSES)
    assert perfect["accuracy"] == 1.0 and perfect["macro_f1"] == 1.0
    hopeless = classification_metrics(targets, (targets + 1) % 4, CLASSES)
    assert hopeless["accuracy"] == 0.0 and hopeless["macro_f1"] == 0.0
    assert all(row["f1"] == 0.0 for row in hopeless["per_class"].values())


def test_empty_input_gives_zero_items_without_crashing() -> None:
    for empty in (np.array([], dtype=np.int64), np.array([])):
        m = classification_metrics(empty, empty, CLASSES)
        assert m["n"] == 0
        assert m["accuracy"] == 0.0 and m["macro_f1"] == 0.0
        assert all(row["support"] == 0 for row in m["per_class"].values())


def test_most_confused_largest_first() -> None:
    cm = np.array(
        [
            [50, 2, 7, 0],
            [1, 40, 0, 9],
            [4, 0, 30, 0],
            [0, 3, 0, 20],
        ]
    )
    pairs = most_confused(cm, CLASSES)
    assert pairs == [
        ("spherocyte", "teardrop", 9),
        ("normal", "target cell", 7),
        ("target cell", "normal", 4),
        ("teardrop", "spherocyte", 3),
        ("normal", "spherocyte", 2),
        ("spherocyte", "normal", 1),
    ]
    # The diagonal (right answers) and empty cells never appear.
    assert all(actual != predicted and n > 0 for actual, predicted, n in pairs)
    assert most_confused(cm, CLASSES, top=2) == pairs[:2]
    assert most_confused(np.diag([5, 5, 5, 5]), CLASSES) == []


def test_most_confused_ties_keep_row_order() -> None:
    cm = np.array([[0, 3, 3], [3, 0, 0], [0, 3, 0]])
    pairs = most_confused(cm, ["a", "b", "c"])
    assert pairs == [("a", "b", 3), ("a", "c", 3), ("b", "a", 3), ("c", "b", 3)]
