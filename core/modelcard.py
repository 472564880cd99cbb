"""The model card: the JSON file beside an exported learner that describes it.

Training writes it; evaluation and the web service read it, check the weights' sha256 against it
before anything is unpickled, and take class names, input size and normalisation from it.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

CARD_FILE = "model_card.json"
WEIGHTS_FILE = "export.pkl"
FORMAT_VERSION = 1


class ModelFileError(Exception):
    """A model directory is missing a file, has an unreadable card, or its weights fail the hash."""


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
    method: str = ""
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


def verified_weights_path(model_dir: Path) -> tuple[Path, ModelCard]:
    """The weights file of `model_dir`, only once its sha256 matches the card's.

    Unpickling runs code, so an unknown or altered file is refused here, before any load.
    """
    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        raise ModelFileError(f"model directory {model_dir} does not exist")
    card = ModelCard.load(model_dir)
    # The card names a file inside the model directory, never a path elsewhere.
    weights = model_dir / Path(card.weights_file).name
    if not weights.is_file():
        raise ModelFileError(f"weights file {weights} is missing")
    actual = sha256_file(weights)
    if actual != card.weights_sha256:
        raise ModelFileError(
            f"sha256 of {weights} is {actual}, but the model card says {card.weights_sha256}: "
            "refusing to load a file that is not the one the card describes"
        )
    return weights, card


def load_exported(model_dir: Path, device: str = "cpu") -> tuple[Any, ModelCard]:
    """Load an exported fastai learner after the hash check. Returns (learner, card)."""
    import warnings

    from fastai.learner import load_learner

    weights, card = verified_weights_path(model_dir)
    with warnings.catch_warnings():
        # fastai warns that load_learner unpickles; the hash check above is why it is safe here.
        warnings.simplefilter("ignore", UserWarning)
        learn = load_learner(weights, cpu=(device == "cpu"))
    if list(map(str, learn.dls.vocab)) != list(card.classes):
        raise ModelFileError(
            f"classes in {weights} ({list(learn.dls.vocab)}) differ from the card ({card.classes})"
        )
    return learn, card
