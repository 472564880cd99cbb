"""The model card: the JSON file beside an exported model that describes it.

An exported model folder holds the fastai learner (export.pkl, for training and evaluation), the
network's state dict (model_state.pt, what the web service loads, without fastai or unpickling
code) and this card. Training writes it; evaluation and the service read it, check the sha256 of
the file they load against it before reading that file, and take class names, input size and
normalisation from it.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

CARD_FILE = "model_card.json"
WEIGHTS_FILE = "export.pkl"
ONNX_FILE = "model.onnx"
STATE_FILE = "model_state.pt"
FORMAT_VERSION = 1


class ModelFileError(Exception):
    """A model directory is missing a file, has an unreadable card, or its weights fail the hash."""


# Chula RBC-12's scale: its own scale bar reads 20 um over 105 px (images 100 and 200), so 0.19
# um per pixel; a normal red cell (7.5 um) is then ~39 px, as measured. Every classifier so far
# learnt from cells at this scale (Chula's crops as they are; slides' fields brought to it).
CHULA_MICRONS_PER_PIXEL = 0.19


@dataclass
class ModelCard:
    name: str
    classes: list[str]
    architecture: str
    input_size: int
    normalization: dict[str, list[float]]
    # Side, in native pixels, of the window cropped around each cell (None: unknown source scale).
    crop_window_px: int | None
    resize_method: str
    weights_sha256: str
    weights_file: str = WEIGHTS_FILE
    # The network's state dict (torch.save, tensors only); None on cards exported before it existed.
    state_file: str | None = None
    state_sha256: str | None = None
    method: str = ""
    # Test-time views (core/classify/tta.py) the service averages by default, and that
    # `metrics` were measured with; 1 on cards written before test-time views existed.
    tta_views: int = 1
    # The network as an ONNX graph (model.onnx: the logits and the features the last layer
    # reads), which ONNX Runtime serves several times faster on a CPU (core/classify/engines.py);
    # None on cards exported before it existed (torch serves them).
    onnx_file: str | None = None
    onnx_sha256: str | None = None
    # Features of base training cells that a laboratory's adaptation replays so as not to forget
    # them (training/adapt/replay.py); None on cards without one. Training only: never served.
    replay_file: str | None = None
    replay_sha256: str | None = None
    # The engine and version `metrics` were measured with (torch's at training; None on cards
    # from before it was kept: torch, library_versions says which).
    metrics_engine: str | None = None
    # The scale of its training cells (um per pixel): fields are brought to it before cells are
    # cut, so that size classes keep their meaning. Cards written before it was kept: Chula's.
    microns_per_pixel: float = CHULA_MICRONS_PER_PIXEL
    metrics: dict[str, Any] = field(default_factory=dict)
    dataset: dict[str, Any] = field(default_factory=dict)
    training_config: dict[str, Any] = field(default_factory=dict)
    library_versions: dict[str, str] = field(default_factory=dict)
    created: str = ""
    notes: list[str] = field(default_factory=list)
    format_version: int = FORMAT_VERSION

    def save(self, model_dir: Path) -> Path:
        path = Path(model_dir) / CARD_FILE
        path.write_text(json.dumps(asdict(self), indent=2, sort_keys=False) + "\n")
        return path

    @classmethod
    def load(cls, model_dir: Path) -> ModelCard:
        path = Path(model_dir) / CARD_FILE
        if not path.is_file():
            raise ModelFileError(f"no model card at {path}: is {model_dir} an exported model?")
        try:
            raw = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise ModelFileError(f"model card {path} is not valid JSON: {exc}") from exc
        if not isinstance(raw, dict):
            raise ModelFileError(f"model card {path} is not a JSON object")
        known = set(cls.__dataclass_fields__)
        missing = {"name", "classes", "architecture", "input_size", "weights_sha256"} - set(raw)
        if missing:
            raise ModelFileError(f"model card {path} lacks {sorted(missing)}")
        try:
            return cls(**{k: v for k, v in raw.items() if k in known})
        except TypeError as exc:
            raise ModelFileError(f"model card {path} is malformed: {exc}") from exc


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def verified_file(model_dir: Path, file_name: str, expected: str, card: str = "model card") -> Path:
    """`file_name` inside `model_dir`, once its sha256 is the one its `card` says (before anything
    reads it): the classifier's and the detector's files alike."""
    # The card names a file inside the model directory, never a path elsewhere.
    path = model_dir / Path(file_name).name
    if not path.is_file():
        raise ModelFileError(f"weights file {path} is missing")
    actual = sha256_file(path)
    if actual != expected:
        raise ModelFileError(
            f"sha256 of {path} is {actual}, but the {card} says {expected}: "
            "refusing to load a file that is not the one the card describes"
        )
    return path


def _card_of(model_dir: Path) -> ModelCard:
    if not model_dir.is_dir():
        raise ModelFileError(f"model directory {model_dir} does not exist")
    return ModelCard.load(model_dir)


def verified_weights_path(model_dir: Path) -> tuple[Path, ModelCard]:
    """The exported learner (export.pkl) of `model_dir`, only once its sha256 matches the card's.

    Unpickling runs code, so an unknown or altered file is refused here, before any load.
    """
    model_dir = Path(model_dir)
    card = _card_of(model_dir)
    return verified_file(model_dir, card.weights_file, card.weights_sha256), card


def verified_state_path(model_dir: Path) -> tuple[Path, ModelCard]:
    """The network's state dict (model_state.pt) of `model_dir`, once its sha256 matches the card's.

    A card written before state files existed names none: the model must be exported again.
    """
    model_dir = Path(model_dir)
    card = _card_of(model_dir)
    if not card.state_file or not card.state_sha256:
        raise ModelFileError(
            f"the model card of {model_dir} names no state file ({STATE_FILE}): it was exported "
            "before the service stopped unpickling learners; re-export it with "
            "`python -m training export --run <run> --name <name>` (it adds the file)"
        )
    return verified_file(model_dir, card.state_file, card.state_sha256), card


def verified_onnx_path(model_dir: Path) -> Path | None:
    """The network's ONNX graph (model.onnx) of `model_dir`, once its sha256 matches the card's;
    None when the card names none."""
    model_dir = Path(model_dir)
    card = _card_of(model_dir)
    if not card.onnx_file or not card.onnx_sha256:
        return None
    return verified_file(model_dir, card.onnx_file, card.onnx_sha256)
