"""What several command groups share: the type of the subparsers they register on, the model
and detector loading, and the options that mean the same in every command."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from core.modelcard import ModelFileError
from training.errors import DataError

# What add_subparsers returns; each command group registers its parsers on it.
Subparsers = argparse._SubParsersAction


def read_notes(notes: list[str]) -> list[str]:
    """Model-card notes as given, each "@FILE" read from its file."""
    return [Path(n[1:]).read_text().strip() if n.startswith("@") else n for n in notes]


def load_predictor(model: Path, threads: int, tta_views: int | None) -> Any:
    from core.classify.predictor import ModelLoadError, Predictor

    try:
        # torch, the engine the cards' figures were measured with (bench/bench_engines.py
        # measures ONNX Runtime against it).
        return Predictor.load(
            model, device="auto", threads=threads, tta_views=tta_views, engine="torch"
        )
    except ModelLoadError as exc:
        raise DataError(f"cannot load the model: {exc}") from exc


def load_detector(choice: str, small_red: str | None = None) -> Any:
    """ "classical" (or "none"): None, the classical segmentation; else a detector folder, with
    `small_red` ("THRESHOLD,UM": red-cell peaks under UM across kept from THRESHOLD up)."""
    if choice in ("classical", "none"):
        return None
    from core.detect.learned import CellDetector

    try:
        detector = CellDetector.load(Path(choice), engine="torch")
    except ModelFileError as exc:
        raise DataError(f"cannot load the detector: {exc}") from exc
    if small_red:
        from core.detect.learned import parse_small_red

        try:
            detector.small_red = parse_small_red(small_red)
        except ValueError as exc:
            raise DataError(str(exc)) from None
    return detector


def add_small_red_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--small-red",
        metavar="THRESHOLD,UM",
        help="keep red-cell peaks under UM across from THRESHOLD up (a candidate rule, "
        "research/small_cell_threshold.py; default: the card's threshold for every peak)",
    )


def default_detector() -> str:
    return (
        "models/detector" if Path("models/detector/detector_card.json").is_file() else "classical"
    )


def add_views_arg(p: argparse.ArgumentParser, help_text: str) -> None:
    p.add_argument("--tta-views", type=int, choices=[1, 2, 4, 8], help=help_text)
