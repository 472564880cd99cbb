"""The base model's training cells, replayed while a laboratory adapts it (`replay.npz`).

Adapting refits the last layer (training/adapt/head.py), which reads 512 features; the body that
computes them does not change. So the base data set can travel with the model as those features:
a few hundred cells of each class, from the training split (to fit with) and the validation
split (to calibrate and to show what was forgotten). 16-bit floats, about 4 MB for the shipped
model; a laboratory adapting needs no copy of Chula's images.

`python -m training add-replay --model DIR --data CROPS` writes it into a model folder (from an
`import-chula` output) and names it in the card with its sha256; it is read only after that
check, with numpy's `allow_pickle=False` (numbers only, nothing unpickled).
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from core.modelcard import ModelCard, ModelFileError, sha256_file
from training.errors import DataError

REPLAY_FILE = "replay.npz"
# Cells of each class kept per split: enough for a 512-feature linear layer not to drift, small
# enough to ship (about 1 KB a cell).
PER_CLASS = {"train": 250, "valid": 80}
SEED = 0


@dataclass
class Replay:
    """Features (N, D) of base training cells, their class (index into `classes`) and split."""

    classes: list[str]
    features: np.ndarray  # float32 once loaded
    labels: np.ndarray  # int64
    is_train: np.ndarray  # bool: training split (fit); else validation (calibrate, measure)

    def part(self, train: bool) -> tuple[np.ndarray, np.ndarray]:
        keep = self.is_train == train
        return self.features[keep], self.labels[keep]

    def save(self, path: Path) -> None:
        with path.open("wb") as handle:
            np.savez_compressed(
                handle,
                classes=np.asarray(self.classes, dtype=str),
                features=self.features.astype(np.float16),
                labels=self.labels.astype(np.int16),
                is_train=self.is_train.astype(bool),
            )


def sample_crops(df: pd.DataFrame, per_class: dict[str, int], seed: int = SEED) -> pd.DataFrame:
    """At most `per_class[split]` rows of each class and split, drawn at random (seeded)."""
    parts = []
    for split, n in per_class.items():
        for _, rows in df[df["split"] == split].groupby("label", sort=True):
            parts.append(rows.sample(n=min(n, len(rows)), random_state=seed))
    if not parts:
        raise DataError("the crop set has no training or validation crops of the model's classes")
    return pd.concat(parts).reset_index(drop=True)


def build_replay(model_dir: Path, data: Path, progress: bool = True) -> Replay:
    """The replay set of `model_dir` from the crop set `data` (manifest.csv with splits)."""
    from core.classify.predictor import Predictor
    from training.classify.calibrate import crop_outputs, model_crops

    predictor = Predictor.load(Path(model_dir), device="cpu")
    rows = sample_crops(model_crops(Path(data), predictor.classes), PER_CLASS)
    _, features = crop_outputs(predictor, Path(data), list(rows["path"]), "replay", progress, 1)
    return Replay(
        classes=list(predictor.classes),
        features=features.numpy().astype(np.float32),
        labels=rows["target"].to_numpy(dtype=np.int64),
        is_train=(rows["split"] == "train").to_numpy(),
    )


def add_replay(model_dir: Path, data: Path, progress: bool = True) -> ModelCard:
    """Write `replay.npz` into `model_dir` and name it in the card with its sha256."""
    replay = build_replay(model_dir, data, progress)
    card = ModelCard.load(model_dir)
    staging = Path(model_dir) / f".{REPLAY_FILE}.partial"
    replay.save(staging)
    staging.replace(Path(model_dir) / REPLAY_FILE)
    card.replay_file, card.replay_sha256 = REPLAY_FILE, sha256_file(Path(model_dir) / REPLAY_FILE)
    card.save(model_dir)
    return card


def load_replay(model_dir: Path, card: ModelCard) -> Replay | None:
    """The model's replay set after its hash check; None when the card names none."""
    if not card.replay_file:
        return None
    path = Path(model_dir) / card.replay_file
    if not path.is_file():
        raise ModelFileError(f"{model_dir}'s card names {card.replay_file}, which is missing")
    if sha256_file(path) != card.replay_sha256:
        raise ModelFileError(f"{path} does not match the sha256 in its card: damaged or replaced")
    try:
        with np.load(io.BytesIO(path.read_bytes()), allow_pickle=False) as npz:
            replay = Replay(
                classes=[str(c) for c in npz["classes"]],
                features=npz["features"].astype(np.float32),
                labels=npz["labels"].astype(np.int64),
                is_train=npz["is_train"].astype(bool),
            )
    except (OSError, KeyError, ValueError) as exc:
        raise ModelFileError(f"cannot read {path} as a replay set: {exc}") from exc
    n = len(replay.features)
    if replay.features.ndim != 2 or len(replay.labels) != n or len(replay.is_train) != n:
        raise ModelFileError(f"{path}: features, labels and splits do not fit together")
    if replay.classes != list(card.classes):
        raise ModelFileError(f"{path} holds the classes {replay.classes}, not the card's")
    if n and not (replay.labels.min() >= 0 and replay.labels.max() < len(replay.classes)):
        raise ModelFileError(f"{path}: a label outside the model's classes")
    return replay


# How the recipe weighed a class of n training cells in its loss: n ** -power.
CLASS_WEIGHTING_POWER = {"none": 0.0, "inverse_sqrt": 0.5, "inverse": 1.0}


def training_mix_weights(card: ModelCard, classes: int, replayed: np.ndarray) -> np.ndarray | None:
    """Per-class weights (classes,) that give the replayed training cells (a few hundred of each
    class) the weight their classes had in the base's own training loss: class c's total
    proportional to n_c ** (1 - power) (n_c its training cells, power the recipe's class
    weighting), so each replayed cell weighs n_c ** (1 - power) / r_c; mean 1 over the replayed
    cells. Why: a class-balanced replay pulls the last layer toward a balanced prior (refitted
    on it alone, the shipped model lost 0.028 on Chula's test crops, normal cells called normal
    0.825 -> 0.723: research/other_labs_head_probe.py). Rows past the card's classes (the
    laboratory's own) weigh 1: nothing of theirs is replayed. None when the card does not give
    its training class counts (an adapted model's card): the replay then stays balanced."""
    counts = (card.dataset or {}).get("class_counts") or {}
    weighting = (card.training_config or {}).get("class_weighting", "none")
    if not counts or weighting not in CLASS_WEIGHTING_POWER or len(replayed) == 0:
        return None
    power = CLASS_WEIGHTING_POWER[weighting]
    replayed_per_class = np.bincount(replayed, minlength=classes).astype(np.float64)
    weights = np.ones(classes, dtype=np.float64)
    for i, name in enumerate(card.classes[:classes]):
        if replayed_per_class[i] and counts.get(name):
            weights[i] = float(counts[name]) ** (1 - power) / replayed_per_class[i]
    return weights / weights[replayed].mean()
