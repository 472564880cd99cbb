"""Training configuration: one dataclass, read from YAML, overridden by CLI flags, saved per run."""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from training.errors import ConfigError

METHODS = ("feature-extract", "fine-tune")
CLASS_WEIGHTINGS = ("none", "inverse_sqrt", "inverse")


@dataclass
class AugmentConfig:
    """The thesis's augmentation (fastai `aug_transforms`) plus stain jitter for colour."""

    flip_vert: bool = True
    max_rotate: float = 180.0
    max_zoom: float = 1.1
    max_lighting: float = 0.2
    max_warp: float = 0.0
    p_affine: float = 0.75
    p_lighting: float = 0.75
    # Stains differ between labs and batches: random hue and saturation shifts of this size
    # (0 disables), applied with probability p_lighting.
    max_hue: float = 0.05
    max_saturation: float = 0.2
    # Other laboratories (issue #12): each training crop, before resizing, gets with probability
    # 0.8 each a random stain (haematoxylin-eosin optical density) and a random colour (hue,
    # saturation, white balance, brightness, contrast, gamma) jitter (`stain`), and blur or JPEG
    # with probability 0.3 each (`degrade`); training/augment.py. Off in the thesis recipes.
    stain: bool = False
    degrade: bool = False


@dataclass
class TrainConfig:
    data: str = ""
    name: str = ""
    out_dir: str = "runs"
    method: str = "feature-extract"
    arch: str = "resnet50"
    weights: str = "imagenet"  # "imagenet", "random", or a state-dict file
    input_size: int = 224
    batch_size: int = 64
    # Feature extraction: epochs with the body frozen. Fine tuning: epochs after unfreezing
    # (thesis: 20 and 5).
    epochs: int = 20
    lr: float = 1e-3
    # Fine tuning only: frozen epochs first (0 with init_from), then discriminative rates
    # slice(max_lr / lr_ratio, max_lr); max_lr None takes the learning-rate finder's suggestion.
    frozen_epochs: int = 0
    init_from: str = ""
    max_lr: float | None = None
    lr_ratio: float = 100.0
    # Frozen stages on cached body features, `cache_views` augmented views per training image
    # (engine.fit_head_on_cached_features): minutes instead of hours on a CPU.
    cache_features: bool = False
    cache_views: int = 4
    # Loss: class weights against imbalance ("none", "inverse_sqrt": w ~ 1/sqrt(train count),
    # "inverse": w ~ 1/count; mean weight 1 over the training cells), and label smoothing.
    class_weighting: str = "none"
    label_smoothing: float = 0.0
    split: str = "auto"  # "auto", "manifest", "folders", "random"
    valid_pct: float = 0.2
    seed: int = 0
    classes: list[str] | None = None
    max_per_class: int | None = None  # cap training items per class (quick runs)
    device: str = "auto"  # "auto", "cpu", "cuda"
    num_workers: int = 0
    top_losses: int = 9
    augment: AugmentConfig = field(default_factory=AugmentConfig)

    def validate(self) -> TrainConfig:
        if not self.data:
            raise ConfigError("no data set: give --data DIR or `data:` in the config file")
        if self.method not in METHODS:
            raise ConfigError(f"method must be one of {METHODS}, not {self.method!r}")
        if self.split not in ("auto", "manifest", "folders", "random"):
            raise ConfigError(
                f"split must be auto, manifest, folders or random, not {self.split!r}"
            )
        if self.class_weighting not in CLASS_WEIGHTINGS:
            raise ConfigError(
                f"class_weighting must be one of {CLASS_WEIGHTINGS}, not {self.class_weighting!r}"
            )
        if not 0 <= self.label_smoothing < 1:
            raise ConfigError(f"label_smoothing must lie in [0, 1), not {self.label_smoothing}")
        if self.device not in ("auto", "cpu", "cuda"):
            raise ConfigError(f"device must be auto, cpu or cuda, not {self.device!r}")
        positives = {
            "input_size": self.input_size,
            "batch_size": self.batch_size,
            "epochs": self.epochs,
            "lr": self.lr,
            "lr_ratio": self.lr_ratio,
            "cache_views": self.cache_views,
        }
        for key, value in positives.items():
            if value <= 0:
                raise ConfigError(f"{key} must be positive, not {value}")
        if self.frozen_epochs < 0:
            raise ConfigError("frozen_epochs must be >= 0")
        if not 0 < self.valid_pct < 1:
            raise ConfigError(f"valid_pct must lie between 0 and 1, not {self.valid_pct}")
        if self.max_lr is not None and self.max_lr <= 0:
            raise ConfigError("max_lr must be positive")
        if self.max_per_class is not None and self.max_per_class < 1:
            raise ConfigError("max_per_class must be at least 1")
        if not self.name:
            self.name = f"{self.arch}-{self.method}"
        return self

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def save(self, path: Path) -> None:
        path.write_text(yaml.safe_dump(self.to_dict(), sort_keys=False))


def _number_type(hint: Any) -> type | None:
    """float or int for a field annotated with one of them (optional or not), else None."""
    members = typing.get_args(hint) if isinstance(hint, types.UnionType) else (hint,)
    return next((t for t in (float, int) if t in members), None)


def _coerce(cls: type, values: dict[str, Any], source: str) -> dict[str, Any]:
    """Values converted to their fields' types: YAML reads `1e-3` as a string and `5` as an int."""
    hints = typing.get_type_hints(cls)
    out = dict(values)
    for key, value in values.items():
        wanted = _number_type(hints.get(key))
        if wanted is None or value is None:
            continue
        if isinstance(value, bool) or (wanted is int and isinstance(value, float)):
            raise ConfigError(f"{source}: {key} must be {wanted.__name__}, not {value!r}")
        try:
            out[key] = wanted(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{source}: {key} must be {wanted.__name__}, not {value!r}") from None
    return out


def _from_mapping(raw: dict[str, Any], source: str) -> TrainConfig:
    known = {f.name for f in dataclasses.fields(TrainConfig)}
    unknown = set(raw) - known
    if unknown:
        raise ConfigError(f"{source}: unknown keys {sorted(unknown)}; known: {sorted(known)}")
    values = dict(raw)
    augment = values.pop("augment", None) or {}
    if not isinstance(augment, dict):
        raise ConfigError(f"{source}: `augment` must be a mapping")
    aug_known = {f.name for f in dataclasses.fields(AugmentConfig)}
    if set(augment) - aug_known:
        raise ConfigError(f"{source}: unknown augment keys {sorted(set(augment) - aug_known)}")
    values = _coerce(TrainConfig, values, source)
    augment = _coerce(AugmentConfig, augment, source)
    try:
        return TrainConfig(**values, augment=AugmentConfig(**augment))
    except TypeError as exc:
        raise ConfigError(f"{source}: {exc}") from exc


def load_config(path: Path | None, overrides: dict[str, Any]) -> TrainConfig:
    """Config file values, then CLI overrides (None means "not given"), then validation."""
    raw: dict[str, Any] = {}
    if path is not None:
        if not path.is_file():
            raise ConfigError(f"config file {path} does not exist")
        try:
            loaded = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as exc:
            raise ConfigError(f"config file {path} is not valid YAML: {exc}") from exc
        if not isinstance(loaded, dict):
            raise ConfigError(f"config file {path} must hold a mapping of settings")
        raw.update(loaded)
    raw.update({k: v for k, v in overrides.items() if v is not None})
    return _from_mapping(raw, str(path) if path else "settings").validate()
