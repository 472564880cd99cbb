"""`python -m app`: serve, or analyse smear fields from the command line with the service's own
models, settings (RBC_*, docs/service.md) and limits.

    python -m app                                   # serve on RBC_HOST:RBC_PORT
    python -m app analyze-smear F1.jpg F2.png --out results/ [--microns-per-pixel 0.1]

`analyze-smear` writes, per image, <stem>.json (the field's result, core.smear.result: the
summary, every red cell, the white cells and platelets), <stem>_cells.csv (one row per red cell)
and <stem>_overlay.png. It goes through
app/analysis.py as POST /analyze/smear does, so a file gets the same answer and the same refusals
here as from the API. Exit status 2 when any image could not be analysed, or no model loads.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from app.analysis import analyze_field, read_field
from app.config import Settings
from app.server import serve
from app.sheets import FIELD_COLUMNS, csv_text, field_rows
from app.state import ModelSlot
from core.imageio import ImageError
from core.smear.analysis import (
    MAX_MICRONS_PER_PIXEL,
    MIN_MICRONS_PER_PIXEL,
    AnalysedField,
    SmearError,
)
from core.smear.result import FieldResult


class CommandError(Exception):
    """A failure the command reports in one line, with exit status 2."""


def write_result(analysed: AnalysedField, out_dir: Path, stem: str) -> dict[str, Path]:
    """<stem>.json (the field's result: summary, red cells, white cells, platelets, as
    POST /analyze/smear answers it without the overlay and models), <stem>_cells.csv and
    <stem>_overlay.png in out_dir."""
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {
        "json": out_dir / f"{stem}.json",
        "csv": out_dir / f"{stem}_cells.csv",
        "overlay": out_dir / f"{stem}_overlay.png",
    }
    result = analysed.result
    paths["json"].write_text(result.model_dump_json(indent=1))
    # newline="": the writer's own line ends (\r\n), as the slides' CSV
    paths["csv"].write_text(csv_text(FIELD_COLUMNS, field_rows(result)), newline="")
    paths["overlay"].write_bytes(analysed.overlay_png)
    return paths


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def _summary_line(path: Path, result: FieldResult, written: dict[str, Path]) -> str:
    top = sorted(result.counts.items(), key=lambda kv: -kv[1])[:4]
    shown = ", ".join(f"{c} {n} ({result.percentages[c]:.0f}%)" for c, n in top if n)
    graded = ", ".join(f"{c} {g}" for c, g in result.grades.items() if g != "none")
    others = (
        f"{_plural(result.white_cells_found, 'white cell')}, "
        f"{_plural(result.platelets_found, 'platelet')}; "
    )
    return (
        f"{path}: {result.cells_counted} red cells counted ({result.cells_at_border} at the edge "
        f"not counted), {others}{result.timings_ms['total']:.0f} ms; {shown}; "
        f"grades: {graded or 'none'}; -> {written['json']}"
    )


def analyze_smears(settings: Settings, images: list[Path], out: Path, mpp: float | None) -> None:
    slot = ModelSlot()
    slot.load(settings)
    if slot.predictor is None:
        raise CommandError(f"cannot load the model: {slot.error}")
    failed = 0
    for path in images:
        try:
            with open(path, "rb") as stream:
                image = read_field(stream, f"'{path}'", settings, mpp)
            analysed = analyze_field(image, slot.predictor, slot.detector, settings, mpp)
        except (OSError, ImageError, SmearError) as exc:
            print(f"{path}: {exc}", file=sys.stderr)
            failed += 1
            continue
        written = write_result(analysed, out, path.stem)
        print(_summary_line(path, analysed.result, written), flush=True)
        for note in analysed.result.notes:
            print(f"  note: {note}")
    if failed:
        raise CommandError(f"{failed} of {len(images)} images could not be analysed")


def _scale(text: str) -> float:
    value = float(text)
    if not MIN_MICRONS_PER_PIXEL <= value <= MAX_MICRONS_PER_PIXEL:
        raise argparse.ArgumentTypeError(
            f"{value} is outside {MIN_MICRONS_PER_PIXEL}-{MAX_MICRONS_PER_PIXEL} um per pixel"
        )
    return value


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m app", description="serve (the default), or analyse smear fields"
    )
    sub = p.add_subparsers(dest="command")
    sub.add_parser("serve", help="serve the page and the API on RBC_HOST:RBC_PORT")
    a = sub.add_parser(
        "analyze-smear",
        help="find, classify, count and grade the cells of smear fields",
        description="Settings come from RBC_* as for the service (docs/service.md); "
        "--model and --detector override RBC_MODEL_DIR and RBC_DETECTOR_DIR.",
    )
    a.add_argument("images", type=Path, nargs="+", help="smear fields (PNG, JPEG, TIFF, BMP)")
    a.add_argument(
        "--microns-per-pixel",
        type=_scale,
        help="the fields' scale; without it the learned detector estimates it from the red cells",
    )
    a.add_argument("--out", type=Path, default=Path("smear-results"), help="output folder")
    a.add_argument("--model", type=Path, help="classifier folder (RBC_MODEL_DIR)")
    a.add_argument(
        "--detector", type=Path, help='detector folder, or "none" for the classical segmentation'
    )
    return p


def main(argv: list[str] | None = None) -> None:
    args = parser().parse_args(argv)
    overrides: dict[str, Any] = {}
    if args.command == "analyze-smear":
        if args.model is not None:
            overrides["model_dir"] = args.model
        if args.detector is not None:
            overrides["detector_dir"] = args.detector
    try:
        settings = Settings(**overrides)
    except ValueError as exc:  # pydantic's ValidationError: a bad RBC_* value
        print(f"error: bad setting: {exc}", file=sys.stderr)
        sys.exit(2)
    if args.command in (None, "serve"):
        serve(settings)
        return
    try:
        analyze_smears(settings, args.images, args.out, args.microns_per_pixel)
    except CommandError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
