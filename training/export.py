"""Export a trained learner with its model card, and prove the file reloads to the same model."""

from __future__ import annotations

import datetime as dt
import platform
import shutil
from importlib import metadata
from pathlib import Path
from typing import Any

import torch

from core.modelcard import CARD_FILE, WEIGHTS_FILE, ModelCard, load_exported, sha256_file
from training.errors import TrainingError

REPORT_FILES = ("report.md", "config.yaml", "history.csv", "metrics.json")


class ExportError(TrainingError):
    """The exported file does not reload to a model that predicts like the one in memory."""


def library_versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for package in ("torch", "torchvision", "fastai", "fastcore", "numpy", "pillow"):
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = "not installed"
    return versions


def _check_same_predictions(learn: Any, reloaded: Any, sample: torch.Tensor) -> None:
    model = learn.model.eval()
    other = reloaded.model.eval().to(sample.device)
    with torch.no_grad():
        ours, theirs = model(sample), other(sample)
    if not torch.equal(ours.argmax(1), theirs.argmax(1)) or not torch.allclose(
        ours, theirs, atol=1e-5
    ):
        diff = (ours - theirs).abs().max().item()
        raise ExportError(
            f"the reloaded learner predicts differently (max logit difference {diff})"
        )


def export_learner(
    learn: Any, model_dir: Path, sample: torch.Tensor, **card_fields: Any
) -> ModelCard:
    """Write export.pkl and model_card.json into `model_dir`, then reload and compare on `sample`
    (a normalised batch) before returning the card."""
    model_dir.mkdir(parents=True, exist_ok=True)
    weights = model_dir / WEIGHTS_FILE
    learn.export(weights.resolve())
    card = ModelCard(
        weights_sha256=sha256_file(weights),
        library_versions=library_versions(),
        created=dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        **card_fields,
    )
    card.save(model_dir)
    reloaded, _ = load_exported(model_dir)
    _check_same_predictions(learn, reloaded, sample)
    return card


def publish_run(run_dir: Path, models_dir: Path, name: str, overwrite: bool = False) -> Path:
    """Copy a run's exported model and its report into `models_dir/name`, re-verified."""
    source = run_dir / "model"
    learn, card = load_exported(source)  # hash check and reload before anything is copied
    dest = models_dir / name
    if dest.exists() and any(dest.iterdir()) and not overwrite:
        raise ExportError(f"{dest} already holds a model; pass --overwrite to replace it")
    staging = models_dir / f".{name}.partial"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    shutil.copy2(source / WEIGHTS_FILE, staging / WEIGHTS_FILE)
    for pattern in (*REPORT_FILES, "*.png"):
        for path in run_dir.glob(pattern):
            shutil.copy2(path, staging / path.name)
    card.name = name
    card.save(staging)
    load_exported(staging)
    if dest.exists():
        shutil.rmtree(dest)
    staging.rename(dest)
    assert (dest / CARD_FILE).is_file()
    del learn
    return dest
