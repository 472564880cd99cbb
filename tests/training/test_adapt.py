"""`python -m training adapt`: a laboratory's reviewed, signed-off cells make the shipped model
its own, end to end on a small synthetic records database.

The database (made once for the module, SQLite; tests/lab_records.py builds it) holds four
signed-off slides of two synthetic fields each, at the training scale; every field has 35 red
cells on a grid, drawn as one of three kinds: a normal cell (pale centre), a spherocyte (smaller,
dense) and a sickle cell (a long thin ellipse: a class the shipped model lacks), plus three
"echinocytes" on one field (too few for a class of their own). Every cell is reviewed with its
true label.
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from tests.lab_records import BASE, SLIDES, draw_cell, lab_database
from tests.synthetic import SMEAR_BACKGROUND
from training.adapt.cells import MIN_CELLS, read_lab_cells
from training.adapt.figures import cell_figures, markdown_table
from training.adapt.head import extend_weights, fit_last_layer

REPO = Path(__file__).resolve().parents[2]


def _adapt(*args: str) -> subprocess.CompletedProcess[str]:
    environ = {k: v for k, v in os.environ.items() if k != "RBC_DATABASE_URL"}
    return subprocess.run(
        [sys.executable, "-m", "training", "adapt", "--no-progress", *args],
        cwd=REPO,
        env=environ,
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.fixture(scope="module")
def adapted(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    root = tmp_path_factory.mktemp("adapt")
    url = lab_database(root / "rbc.sqlite3", SLIDES)
    out = root / "models" / "lab"
    done = _adapt("--database", url, "--out", str(out))
    yield {"url": url, "out": out, "done": done, "root": root}


def test_adapt_writes_a_servable_model_that_learnt_the_lab(adapted: dict[str, Any]) -> None:
    from core.classify.predictor import Predictor

    done, out = adapted["done"], adapted["out"]
    assert done.returncode == 0, done.stderr
    assert "New class 'sickle_cell'" in done.stdout
    assert "Left out 'echinocyte': 3 reviewed cells; a class of its own needs 30 (27 more)" in (
        done.stdout
    )
    assert f"RBC_MODEL_DIR={out}" in done.stdout
    for name in ("model_card.json", "model.onnx", "model_state.pt", "export.pkl", "report.md"):
        assert (out / name).is_file(), name
    assert (out / "before_after.png").stat().st_size > 1000
    # Nothing left beside it: the scratch cells and the staging folder are gone.
    assert sorted(p.name for p in out.parent.iterdir()) == ["lab"]

    summary = json.loads((out / "adaptation.json").read_text())
    assert summary["new_classes"] == ["sickle_cell"]
    assert summary["held_out_by"] == "slide"
    # Every cell of these slides was reviewed, so they stand for themselves (the 3 echinocytes
    # left out are the only cells not judged).
    judging = summary["fit"]["judging"]
    assert judging["weighed"] and judging["uncovered"] == 0.0 and judging["max_weight"] < 1.2
    for when in ("before", "after"):
        figures = summary["figures"]["lab_test"][when]
        assert figures["accuracy_weighed"] == pytest.approx(figures["accuracy"], abs=0.03)
    before, after = (
        summary["figures"]["lab_test"]["before"],
        summary["figures"]["lab_test"]["after"],
    )
    assert before["n"] == after["n"] > 0
    # The shipped model cannot call a sickle cell; the adapted one was chosen on held-out slides
    # and does at least as well on other held-out slides.
    assert after["accuracy"] >= before["accuracy"]
    assert after["accuracy"] > 0.9, summary["figures"]["lab_test"]
    report = (out / "report.md").read_text()
    assert "## The laboratory's held-out test cells" in report
    # What a model taught on mostly normal cells risks, on the lab's cells and on the base's.
    assert report.count("| abnormal cells called normal without a flag |") == 2
    # The test slides' accuracy also weighed; how the fit was judged, and on what.
    assert report.count("| accuracy, the cells weighed to stand for their slides |") == 1
    assert "each weighed to stand for the slides' cells" in report

    # Served by both engines, with the lab's classes, and its own calibration.
    for engine in ("onnx", "torch"):
        predictor = Predictor.load(out, device="cpu", engine=engine)
        assert predictor.classes[-1] == "sickle_cell"
        assert predictor.calibration is not None
        canvas = np.empty((72, 72, 3), dtype=np.uint8)
        canvas[:] = SMEAR_BACKGROUND
        draw_cell(canvas, 36, 36, "sickle_cell")
        noise = np.random.default_rng(0).integers(-4, 5, size=canvas.shape)  # as the fields'
        pixels = np.clip(canvas.astype(np.int16) + noise, 0, 255).astype(np.uint8)
        (result,) = predictor.predict([Image.fromarray(pixels)])
        assert result.label == "sickle_cell"


def test_the_adapted_model_is_served_by_the_service(adapted: dict[str, Any]) -> None:
    from fastapi.testclient import TestClient

    from app.main import create_app
    from tests.app.helpers import make_settings, wait_ready

    assert adapted["done"].returncode == 0, adapted["done"].stderr
    with TestClient(create_app(make_settings(adapted["out"]))) as client:
        wait_ready(client)
        model = client.get("/model").json()
        assert model["classes"][-1] == "sickle_cell"


def test_too_few_reviewed_cells_is_refused_and_writes_nothing(tmp_path: Path) -> None:
    url = lab_database(tmp_path / "rbc.sqlite3", slides=1, review_every=3)
    out = tmp_path / "out"
    done = _adapt("--database", url, "--out", str(out))
    assert done.returncode == 2
    assert f"error: adapting needs at least {MIN_CELLS} reviewed red cells" in done.stderr
    assert "review and sign off" in done.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["rbc.sqlite3"]


def test_slides_not_signed_off_are_not_taught(tmp_path: Path) -> None:
    url = lab_database(tmp_path / "rbc.sqlite3", slides=1, sign=False)
    done = _adapt("--database", url, "--out", str(tmp_path / "out"))
    assert done.returncode == 2
    assert "no reviewed red cells on signed-off slides" in done.stderr
    assert not (tmp_path / "out").exists()


def test_an_earlier_folder_is_kept_without_overwrite(adapted: dict[str, Any]) -> None:
    out = adapted["out"]
    card = (out / "model_card.json").read_text()
    done = _adapt("--database", adapted["url"], "--out", str(out))
    assert done.returncode == 2
    assert "exists and is not empty" in done.stderr
    assert (out / "model_card.json").read_text() == card


def test_a_base_without_replay_is_refused(adapted: dict[str, Any], tmp_path: Path) -> None:
    import shutil

    base = tmp_path / "base"
    shutil.copytree(BASE, base)
    card = json.loads((base / "model_card.json").read_text())
    card["replay_file"] = None
    (base / "model_card.json").write_text(json.dumps(card))
    done = _adapt("--database", adapted["url"], "--out", str(tmp_path / "o"), "--base", str(base))
    assert done.returncode == 2
    assert "carries no replay set" in done.stderr


def test_an_adapted_model_adapts_again(adapted: dict[str, Any], tmp_path: Path) -> None:
    """A second round (`--base` the laboratory's model): its replay set and its own class come
    along, and a fit that cannot beat it keeps it."""
    out = tmp_path / "again"
    done = _adapt("--database", adapted["url"], "--out", str(out), "--base", str(adapted["out"]))
    assert done.returncode == 0, done.stderr
    card = json.loads((out / "model_card.json").read_text())
    assert "sickle_cell" in card["classes"] and card["replay_file"]
    summary = json.loads((out / "adaptation.json").read_text())
    assert Path(summary["base_model"]["path"]) == adapted["out"]
    assert summary["figures"]["lab_test"]["after"]["accuracy"] >= 0.9
    assert summary["figures"]["lab_test"]["after"]["per_class"]["sickle_cell"]["recall"] >= 0.9


# --- the parts ---------------------------------------------------------------------------------


def test_fit_moves_toward_the_lab_and_a_strong_pull_keeps_the_base() -> None:
    rng = np.random.default_rng(0)
    start = torch.eye(2, 4)
    x = rng.normal(size=(200, 4)).astype(np.float32)
    y = (x[:, 2] > 0).astype(np.int64)  # the lab's classes follow a feature the base ignores
    free = fit_last_layer(start, (x, y), (x[:0], y[:0]), l2=1e-3)
    assert float(((torch.as_tensor(x) @ free.weight.T).argmax(1).numpy() == y).mean()) > 0.95
    held = fit_last_layer(start, (x, y), (x[:0], y[:0]), l2=1e4)
    assert torch.allclose(held.weight, start, atol=1e-3)


def test_replayed_classes_can_be_weighed() -> None:
    # Two overlapping classes, nine cells of one for each of the other: weighing the rare class
    # up moves the boundary toward the common one, so more cells are called rare.
    rng = np.random.default_rng(0)
    x = np.concatenate([rng.normal(0.0, 1.0, (900, 2)), rng.normal(1.0, 1.0, (100, 2))])
    x = np.hstack([x, np.ones((1000, 1))]).astype(np.float32)  # a constant: the layer's bias
    y = np.repeat([0, 1], [900, 100]).astype(np.int64)
    start = torch.zeros(2, 3)
    plain = fit_last_layer(start, (x[:0], y[:0]), (x, y), l2=1e-6)
    weighed = fit_last_layer(
        start, (x[:0], y[:0]), (x, y), l2=1e-6, replay_class_weights=torch.tensor([1.0, 9.0])
    )

    def rare(fit: Any) -> int:
        return int(((torch.as_tensor(x) @ fit.weight.T).argmax(1) == 1).sum())

    assert rare(weighed) > 2 * rare(plain)


def test_the_replay_weighs_each_class_as_the_base_was_trained() -> None:
    from types import SimpleNamespace

    from training.adapt.replay import training_mix_weights

    card = SimpleNamespace(
        classes=["a", "b"],
        training_config={"class_weighting": "inverse_sqrt"},
        dataset={"class_counts": {"a": 400, "b": 100}},
    )
    replayed = np.array([0, 0, 1, 1])  # two replayed cells of each class
    weights = training_mix_weights(card, 3, replayed)  # type: ignore[arg-type]
    assert weights is not None
    # Each class's total in training, inverse-sqrt weighed: sqrt(400) : sqrt(100) = 2 : 1.
    assert weights[0] / weights[1] == pytest.approx(2.0)
    assert weights[replayed].mean() == pytest.approx(1.0)
    # Before the mean is taken out: 20 / 2, 10 / 2 and 1 for the laboratory's own class.
    assert weights == pytest.approx(np.array([10.0, 5.0, 1.0]) / 7.5)
    # An adapted model's card gives no training counts: the replay stays balanced.
    adapted = SimpleNamespace(classes=["a", "b"], training_config={}, dataset={"cells": 4})
    assert training_mix_weights(adapted, 2, replayed) is None  # type: ignore[arg-type]


def test_new_classes_start_from_zero_rows() -> None:
    base = torch.arange(6, dtype=torch.float32).reshape(2, 3)
    extended = extend_weights(base, ["a", "b"], ["a", "b", "c"])
    assert torch.equal(extended[:2], base)
    assert torch.equal(extended[2], torch.zeros(3))


def test_cell_figures_count_flags_and_abnormal_calls() -> None:
    probs = np.array([[0.9, 0.1], [0.4, 0.6], [0.8, 0.2], [0.3, 0.7]])
    targets = np.array([0, 1, 1, 1])
    fig = cell_figures(probs, targets, ["normal", "spherocyte"], 0.65, None, None)
    assert fig["accuracy"] == 0.75
    assert fig["unflagged_share"] == 0.75  # 0.6 is under the threshold
    assert fig["abnormal_unflagged"] == 0.25  # the 0.7 spherocyte call
    # Of the three spherocytes, one is called normal with 0.8: missed unseen.
    assert fig["abnormal_missed"] == 0.3333
    assert fig["per_class"]["spherocyte"] == {
        "precision": 1.0,
        "recall": 0.6667,
        "support": 3,
        "called": 2,
    }
    # Without a record of the slides' other cells there is no weighed accuracy, nor its row.
    assert fig["accuracy_weighed"] is None
    assert not any("weighed" in line for line in markdown_table(fig, fig))
    # The wrong cell (the third) stands for three cells like it.
    weighed = cell_figures(
        probs, targets, ["normal", "spherocyte"], 0.65, None, None, np.array([1.0, 1.0, 3.0, 1.0])
    )
    assert weighed["accuracy_weighed"] == 0.5 and weighed["accuracy"] == 0.75
    assert "| accuracy, the cells weighed to stand for their slides | 0.500 | 0.500 |" in (
        markdown_table(weighed, weighed)
    )


def test_fewer_than_three_slides_are_held_out_by_field(tmp_path: Path) -> None:
    import pandas as pd

    rows = [
        {"path": f"normal/{i}.png", "label": "normal", "slide_id": 1 + i % 2, "field_id": i % 6}
        for i in range(240)
    ]
    pd.DataFrame(rows).to_csv(tmp_path / "manifest.csv", index=False)
    fields = [{"field_id": f, **{f"c{i}": 0.0 for i in range(13)}} for f in range(6)]
    pd.DataFrame(fields).to_csv(tmp_path / "fields.csv", index=False)
    lab = read_lab_cells(tmp_path, ["normal", "spherocyte"])
    assert lab.group_by == "field"
    by_field = lab.rows.groupby("field_id")["part"].nunique()
    assert (by_field == 1).all()
    assert set(lab.rows["part"]) == {"fit", "calibrate", "test"}


def test_a_fit_must_beat_the_base_by_more_than_chance() -> None:
    from training.adapt.pipeline import MIN_GAIN_Z, gain_z

    base = np.array([True] * 80 + [False] * 20)
    assert gain_z(base, base) == 0.0
    two_more = base.copy()
    two_more[80:82] = True  # 2 wins, no loss: z 1.41, chance
    assert gain_z(base, two_more) < MIN_GAIN_Z
    ten_more = base.copy()
    ten_more[80:90] = True
    assert gain_z(base, ten_more) > MIN_GAIN_Z
    assert gain_z(ten_more, base) < 0


def test_a_new_class_no_fit_learnt_leaves_every_part(tmp_path: Path) -> None:
    import pandas as pd

    from training.adapt.cells import LabCells
    from training.adapt.head import HeadFit
    from training.adapt.pipeline import Features, _without_new_classes

    rows = pd.DataFrame({"label": ["a", "b", "new"], "target": [0, 1, 2], "part": ["fit"] * 3})
    lab = LabCells(tmp_path, rows, pd.DataFrame(), ["a", "b", "new"], ["new"], "slide")
    parts = {"fit": Features(np.eye(3, dtype=np.float32), np.array([0, 1, 2]))}
    fit, kept = _without_new_classes(HeadFit(torch.ones(3, 3), 0.0, 1), parts, lab)
    assert fit.weight.shape == (2, 3)
    assert kept["fit"].targets.tolist() == [0, 1]
    assert lab.classes == ["a", "b"] and lab.new_classes == [] and lab.not_learnt == ["new"]
    assert list(lab.rows["label"]) == ["a", "b"]


def test_the_split_follows_cell_counts_and_keeps_groups_whole() -> None:
    from training.adapt.cells import split_groups

    sizes = {f"s{i}": n for i, n in enumerate([300, 20, 150, 90, 60, 200, 40, 110])}
    split = split_groups(sizes, seed=3)
    assert set(split) == set(sizes) and set(split.values()) == {"fit", "calibrate", "test"}
    fit = sum(n for g, n in sizes.items() if split[g] == "fit") / sum(sizes.values())
    assert 0.45 <= fit <= 0.75
    assert split_groups(dict(reversed(list(sizes.items()))), seed=3) == split


def test_a_clinic_that_would_forget_is_fitted_with_less_weight() -> None:
    """A clinic that calls b-looking cells "a" (healthy donors' cells all "normal") pulls the
    layer so that the base's own b cells would be forgotten; each pull strength then backs off
    the laboratory's weight until its fit keeps the base's cells."""
    from types import SimpleNamespace

    from training.adapt.pipeline import LAB_WEIGHTS, MAX_FORGETTING, Features, _choose_fit
    from training.adapt.replay import Replay

    rng = np.random.default_rng(0)

    def cells(n: int, centre: tuple[float, float]) -> np.ndarray:
        x = np.zeros((n, 4), dtype=np.float32)
        x[:, :2] = np.asarray(centre) + rng.normal(scale=0.6, size=(n, 2))
        return x

    replay_x = np.concatenate([cells(200, (2, 0)), cells(200, (0, 2))] * 2)
    replay_y = np.array(([0] * 200 + [1] * 200) * 2)
    is_train = np.array([True] * 400 + [False] * 400)
    replay = Replay(["a", "b"], replay_x, replay_y, is_train)
    lab = {
        p: Features(cells(300, (0.8, 1.4)), np.zeros(300, dtype=np.int64), np.arange(300) // 30)
        for p in ("fit", "calibrate")
    }
    lab["calibrate"].groups += 10  # slides 0-9 fit, 10-19 calibrate
    start = torch.eye(2, 4)
    cells_of = SimpleNamespace(new_classes=[], group_by="slide")
    _, choice, _ = _choose_fit(start, lab, replay, cells_of, lambda _: None)
    base_kept = choice["candidates"][0]["replay_valid_accuracy"]
    fits = choice["candidates"][1:]
    assert any("lab x" in r["candidate"] for r in fits)  # at least one pull strength backed off
    for r in fits:
        backed_off_to_the_end = r["candidate"].endswith(f"lab x{LAB_WEIGHTS[-1]:g}")
        assert r["replay_valid_accuracy"] >= base_kept - MAX_FORGETTING or backed_off_to_the_end


def test_folds_keep_groups_whole_and_even() -> None:
    from training.adapt.pipeline import fold_groups

    groups = np.repeat(np.arange(12), [50, 40, 40, 30, 30, 30, 20, 20, 20, 10, 10, 10])
    folds = fold_groups(groups, 4, seed=1)
    for g in np.unique(groups):
        assert len(np.unique(folds[groups == g])) == 1  # a slide is never split
    sizes = np.bincount(folds, minlength=4)
    assert sizes.min() > 0 and sizes.max() - sizes.min() <= 50  # at most one slide apart
    assert np.array_equal(fold_groups(groups, 4, seed=1), folds)


def _lab_and_replay(
    rng: np.random.Generator, lab_targets: Callable[[np.ndarray], np.ndarray]
) -> tuple[dict[str, Any], Any]:
    """Replay cells of two classes the base reads from feature 0; lab cells of 20 slides whose
    classes `lab_targets` gives from their features (which also vary along feature 2, as a
    stain the base never saw might move them)."""
    from training.adapt.pipeline import Features
    from training.adapt.replay import Replay

    replay_x = rng.normal(size=(800, 4)).astype(np.float32)
    replay_x[:, 2] = 0  # the base's own cells do not vary along feature 2
    replay_y = (replay_x[:, 0] > 0).astype(np.int64)
    replay = Replay(["a", "b"], replay_x, replay_y, np.arange(800) < 400)
    parts = {}
    for k, p in enumerate(("fit", "calibrate")):
        x = rng.normal(size=(300, 4)).astype(np.float32)
        parts[p] = Features(x, lab_targets(x), np.arange(300) // 30 + 10 * k)
    return parts, replay


def test_a_lab_whose_classes_follow_another_feature_gets_a_fit() -> None:
    from types import SimpleNamespace

    from training.adapt.pipeline import _choose_fit

    rng = np.random.default_rng(0)
    # The lab's cells: class "b" where feature 0 and feature 2 together say so (its stain moved
    # what the base reads).
    parts, replay = _lab_and_replay(rng, lambda x: (x[:, 0] + 2 * x[:, 2] > 0).astype(np.int64))
    start = torch.tensor([[-1.0, 0, 0, 0], [1.0, 0, 0, 0]])
    cells_of = SimpleNamespace(new_classes=[], group_by="slide")
    _, choice, held_out = _choose_fit(start, parts, replay, cells_of, lambda _: None)
    assert choice["chosen"] != "base" and choice["folds"] == 5
    assert held_out is not None and held_out.shape == (600, 2)
    chosen = next(r for r in choice["candidates"] if r["candidate"] == choice["chosen"])
    assert chosen["held_out_accuracy"] > choice["candidates"][0]["held_out_accuracy"] + 0.05


def test_labels_that_follow_nothing_keep_the_base() -> None:
    """Reviews the features cannot explain (coin flips): every fit learns them on its own cells,
    and none is right more often than the base on cells its fit did not see."""
    from types import SimpleNamespace

    from training.adapt.pipeline import _choose_fit

    rng = np.random.default_rng(1)
    parts, replay = _lab_and_replay(rng, lambda x: rng.integers(0, 2, size=len(x)))
    start = torch.tensor([[-1.0, 0, 0, 0], [1.0, 0, 0, 0]])
    cells_of = SimpleNamespace(new_classes=[], group_by="slide")
    said: list[str] = []
    _, choice, held_out = _choose_fit(start, parts, replay, cells_of, said.append)
    assert choice["chosen"] == "base" and held_out is None
    assert said[-1].startswith("The base model's last layer is kept: no fit was right")


def test_the_labs_field_colours_are_judged_on_fields_the_reference_did_not_hold() -> None:
    """A laboratory's fields join the colour reference, and the threshold comes from each field's
    distance to a reference without its fold: its next fields are familiar, the base's threshold
    is never lowered, and a stain unlike both is still flagged."""
    import pandas as pd

    from core.classify.calibration import Calibration, FieldColours
    from training.adapt.cells import COLOUR_COLUMNS, LabCells
    from training.adapt.pipeline import _colours, fold_groups

    rng = np.random.default_rng(0)
    base_colours = FieldColours.fit(rng.normal(0.0, 1.0, (60, 13)))
    base = Calibration(1.0, 0.5, 0.97, 1.0, 1.0, colour_threshold=4.0, colours=base_colours)

    def lab_fields(n: int) -> np.ndarray:  # another stain: far from the base's fields
        return rng.normal(6.0, 1.0, (n, 13))

    learn = lab_fields(40)
    fields = pd.DataFrame(learn, columns=COLOUR_COLUMNS)
    fields["field_id"] = np.arange(40)
    fields["part"] = ["fit"] * 30 + ["calibrate"] * 10
    lab = LabCells(Path("."), pd.DataFrame(), fields, [], [], "slide")
    cell_fields = np.repeat(np.arange(40), 3)  # three cells a field, slides of four fields
    folds = fold_groups(cell_fields // 4, 5)
    colours, threshold = _colours(lab, base, cell_fields, folds)
    assert colours is not None and threshold is not None
    assert len(colours.reference) == 60 + 40
    assert threshold >= base.colour_threshold
    new = lab_fields(200)
    flagged = np.mean([colours.distance(d) > threshold for d in new])
    assert flagged <= 0.1, flagged
    assert colours.distance(np.full(13, -8.0)) > threshold  # a third stain


def test_a_clinic_that_reviewed_almost_only_normal_cells_is_warned(
    adapted: dict[str, Any],
) -> None:
    """Nearly every reviewed cell normal: adapt says what the model then risks (abnormal cells in
    the laboratory's stain called normal unflagged), in its output, adaptation.json and report;
    a laboratory that reviewed its classes gets no such warning."""
    import pandas as pd

    from training.adapt.cells import LabCells
    from training.adapt.pipeline import MOSTLY_NORMAL, warnings_for

    def lab(labels: list[str]) -> LabCells:
        return LabCells(Path("."), pd.DataFrame({"label": labels}), pd.DataFrame(), [], [], "slide")

    clinic = warnings_for(lab(["normal"] * 95 + ["spherocyte"] * 5))
    assert len(clinic) == 1 and clinic[0].startswith("95% of the reviewed cells are normal")
    assert "called normal without a review flag" in clinic[0]
    assert warnings_for(lab(["normal"] * int(MOSTLY_NORMAL * 100 - 1) + ["target_cell"] * 11)) == []
    summary = json.loads((adapted["out"] / "adaptation.json").read_text())
    assert summary["warnings"] == []  # the synthetic laboratory reviewed three classes
    assert "Warning" not in (adapted["out"] / "report.md").read_text()


def _queue_population() -> tuple[pd.DataFrame, np.ndarray]:
    """A slide of 300 cells proposed normal and 30 proposed spherocyte; a technologist followed
    the queue: every spherocyte, the 60 least sure normal cells and 6 sure ones."""
    rng = np.random.default_rng(0)
    margins = np.concatenate([rng.uniform(0, 1, 300), rng.uniform(0, 1, 30)])
    population = pd.DataFrame(
        {
            "cell_id": np.arange(330),
            "slide_id": 1,
            "field_id": 1,
            "proposed_label": ["normal"] * 300 + ["spherocyte"] * 30,
            "margin": margins,
        }
    )
    order = np.argsort(margins[:300])
    reviewed = np.concatenate([order[:60], order[-6:], np.arange(300, 330)])
    population["reviewed"] = population["cell_id"].isin(reviewed)
    return population, reviewed


def test_reviewed_cells_are_weighed_to_stand_for_their_slides() -> None:
    from training.adapt.judging import representative_weights, thin_evidence

    population, reviewed = _queue_population()
    judging = representative_weights(reviewed, population)
    w = dict(zip(reviewed, judging.weights, strict=True))
    assert judging.weighed and np.mean(judging.weights) == pytest.approx(1.0)
    # The sure normal cells stand for the hundred sure ones never reviewed; the least sure third
    # (60 of its 100 reviewed), and the spherocytes (all reviewed), for themselves.
    sure, doubtful, sphero = reviewed[-31], reviewed[0], reviewed[-1]
    assert w[sure] / w[doubtful] == pytest.approx((100 / 6) / (100 / 60))
    assert w[sphero] / w[doubtful] == pytest.approx(1 / (100 / 60))
    # The middle third of normal margins holds no reviewed cell: it cannot be stood for.
    assert judging.uncovered == pytest.approx(100 / 330)
    assert judging.effective_cells < len(reviewed)
    # Worth 28 of 96 cells: enough to judge on without a note; a tenth of them would not be.
    assert thin_evidence(judging) is None
    thin = dataclasses.replace(judging, effective_cells=len(reviewed) / 10)
    assert "Reviewing some slides in full" in str(thin_evidence(thin))

    # A slide reviewed in full, or no record of the others: every cell weighs 1.
    everything = representative_weights(population["cell_id"].to_numpy(), population)
    assert np.allclose(everything.weights, 1.0) and everything.uncovered == 0.0
    unknown = representative_weights(reviewed, None)
    assert not unknown.weighed and np.all(unknown.weights == 1.0)

    # Slides none of the judged cells come from (the test part's) do not count.
    other = population.assign(cell_id=population["cell_id"] + 1000, slide_id=2, field_id=2)
    other["proposed_label"] = "normal"
    both = representative_weights(reviewed, pd.concat([population, other]))
    assert np.allclose(both.weights, judging.weights) and both.uncovered == judging.uncovered
    # Held out by field instead: the field is the group.
    by_field = representative_weights(reviewed, pd.concat([population, other]), "field_id")
    assert np.allclose(by_field.weights, judging.weights)


def test_a_fit_that_wins_on_doubtful_cells_but_loses_on_sure_ones_is_not_a_gain() -> None:
    """The gate's sign test with the cells weighed: a candidate right on 20 more of the queue's
    doubtful cells but wrong on 8 of its few sure ones, which stand for ten times as many."""
    from training.adapt.pipeline import MIN_GAIN_Z, gain_z

    base = np.array([False] * 20 + [True] * 8 + [True] * 72)
    fit = np.array([True] * 20 + [False] * 8 + [True] * 72)
    assert gain_z(base, fit) > MIN_GAIN_Z  # the reviewed cells alone: (20 - 8) / sqrt(28)
    weights = np.array([1.0] * 20 + [10.0] * 8 + [1.0] * 72)
    assert gain_z(base, fit, weights) < 0
    assert gain_z(base, fit, np.ones(100)) == pytest.approx(gain_z(base, fit))
