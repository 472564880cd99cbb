"""Train the cell detector (core/detect/learned.py) on labelled fields from several laboratories.

`python -m training train-detector --config configs/detector.yaml` reads the fields (YOLO sets
with boxes around every red cell, white cell and platelet; Chula's red-cell points on its fully
labelled smears), brings each to the detector's working scale (a red cell ~20 px across), and
trains on random crops with strong augmentation: scale 0.7-1.4x, flips and quarter turns, stain
jitter in haematoxylin-eosin-DAB space, hue, saturation, brightness, contrast and gamma, blur and
JPEG. Losses: CenterNet's focal loss on the centre heatmaps (on Chula fields only the red-cell
map: its white cells and platelets are not labelled) and an L1 loss on log box sizes at the
centres of boxed objects. The per-kind thresholds are chosen on the validation fields. The run
folder gets the detector (detector_state.pt + detector_card.json, sha256 inside), its history
and validation figures; `export-detector` publishes it under models/.

The code lives in training/detect/, one stage a module: `config`, `data`, `transforms`, `engine`
(network, losses, loop), `evaluate` (thresholds, size calibration, figures) and `export`; this
module is its import point.
"""

from __future__ import annotations

from training.detect.config import (
    CHULA_MICRONS_PER_PIXEL,
    POINT_CELL_UM,
    DetectorConfig,
    load_detector_config,
)
from training.detect.data import (
    PREPARED_INDEX,
    Sample,
    load_prepared,
    load_samples,
    object_rows,
    prepare_samples,
    read_samples,
    replace_prepared,
    segmented_sizes,
    to_sample,
)
from training.detect.engine import (
    BODY_PREFIXES,
    FieldCrops,
    build_network,
    finish_detector,
    focal_loss,
    train_detector,
)
from training.detect.evaluate import (
    choose_thresholds,
    figures_by_source,
    size_calibration,
)
from training.detect.export import (
    export_detector,
)
from training.detect.transforms import (
    augment,
    enlarged_negative,
    targets,
)

__all__ = [
    "BODY_PREFIXES",
    "CHULA_MICRONS_PER_PIXEL",
    "POINT_CELL_UM",
    "PREPARED_INDEX",
    "DetectorConfig",
    "FieldCrops",
    "Sample",
    "augment",
    "build_network",
    "choose_thresholds",
    "enlarged_negative",
    "export_detector",
    "figures_by_source",
    "finish_detector",
    "focal_loss",
    "load_detector_config",
    "load_prepared",
    "load_samples",
    "object_rows",
    "prepare_samples",
    "read_samples",
    "replace_prepared",
    "segmented_sizes",
    "size_calibration",
    "targets",
    "to_sample",
    "train_detector",
]
