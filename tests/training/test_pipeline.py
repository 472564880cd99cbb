"""End to end on a synthetic set: import, train, export, reload, evaluate, publish."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml

from core.modelcard import ModelCard, ModelFileError
from tests.conftest import tiny_config
from training.classify.config import load_config
from training.classify.evaluate import classification_metrics, predict
from training.classify.export import ExportError, _check_same_predictions, publish_run
from training.classify.learner import load_exported
from training.errors import ConfigError

ROOT = Path(__file__).resolve().parents[2]


def test_run_writes_config_report_figures_and_model(trained_run: Path) -> None:
    for name in (
        "config.yaml",
        "history.csv",
        "metrics.json",
        "report.md",
        "loss_curves.png",
        "confusion_valid.png",
        "confusion_test.png",
        "per_class_test.png",
        "top_losses_test.png",
        "model/export.pkl",
        "model/model_card.json",
    ):
        assert (trained_run / name).is_file(), name
    config = yaml.safe_load((trained_run / "config.yaml").read_text())
    assert config["arch"] == "resnet18" and config["method"] == "feature-extract"
    report = (trained_run / "report.md").read_text()
    assert "Evaluation on the test split" in report and "macro-F1" in report
    history = pd.read_csv(trained_run / "history.csv")
    assert list(history["stage"]) == ["frozen"] and history["valid_loss"].notna().all()


def test_model_card_describes_the_export(trained_run: Path, imported: Path) -> None:
    card = ModelCard.load(trained_run / "model")
    manifest = pd.read_csv(imported / "manifest.csv")
    assert card.classes == sorted(manifest["label"].unique())
    assert card.architecture == "resnet18" and card.input_size == 32
    assert card.crop_window_px == 24
    assert card.normalization["mean"] == [0.485, 0.456, 0.406]
    assert card.metrics["split"] == "test"
    assert card.metrics["n"] == int((manifest["split"] == "test").sum())
    assert set(card.metrics["per_class"]) == set(card.classes)
    assert len(card.dataset["fingerprint"]) == 64
    test_rows = manifest["split"] == "test"
    assert card.dataset["test_smears"] == sorted(manifest.loc[test_rows, "source_image"].unique())
    assert card.library_versions["torch"].startswith("2.14")
    assert card.training_config["seed"] == 0 and card.created


def test_reloaded_export_reproduces_the_in_memory_test_metrics(
    trained_run: Path, imported: Path
) -> None:
    # The card's metrics were computed by the learner in memory; the file must give the same.
    learn, card = load_exported(trained_run / "model")
    manifest = pd.read_csv(imported / "manifest.csv")
    test = manifest[manifest["split"] == "test"].assign(
        path=lambda d: str(imported) + "/" + d["path"]
    )
    pred = predict(learn, test)
    metrics = classification_metrics(pred.targets, pred.preds, card.classes)
    assert metrics["accuracy"] == card.metrics["accuracy"]
    assert metrics["per_class"] == card.metrics["per_class"]


def test_export_check_catches_a_model_that_predicts_differently(trained_run: Path) -> None:
    learn, _ = load_exported(trained_run / "model")
    other, _ = load_exported(trained_run / "model")
    with torch.no_grad():
        for p in other.model.parameters():
            p.add_(torch.randn_like(p))
    sample = torch.randn(4, 3, 32, 32)
    _check_same_predictions(learn, learn, sample)
    with pytest.raises(ExportError, match="predicts differently"):
        _check_same_predictions(learn, other, sample)


def _run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "training", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_evaluate_prints_json_on_the_test_split(trained_run: Path, imported: Path) -> None:
    done = _run_cli("evaluate", "--model", str(trained_run / "model"), "--data", str(imported))
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout.strip().splitlines()[-1])
    card = ModelCard.load(trained_run / "model")
    assert result["split"] == "test"
    assert result["accuracy"] == card.metrics["accuracy"]
    assert result["macro_f1"] == card.metrics["macro_f1"]
    assert result["n"] == card.metrics["n"]
    assert set(result["per_class"]["normal"]) == {"precision", "recall", "f1", "support"}


def test_evaluate_imports_a_chula_layout(trained_run: Path, chula_src: Path) -> None:
    done = _run_cli("evaluate", "--model", str(trained_run / "model"), "--data", str(chula_src))
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout.strip().splitlines()[-1])
    n_labels = sum(len(p.read_text().split("\n")) - 1 for p in (chula_src / "Label").glob("*.txt"))
    assert result["layout"] == "chula" and result["split"] == "all"
    assert result["n"] == n_labels
    assert 0.0 <= result["accuracy"] <= 1.0


def test_cli_errors_are_one_clear_line(tmp_path: Path) -> None:
    done = _run_cli("evaluate", "--model", str(tmp_path), "--data", str(tmp_path))
    assert done.returncode == 2
    assert done.stderr.strip().splitlines()[-1].startswith("error: no model card")
    done = _run_cli("feature-extract", "--data", str(tmp_path / "nowhere"), "--weights", "random")
    assert done.returncode == 2 and "does not exist" in done.stderr


def test_fine_tune_from_a_feature_extraction_run(
    trained_run: Path, imported: Path, tmp_path: Path
) -> None:
    from training.classify.engine import train

    cfg = tiny_config(imported, tmp_path, method="fine-tune", init_from=str(trained_run))
    run = train(cfg, progress=False)
    assert (run / "lr_find.png").is_file()  # no max_lr given: the finder chose it
    history = pd.read_csv(run / "history.csv")
    assert list(history["stage"]) == ["unfrozen"]
    card = ModelCard.load(run / "model")
    assert card.method == "fine-tune"
    assert card.training_config["lr_find"]["used"] > 0


def test_init_from_must_match_architecture(
    trained_run: Path, imported: Path, tmp_path: Path
) -> None:
    from training.classify.engine import train

    cfg = tiny_config(
        imported, tmp_path, method="fine-tune", arch="resnet34", init_from=str(trained_run)
    )
    with pytest.raises(ConfigError, match="init_from"):
        train(cfg, progress=False)
    assert not any(tmp_path.iterdir()), "a failed start leaves no run folder behind"


def test_resnet50_trains_and_exports(imported: Path, tmp_path: Path) -> None:
    from training.classify.engine import train

    cfg = tiny_config(imported, tmp_path, arch="resnet50", max_per_class=6, top_losses=2)
    run = train(cfg, progress=False)
    learn, card = load_exported(run / "model")
    assert card.architecture == "resnet50"
    assert learn.model(torch.zeros(1, 3, 32, 32)).shape == (1, len(card.classes))


def test_runs_never_overwrite_each_other(imported: Path, tmp_path: Path) -> None:
    from training.classify.engine import new_run_dir

    first = new_run_dir(tmp_path, "same")
    second = new_run_dir(tmp_path, "same")
    assert first != second and first.is_dir() and second.is_dir()


def test_publish_copies_verified_model_and_report(trained_run: Path, tmp_path: Path) -> None:
    dest = publish_run(trained_run, tmp_path / "models", "tiny", notes=["why this model"])
    card = ModelCard.load(dest)
    assert card.name == "tiny" and card.notes == ["why this model"]
    assert (dest / "report.md").is_file() and (dest / "confusion_test.png").is_file()
    load_exported(dest)
    with pytest.raises(ExportError, match="already holds"):
        publish_run(trained_run, tmp_path / "models", "tiny")
    # A tampered file is refused before it is unpickled.
    with open(dest / "export.pkl", "ab") as fh:
        fh.write(b"\0")
    with pytest.raises(ModelFileError, match="sha256"):
        load_exported(dest)


def test_feature_extraction_on_cached_features(imported: Path, tmp_path: Path) -> None:
    from training.classify.engine import train

    cfg = tiny_config(imported, tmp_path, cache_features=True, cache_views=2, epochs=2)
    run = train(cfg, progress=False)
    history = pd.read_csv(run / "history.csv")
    assert list(history["stage"]) == ["frozen (cached)"] * 2
    # The exported learner is the whole network, its test metrics measured through it.
    learn, card = load_exported(run / "model")
    assert card.training_config["cache_features"] is True
    assert card.metrics["split"] == "test" and card.metrics["n"] > 0
    assert learn.model(torch.zeros(1, 3, 32, 32)).shape == (1, len(card.classes))


def test_class_weights_favour_rare_classes_and_keep_the_loss_scale() -> None:
    from training.classify.engine import class_weights

    labels = pd.Series(["a"] * 90 + ["b"] * 10)
    assert class_weights(load_config(None, {"data": "x"}), ["a", "b"], labels) is None
    for scheme, ratio in (("inverse_sqrt", 3.0), ("inverse", 9.0)):
        cfg = load_config(None, {"data": "x", "class_weighting": scheme})
        w = class_weights(cfg, ["a", "b"], labels)
        assert w is not None
        assert float(w[1] / w[0]) == pytest.approx(ratio)
        # Mean weight over the training cells is 1.
        assert float((w[0] * 90 + w[1] * 10) / 100) == pytest.approx(1.0)


def test_fine_tuning_with_class_weights_and_label_smoothing(imported: Path, tmp_path: Path) -> None:
    from training.classify.engine import train

    cfg = tiny_config(
        imported,
        tmp_path,
        method="fine-tune",
        cache_features=True,
        cache_views=1,
        frozen_epochs=1,
        epochs=1,
        max_lr=1e-3,
        class_weighting="inverse_sqrt",
        label_smoothing=0.1,
    )
    run = train(cfg, progress=False)
    learn, card = load_exported(run / "model")
    assert card.training_config["class_weighting"] == "inverse_sqrt"
    assert learn.loss_func.func.weight is not None
    assert learn.loss_func.func.label_smoothing == pytest.approx(0.1)
    assert list(pd.read_csv(run / "history.csv")["stage"]) == ["frozen (cached)", "unfrozen"]
    # max_lr was given: the learning-rate finder's sweep is skipped (minutes on a CPU).
    assert not (run / "lr_find.png").exists()
    assert card.training_config["lr_find"] == {"suggested": None, "used": 1e-3, "finder": False}
