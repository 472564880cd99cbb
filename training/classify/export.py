"""Export a trained learner with its model card, and prove the files reload to the same model.

A model folder holds export.pkl (the fastai learner: training, evaluation), model_state.pt (the
network's state dict: what the service loads, through `core.classify.nets.load_network`, without
fastai or unpickling code), model.onnx (the same network for ONNX Runtime, which the service
classifies with on a CPU: core/classify/engines.py) and model_card.json (with the sha256 of
each).
"""

from __future__ import annotations

import datetime as dt
import platform
import shutil
from collections.abc import Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

import torch
from torch import nn

from core.classify.nets import load_network
from core.classify.tta import view_indices
from core.modelcard import (
    CARD_FILE,
    ONNX_FILE,
    STATE_FILE,
    WEIGHTS_FILE,
    ModelCard,
    sha256_file,
)
from training.classify.learner import load_exported
from training.errors import TrainingError
from training.onnxgraph import write_graph

REPORT_FILES = ("report.md", "config.yaml", "history.csv", "metrics.json")
# The ONNX graph must give torch's probabilities within this (issue 28's bar), checked at export.
ONNX_TOLERANCE = 1e-4


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


def _check_same_outputs(
    model: nn.Module, other: nn.Module, sample: torch.Tensor, what: str
) -> None:
    model.eval()
    other = other.eval().to(sample.device)
    with torch.no_grad():
        ours, theirs = model(sample), other(sample)
    if not torch.equal(ours.argmax(1), theirs.argmax(1)) or not torch.allclose(
        ours, theirs, atol=1e-5
    ):
        diff = (ours - theirs).abs().max().item()
        raise ExportError(f"{what} predicts differently (max logit difference {diff})")


def _check_same_predictions(learn: Any, reloaded: Any, sample: torch.Tensor) -> None:
    _check_same_outputs(learn.model, reloaded.model, sample, "the reloaded learner")


def _check_state_file(learn: Any, model_dir: Path, sample: torch.Tensor) -> None:
    """The network rebuilt from model_state.pt by core (no fastai) predicts like the learner."""
    network, _ = load_network(model_dir, device=sample.device)
    _check_same_outputs(learn.model, network, sample, f"the network rebuilt from {STATE_FILE}")


def save_state(model: nn.Module, model_dir: Path) -> tuple[str, str]:
    """Write the network's state dict (plain CPU tensors) as model_state.pt; returns the card's
    `state_file` and `state_sha256`."""
    state = {k: v.detach().cpu().as_subclass(torch.Tensor) for k, v in model.state_dict().items()}
    path = model_dir / STATE_FILE
    torch.save(state, path)
    return STATE_FILE, sha256_file(path)


class _LogitsAndFeatures(nn.Module):
    """The network with two outputs, as the engines serve it: the logits and the features the
    last layer reads."""

    def __init__(self, network: nn.Sequential) -> None:
        super().__init__()
        head = network[1]
        assert isinstance(head, nn.Sequential)
        self.body, self.features_of, self.last = network[0], head[:-1], head[-1]

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        features = self.features_of(self.body(x))
        return self.last(features), features


def add_onnx(model_dir: Path) -> ModelCard:
    """Write model.onnx beside the verified model_state.pt of `model_dir`, prove that ONNX
    Runtime gives the torch network's probabilities within ONNX_TOLERANCE and the same classes
    on a probe batch, then name it in the card with its sha256. Refused (ExportError) otherwise:
    nothing is left half-written."""
    import onnxruntime as ort

    network, card = load_network(model_dir)
    wrapped = _LogitsAndFeatures(network).eval()
    sample = _probe_batch(card, 16)
    staging = model_dir / f".{ONNX_FILE}.partial"
    session = write_graph(
        wrapped,
        sample[:2],
        staging,
        {"images": {0: "n"}},
        {"logits": {0: "n"}, "features": {0: "n"}},
    )
    with torch.inference_mode():
        expected = torch.softmax(wrapped(sample)[0], dim=1)
    logits = torch.from_numpy(session.run(["logits"], {"images": sample.numpy()})[0])
    got = torch.softmax(logits, dim=1)
    gap = float((got - expected).abs().max())
    if gap > ONNX_TOLERANCE or not torch.equal(got.argmax(1), expected.argmax(1)):
        staging.unlink()
        raise ExportError(f"{ONNX_FILE} gives other probabilities than torch (max gap {gap:.2e})")
    staging.replace(model_dir / ONNX_FILE)
    card.onnx_file, card.onnx_sha256 = ONNX_FILE, sha256_file(model_dir / ONNX_FILE)
    card.library_versions = {**card.library_versions, "onnxruntime": ort.__version__}
    card.save(model_dir)
    return card


def calibration_as_arrays(model_dir: Path) -> bool:
    """Rewrite a calibration kept in torch's format (calibration.pt, from before the service ran
    without torch) as calibration.npz, the same numbers; False when there is nothing to do."""
    from core.classify.calibration import CALIBRATION_TENSORS, Calibration

    if not (Path(model_dir) / CALIBRATION_TENSORS).is_file():
        return False
    calibration = Calibration.load(Path(model_dir))
    if calibration is None:
        return False
    calibration.save(Path(model_dir))
    return True


def export_learner(
    learn: Any, model_dir: Path, sample: torch.Tensor, **card_fields: Any
) -> ModelCard:
    """Write export.pkl, model_state.pt and model_card.json into `model_dir`, then reload both
    files (the learner through fastai, the network through core) and compare them with the learner
    on `sample` (a normalised batch) before returning the card."""
    model_dir.mkdir(parents=True, exist_ok=True)
    weights = model_dir / WEIGHTS_FILE
    learn.export(weights.resolve())
    state_file, state_sha256 = save_state(learn.model, model_dir)
    versions = library_versions()
    card = ModelCard(
        weights_sha256=sha256_file(weights),
        state_file=state_file,
        state_sha256=state_sha256,
        metrics_engine=f"torch {versions['torch']}",
        library_versions=versions,
        created=dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        **card_fields,
    )
    card.save(model_dir)
    reloaded, _ = load_exported(model_dir)
    _check_same_predictions(learn, reloaded, sample)
    _check_state_file(learn, model_dir, sample)
    return add_onnx(model_dir)


def _probe_batch(card: ModelCard, n: int = 8) -> torch.Tensor:
    """A fixed random batch at the card's input size (normalised images are roughly N(0, 1))."""
    generator = torch.Generator().manual_seed(0)
    return torch.randn(n, 3, card.input_size, card.input_size, generator=generator)


def card_splits(card: ModelCard, root: Path) -> Any:
    """The items of the data set at `root`, split as the card's training configuration split
    them (compare `fingerprint(items, root)` with the card's to know it is the same data)."""
    from training.classify.config import TrainConfig
    from training.classify.data import assign_splits, scan_dataset

    known = {f for f in TrainConfig.__dataclass_fields__ if f != "augment"}
    cfg = TrainConfig(**{k: v for k, v in card.training_config.items() if k in known})
    return assign_splits(scan_dataset(root, card.classes, progress=False), cfg)


def measure_with_views(learn: Any, card: ModelCard, tta_views: int) -> list[dict[str, Any]]:
    """Metrics of the valid and test splits of the data the card was trained on, averaging
    `tta_views` test-time views. Refuses data that is not byte for byte the training data."""
    from training.classify.data import fingerprint
    from training.classify.evaluate import (
        classification_metrics,
        confusion_matrix,
        most_confused,
        predict,
    )

    view_indices(tta_views)
    root = Path(str(card.dataset.get("source", "")))
    if not card.dataset.get("source") or not root.is_dir():
        raise ExportError(
            f"measuring {tta_views} test-time views needs the run's data at {root}, which is not "
            "there; import it again (or export without --tta-views)"
        )
    items = card_splits(card, root)
    if fingerprint(items, root) != card.dataset.get("fingerprint"):
        raise ExportError(
            f"the data at {root} is not the data this model was trained and measured on "
            "(fingerprint differs); its figures would not be comparable"
        )
    results = []
    for split in ("valid", "test"):
        split_items = items[items["split"] == split]
        if len(split_items):
            pred = predict(learn, split_items, tta_views)
            metrics = classification_metrics(pred.targets, pred.preds, list(card.classes))
            cm = confusion_matrix(pred.targets, pred.preds, len(card.classes))
            results.append(
                {
                    "split": split,
                    **metrics,
                    "confusion_matrix": cm.tolist(),
                    "most_confused": most_confused(cm, card.classes),
                }
            )
    return results


def views_section(tta_views: int, results: list[dict[str, Any]]) -> str:
    """The report's section on the published model's figures with test-time views."""
    from training.classify.interpret import confused_pairs, split_figures

    lines = [
        "",
        f"## Served with {tta_views} test-time views",
        "",
        f"The published model averages its probabilities over {tta_views} quarter turns and "
        "mirror images of each cell (core/classify/tta.py); the figures above are of one view. "
        "The model "
        "card's metrics are the test figures below.",
        "",
    ]
    for res in results:
        lines += [
            f"### {res['split']} split, {tta_views} views",
            "",
            *split_figures(res),
            confused_pairs(res),
            "",
        ]
    return "\n".join(lines)


def publish_run(
    run_dir: Path,
    models_dir: Path,
    name: str,
    overwrite: bool = False,
    notes: Sequence[str] = (),
    tta_views: int | None = None,
) -> Path:
    """Copy a run's exported model and its report into `models_dir/name`, re-verified; `notes`
    (why this model, what it leaves out) are added to its card.

    With `tta_views` the model is served averaging that many test-time views: the valid and test
    splits of the run's own data are measured again with them, the card's metrics become those
    figures, and the report gets a section with them (the run's one-view figures stay above it).

    A run exported before model_state.pt existed gets one, written from its (verified) learner; the
    run folder itself is left as it is."""
    source = run_dir / "model"
    learn, card = load_exported(source)  # hash check and reload before anything is copied
    dest = models_dir / name
    if dest.exists() and any(dest.iterdir()) and not overwrite:
        raise ExportError(f"{dest} already holds a model; pass --overwrite to replace it")
    # Measured before anything is written: a refusal leaves no half-published folder.
    remeasured = tta_views is not None and tta_views != card.tta_views
    results = measure_with_views(learn, card, tta_views) if remeasured and tta_views else []
    staging = models_dir / f".{name}.partial"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    shutil.copy2(source / Path(card.weights_file).name, staging / WEIGHTS_FILE)
    card.weights_file = WEIGHTS_FILE
    if card.state_file and card.state_sha256:
        shutil.copy2(source / Path(card.state_file).name, staging / STATE_FILE)
        card.state_file = STATE_FILE
    else:
        card.state_file, card.state_sha256 = save_state(learn.model, staging)
    for pattern in (*REPORT_FILES, "*.png"):
        for path in run_dir.glob(pattern):
            shutil.copy2(path, staging / path.name)
    if remeasured:
        card.tta_views = int(tta_views or 1)
        card.metrics = {"tta_views": card.tta_views, **results[-1]}
        with open(staging / "report.md", "a") as report:
            report.write(views_section(card.tta_views, results))
    card.name = name
    card.notes = [*card.notes, *notes]
    card.onnx_file = card.onnx_sha256 = None  # written again below, from the verified state
    card.save(staging)
    card = add_onnx(staging)
    load_exported(staging)
    # Both files of the published folder describe the learner that was verified above.
    _check_state_file(learn, staging, _probe_batch(card))
    if dest.exists():
        shutil.rmtree(dest)
    staging.rename(dest)
    assert (dest / CARD_FILE).is_file()
    del learn
    return dest
