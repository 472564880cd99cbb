"""Shared fixtures: a synthetic Chula-layout set, its import, and one tiny trained run.

The trained run (resnet18 from random weights, 32 px, one epoch) is made once per session and
reused by the export, reload and evaluation tests, so the default run stays fast.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# The CI machine has two cores: more OpenMP threads than that only fight each other.
os.environ.setdefault("OMP_NUM_THREADS", "2")

from tests.synthetic import make_chula_dir
from training.classify.config import TrainConfig, load_config

WINDOW = 24  # synthetic cells are ~18 px across


@pytest.fixture(scope="session")
def chula_src(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_chula_dir(tmp_path_factory.mktemp("chula"), n_images=12, cells_per_image=12)


@pytest.fixture(scope="session")
def imported(chula_src: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from training.datasets.chula import import_chula

    out = tmp_path_factory.mktemp("imported") / "crops"
    import_chula(chula_src, out, window=WINDOW, progress=False)
    return out


def tiny_config(data: Path, out_dir: Path, **overrides: object) -> TrainConfig:

    settings: dict[str, object] = {
        "data": str(data),
        "out_dir": str(out_dir),
        "arch": "resnet18",
        "weights": "random",
        "input_size": 32,
        "batch_size": 16,
        "epochs": 1,
        "top_losses": 4,
        "device": "cpu",
    }
    settings.update(overrides)
    return load_config(None, settings)


@pytest.fixture(scope="session")
def trained_run(imported: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from training.classify.engine import train

    return train(tiny_config(imported, tmp_path_factory.mktemp("runs")), progress=False)


@pytest.fixture(scope="session")
def model_dir(trained_run: Path) -> Path:
    """The tiny run's exported model: what the service tests (and the commands beside the
    service) serve."""
    return trained_run / "model"
