"""Training configuration: defaults, YAML, overrides, validation and the saved copy."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import yaml

from training.classify.config import AugmentConfig, TrainConfig, load_config
from training.errors import ConfigError


def write_yaml(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_defaults_validate_once_data_is_given() -> None:
    cfg = load_config(None, {"data": "crops"})
    expected = TrainConfig(data="crops", name="resnet50-feature-extract")
    assert cfg == expected
    assert cfg.augment == AugmentConfig()
    # The thesis's augmentation: vertical flips, any rotation, no warp.
    assert cfg.augment.flip_vert and cfg.augment.max_rotate == 180.0 and cfg.augment.max_warp == 0


def test_name_defaults_to_arch_and_method() -> None:
    cfg = load_config(None, {"data": "d", "arch": "resnet18", "method": "fine-tune"})
    assert cfg.name == "resnet18-fine-tune"
    assert load_config(None, {"data": "d", "name": "mine"}).name == "mine"


def test_file_values_then_overrides(tmp_path: Path) -> None:
    path = write_yaml(
        tmp_path / "c.yaml",
        "data: from-file\narch: resnet34\nepochs: 7\nlr: 0.01\nseed: 3\n"
        "augment:\n  max_rotate: 90\n",
    )
    cfg = load_config(path, {"epochs": 2, "seed": None, "arch": None, "lr": 0.5})
    assert cfg.data == "from-file"
    assert cfg.arch == "resnet34"  # None: not given on the command line
    assert cfg.seed == 3  # None: not given
    assert cfg.epochs == 2  # given: wins over the file
    assert cfg.lr == 0.5
    assert cfg.augment.max_rotate == 90
    assert cfg.augment.flip_vert is True  # augment keys not in the file keep their defaults
    assert cfg.batch_size == TrainConfig().batch_size  # neither file nor override


def test_empty_yaml_file_means_defaults(tmp_path: Path) -> None:
    path = write_yaml(tmp_path / "empty.yaml", "")
    assert load_config(path, {"data": "d"}) == load_config(None, {"data": "d"})


def test_unknown_key_lists_the_known_ones(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="unknown keys \\['epoch'\\]") as err:
        load_config(None, {"data": "d", "epoch": 3})
    for field in dataclasses.fields(TrainConfig):
        assert field.name in str(err.value)
    path = write_yaml(tmp_path / "c.yaml", "data: d\nlearning_rate: 0.1\n")
    with pytest.raises(ConfigError, match=f"{path}.*learning_rate"):
        load_config(path, {})


def test_unknown_augment_key(tmp_path: Path) -> None:
    path = write_yaml(tmp_path / "c.yaml", "data: d\naugment:\n  max_rotation: 90\n")
    with pytest.raises(ConfigError, match="unknown augment keys \\['max_rotation'\\]"):
        load_config(path, {})


def test_augment_must_be_a_mapping(tmp_path: Path) -> None:
    path = write_yaml(tmp_path / "c.yaml", "data: d\naugment: [1, 2]\n")
    with pytest.raises(ConfigError, match="augment"):
        load_config(path, {})


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("method", "transfer", "method must be one of"),
        ("split", "stratified", "split must be"),
        ("device", "tpu", "device must be"),
        ("epochs", -1, "epochs must be positive"),
        ("epochs", 0, "epochs must be positive"),
        ("batch_size", 0, "batch_size must be positive"),
        ("input_size", -32, "input_size must be positive"),
        ("lr", 0.0, "lr must be positive"),
        ("lr_ratio", -1.0, "lr_ratio must be positive"),
        ("frozen_epochs", -1, "frozen_epochs"),
        ("valid_pct", 0.0, "valid_pct"),
        ("valid_pct", 1.0, "valid_pct"),
        ("valid_pct", 1.5, "valid_pct"),
        ("max_lr", 0.0, "max_lr must be positive"),
        ("max_lr", -1e-3, "max_lr must be positive"),
        ("max_per_class", 0, "max_per_class"),
        ("class_weighting", "balanced", "class_weighting must be one of"),
        ("label_smoothing", 1.0, "label_smoothing"),
        ("label_smoothing", -0.1, "label_smoothing"),
    ],
)
def test_bad_values(key: str, value: object, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_config(None, {"data": "d", key: value})


def test_missing_data() -> None:
    with pytest.raises(ConfigError, match="no data set"):
        load_config(None, {})
    with pytest.raises(ConfigError, match="no data set"):
        load_config(None, {"data": None})


def test_invalid_yaml(tmp_path: Path) -> None:
    path = write_yaml(tmp_path / "bad.yaml", "data: [unclosed\n  epochs: : 3\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(path, {})


def test_yaml_that_is_not_a_mapping(tmp_path: Path) -> None:
    path = write_yaml(tmp_path / "list.yaml", "- data\n- epochs\n")
    with pytest.raises(ConfigError, match="must hold a mapping"):
        load_config(path, {})


def test_missing_config_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nowhere.yaml", {"data": "d"})


def test_save_then_load_gives_an_equal_config(tmp_path: Path) -> None:
    cfg = load_config(
        None,
        {
            "data": "crops",
            "method": "fine-tune",
            "arch": "efficientnet_lite0",
            "classes": ["normal", "target cell"],
            "max_per_class": 5,
            "max_lr": 3e-4,
            "lr": 1e-3,
            "valid_pct": 0.25,
        },
    )
    cfg.augment.max_rotate = 45.0
    path = tmp_path / "config.yaml"
    cfg.save(path)
    assert yaml.safe_load(path.read_text())["augment"]["max_rotate"] == 45.0
    again = load_config(path, {})
    assert again == cfg
    assert isinstance(again.augment, AugmentConfig)


def test_yaml_exponent_learning_rate_is_a_number(tmp_path: Path) -> None:
    path = write_yaml(tmp_path / "c.yaml", "data: d\nlr: 1e-3\nmax_lr: 3e-4\n")
    cfg = load_config(path, {})
    assert cfg.lr == pytest.approx(1e-3) and cfg.max_lr == pytest.approx(3e-4)


def test_value_of_the_wrong_type_is_a_config_error(tmp_path: Path) -> None:
    path = write_yaml(tmp_path / "c.yaml", "data: d\nepochs: ten\n")
    with pytest.raises(ConfigError, match="epochs"):
        load_config(path, {})
