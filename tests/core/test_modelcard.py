"""The model card: round trip, and every way `verified_weights_path` refuses a model folder."""

from __future__ import annotations

import hashlib
import json
import pickle
from dataclasses import asdict
from pathlib import Path

import pytest

from core.modelcard import (
    CARD_FILE,
    WEIGHTS_FILE,
    ModelCard,
    ModelFileError,
    sha256_file,
    verified_weights_path,
)
from training.classify.learner import load_exported

WEIGHTS = b"pretend these bytes are an exported learner\n"


def make_card(weights: bytes = WEIGHTS, **changes: object) -> ModelCard:
    values: dict[str, object] = {
        "name": "tiny",
        "classes": ["normal", "spherocyte", "target cell"],
        "architecture": "resnet18",
        "input_size": 32,
        "normalization": {"mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]},
        "crop_window_px": 24,
        "resize_method": "pad",
        "weights_sha256": hashlib.sha256(weights).hexdigest(),
        "method": "feature-extract",
        "metrics": {"accuracy": 0.9, "per_class": {"normal": {"f1": 0.9}}},
        "dataset": {"fingerprint": "ab" * 32},
        "training_config": {"seed": 0, "augment": {"flip_vert": True}},
        "library_versions": {"torch": "2.14.1"},
        "created": "2024-01-01T00:00:00+00:00",
        "notes": ["synthetic"],
    }
    values.update(changes)
    return ModelCard(**values)  # type: ignore[arg-type]


@pytest.fixture
def model_dir(tmp_path: Path) -> Path:
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / WEIGHTS_FILE).write_bytes(WEIGHTS)
    make_card().save(folder)
    return folder


def test_save_load_round_trip(tmp_path: Path) -> None:
    card = make_card()
    path = card.save(tmp_path)
    assert path == tmp_path / CARD_FILE
    assert json.loads(path.read_text())["classes"] == card.classes
    loaded = ModelCard.load(tmp_path)
    assert loaded == card
    assert loaded.format_version == card.format_version


def test_unknown_card_keys_are_ignored(tmp_path: Path) -> None:
    # A card written by a newer version, with an extra field, still loads.
    raw = {**asdict(make_card()), "some_future_field": [1, 2]}
    (tmp_path / CARD_FILE).write_text(json.dumps(raw))
    assert ModelCard.load(tmp_path) == make_card()


def test_sha256_file_matches_hashlib(tmp_path: Path) -> None:
    data = bytes(range(256)) * 5000  # more than one chunk with a small chunk size
    path = tmp_path / "blob"
    path.write_bytes(data)
    assert sha256_file(path) == hashlib.sha256(data).hexdigest()
    assert sha256_file(path, chunk=1000) == hashlib.sha256(data).hexdigest()


def test_verified_weights_path_accepts_a_matching_file(model_dir: Path) -> None:
    weights, card = verified_weights_path(model_dir)
    assert weights == model_dir / WEIGHTS_FILE
    assert card == make_card()


def test_missing_model_dir(tmp_path: Path) -> None:
    with pytest.raises(ModelFileError, match="does not exist"):
        verified_weights_path(tmp_path / "nowhere")


def test_missing_card(model_dir: Path) -> None:
    (model_dir / CARD_FILE).unlink()
    with pytest.raises(ModelFileError, match="no model card"):
        verified_weights_path(model_dir)


def test_card_that_is_not_json(model_dir: Path) -> None:
    (model_dir / CARD_FILE).write_text("{ name: tiny,")
    with pytest.raises(ModelFileError, match="not valid JSON"):
        verified_weights_path(model_dir)


def test_card_that_is_not_an_object(model_dir: Path) -> None:
    (model_dir / CARD_FILE).write_text('["name", "classes"]')
    with pytest.raises(ModelFileError, match="not a JSON object"):
        verified_weights_path(model_dir)


@pytest.mark.parametrize("key", ["name", "classes", "architecture", "input_size", "weights_sha256"])
def test_card_lacking_a_required_key(model_dir: Path, key: str) -> None:
    raw = asdict(make_card())
    del raw[key]
    (model_dir / CARD_FILE).write_text(json.dumps(raw))
    with pytest.raises(ModelFileError, match=f"lacks.*{key}"):
        verified_weights_path(model_dir)


def test_card_lacking_a_field_without_default_is_malformed(model_dir: Path) -> None:
    raw = asdict(make_card())
    del raw["normalization"]
    (model_dir / CARD_FILE).write_text(json.dumps(raw))
    with pytest.raises(ModelFileError, match="malformed"):
        verified_weights_path(model_dir)


def test_missing_weights_file(model_dir: Path) -> None:
    (model_dir / WEIGHTS_FILE).unlink()
    with pytest.raises(ModelFileError, match="missing"):
        verified_weights_path(model_dir)


def test_weights_that_differ_from_the_card(model_dir: Path) -> None:
    (model_dir / WEIGHTS_FILE).write_bytes(WEIGHTS + b"\0")
    with pytest.raises(ModelFileError, match="sha256") as err:
        verified_weights_path(model_dir)
    assert make_card().weights_sha256 in str(err.value)


class _Payload:
    """Unpickling this creates `marker`: proof that arbitrary code ran."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[Path]]:
        return (Path.touch, (self.marker,))


def test_malicious_pickle_is_never_unpickled(tmp_path: Path) -> None:
    # The payload is live: plain unpickling runs it.
    control = tmp_path / "control"
    pickle.loads(pickle.dumps(_Payload(control)))
    assert control.exists()

    marker = tmp_path / "pwned"
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / WEIGHTS_FILE).write_bytes(pickle.dumps(_Payload(marker)))
    # The card describes some other file.
    make_card(weights=b"the learner that was really exported").save(folder)
    with pytest.raises(ModelFileError, match="sha256"):
        load_exported(folder)
    assert not marker.exists(), "load_exported unpickled a file that failed the hash check"


def test_weights_file_cannot_point_outside_the_model_dir(tmp_path: Path) -> None:
    folder = tmp_path / "model"
    folder.mkdir()
    outside = b"a file beside the model folder"
    (tmp_path / "elsewhere.pkl").write_bytes(outside)
    # The card names "../elsewhere.pkl" and carries the hash of the file outside.
    make_card(weights=outside, weights_file="../elsewhere.pkl").save(folder)
    with pytest.raises(ModelFileError, match="missing") as err:
        verified_weights_path(folder)
    assert str(folder / "elsewhere.pkl") in str(err.value)

    # Only the file of that name inside the folder is ever considered.
    (folder / "elsewhere.pkl").write_bytes(outside)
    weights, _ = verified_weights_path(folder)
    assert weights == folder / "elsewhere.pkl"


def test_absolute_weights_file_is_taken_by_name_inside_the_model_dir(tmp_path: Path) -> None:
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "weights.pkl").write_bytes(WEIGHTS)
    make_card(weights_file=str(tmp_path / "other" / "weights.pkl")).save(folder)
    weights, _ = verified_weights_path(folder)
    assert weights == folder / "weights.pkl"
