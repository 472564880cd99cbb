"""A trained run's detector published under models/, its card and sha256 checked."""

from __future__ import annotations

from pathlib import Path

from core.detect.learned import (
    DETECTOR_STATE,
)
from training.errors import DataError


def export_detector(
    run_dir: Path, models_dir: Path, name: str, notes: list[str], overwrite: bool = False
) -> Path:
    """Publish a run's detector under models_dir/name (state dict + card, hash checked first)."""
    import shutil

    from core.detect.learned import verified_detector_path
    from core.modelcard import ModelFileError

    source = Path(run_dir) / "detector"
    try:
        state, card = verified_detector_path(source)
    except ModelFileError as exc:
        raise DataError(f"{run_dir} holds no verified detector: {exc}") from exc
    dest = Path(models_dir) / name
    if dest.exists():
        if not overwrite:
            raise DataError(f"{dest} exists: pass --overwrite to replace it")
        shutil.rmtree(dest)
    dest.mkdir(parents=True)
    shutil.copy2(state, dest / DETECTOR_STATE)
    for extra in ("history.json",):
        if (Path(run_dir) / extra).is_file():
            shutil.copy2(Path(run_dir) / extra, dest / extra)
    card.name = name
    card.state_file = DETECTOR_STATE
    card.notes = [*card.notes, *notes]
    card.save(dest)
    verified_detector_path(dest)
    return dest
