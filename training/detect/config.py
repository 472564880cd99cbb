"""The detector's training settings (a YAML file and command-line overrides), checked on load."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from training.errors import ConfigError

CHULA_MICRONS_PER_PIXEL = 0.19


# A point label (Chula) is a red cell of this size (um) for its heatmap spot.
POINT_CELL_UM = 7.5


@dataclass
class DetectorConfig:
    name: str = "detector"
    out_dir: str = "runs"
    yolo: list[str] = field(default_factory=list)  # YOLO-layout sets (boxes)
    chula: str = ""  # Chula layout (red-cell points); its fully labelled smears are used
    # Chula smears held out (the classifier's test smears): read from this model card.
    chula_test_from: str = "models/default"
    leave_out: list[str] = field(default_factory=list)  # sources left out of training
    backbone: str = "efficientnet_lite0"
    weights: str = "imagenet"  # "imagenet", "random" or a state-dict file of the backbone
    width: int = 64
    microns_per_pixel: float = 0.38  # the working scale
    crop: int = 160
    batch_size: int = 16
    epochs: int = 40
    lr: float = 2e-3
    weight_decay: float = 1e-4
    size_weight: float = 0.1
    # Heatmap loss weight per kind (red cell, white cell, platelet).
    kind_weights: tuple[float, float, float] = (1.0, 1.0, 1.0)
    # Box sizes for Chula's point labels: "none" (points teach the heatmap only) or "segmented"
    # (each point's cell outlined by the classical segmentation, where one region holds exactly
    # that point): without them only txl-pbc's boxes teach the size head, which the scale
    # estimate leans on (docs/detection.md, "its scale estimate fails on Chula").
    chula_sizes: str = "none"
    scale_range: tuple[float, float] = (0.7, 1.4)
    colour: bool = True  # stain, hue, saturation, brightness, contrast, gamma jitter
    degrade: bool = True  # blur and JPEG
    # The strongest blur (sigma, px at the working scale): 1.5 px is 0.57 um; a field blurred by
    # 1 um (2.6 px) loses 8-18 % of its red cells (research/detector_shift.py, blur-1um).
    blur_max: float = 1.5
    # The share of crops cut from a field enlarged `enlarged_range` times beyond the working
    # scale, with no object in them: at that size a cell is not a cell to the network. A network
    # trained on strong blur finds "cells" in a sharp field so enlarged, which misleads the
    # scale search (docs/detection.md, "The scale search's start"). 0: none (the shipped recipe).
    enlarged_p: float = 0.0
    enlarged_range: tuple[float, float] = (3.0, 8.0)
    seed: int = 0
    threads: int = 0
    workers: int = 0  # DataLoader worker processes (augmentation runs on the CPU)
    device: str = "cpu"
    max_fields: int | None = None  # cap the training fields (quick runs, tests)
    prepared: str = ""  # a folder written by prepare-detector-data, read instead of the sets
    validate_every: int = 5


def load_detector_config(path: Path | None, overrides: dict[str, Any]) -> DetectorConfig:
    values: dict[str, Any] = {}
    if path is not None:
        try:
            values = yaml.safe_load(Path(path).read_text()) or {}
        except (OSError, yaml.YAMLError) as exc:
            raise ConfigError(f"cannot read the config {path}: {exc}") from exc
    values.update({k: v for k, v in overrides.items() if v is not None})
    known = set(DetectorConfig.__dataclass_fields__)
    unknown = set(values) - known
    if unknown:
        raise ConfigError(f"unknown detector settings: {sorted(unknown)}")
    for key in ("scale_range", "kind_weights", "enlarged_range"):
        if key in values:
            values[key] = tuple(values[key])
    cfg = DetectorConfig(**values)
    if not 0 <= cfg.enlarged_p < 1:
        raise ConfigError(f"enlarged_p is a share of the crops, 0 to 1, not {cfg.enlarged_p}")
    if len(cfg.enlarged_range) != 2 or not 1 < cfg.enlarged_range[0] <= cfg.enlarged_range[1]:
        raise ConfigError(f"enlarged_range must be two factors above 1, not {cfg.enlarged_range}")
    if not cfg.yolo and not cfg.chula:
        raise ConfigError("no data: give yolo sets and/or a chula folder")
    if cfg.chula_sizes not in ("none", "segmented"):
        raise ConfigError(f"chula_sizes must be none or segmented, not {cfg.chula_sizes!r}")
    return cfg
