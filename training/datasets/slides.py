"""Import the reviewed red cells of the laboratory's slides (the records database, records/) into
a folder-per-class crop set, split by slide, that `python -m training feature-extract` /
`fine-tune` read like an `import-chula` output.

Output: `out/<label>/slide<S>_field<F>_cell<C>.png`, `out/manifest.csv` (columns
`MANIFEST_COLUMNS`; `split` is what the training pipeline reads), `out/fields.csv` (each field
read: its slide, split and colour descriptor, `core.classify.calibration.field_colour_descriptor`
of the uploaded image, as the service computes it: what `adapt` makes familiar),
`out/population.csv` (every red cell of the imported slides, reviewed or not, with what the
analysis proposed and its margin: what the reviews were drawn from, so that `adapt` can weigh
them to stand for the slides, training/adapt/judging.py) and `out/import_report.json`.

Each field is decoded once, through the service's own decoding path (core.imageio), brought to
the classifier's training scale exactly as the smear analysis does (the whole field resized with
Lanczos by `microns_per_pixel / TRAINING_MICRONS_PER_PIXEL`; a field without a scale is taken to
be at the training scale, as the analysis took it), and every cell is cut with `crop_cell`,
centred on its box, padded with the field's median colour where it runs past the edge.
"""

from __future__ import annotations

import itertools
import json
import os
import re
import secrets
import shutil
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
from PIL import Image
from tqdm import tqdm

from core.classify.calibration import field_colour_descriptor
from core.imageio import ImageError, decode_image
from core.smear.analysis import TRAINING_MICRONS_PER_PIXEL, SmearError, scale_factor
from core.smear.crop import DEFAULT_WINDOW, crop_cell, median_colour
from training.datasets.chula import check_output
from training.datasets.split import SPLITS, grouped_split, validate_fractions
from training.errors import DataError

ENV_URL = "RBC_DATABASE_URL"
ENV_DATA_DIR = "RBC_DATA_DIR"
MIN_WINDOW = 8
MANIFEST_COLUMNS = [
    "path",
    "label",
    "split",
    "slide_id",
    "sample_id",
    "slide_status",
    "field_id",
    "field_ordinal",
    "field_filename",
    "cell_id",
    "x0",
    "y0",
    "x1",
    "y1",
    "at_border",
    "border_fraction",
    "microns_per_pixel",
    "proposed_label",
    "classifier_name",
    "reviewer",
    "reviewed_at",
]
POPULATION_FILE = "population.csv"
POPULATION_COLUMNS = ["cell_id", "slide_id", "field_id", "proposed_label", "margin", "reviewed"]
MAX_EXAMPLES = 10
# A label becomes a folder name: word characters, dots, plus, minus and inner spaces only.
_SAFE_LABEL = re.compile(r"\w(?:[\w.+ -]{0,98}[\w+-])?")


@dataclass
class SlidesImportReport:
    """What an import read and wrote. `summary()` gives a printable digest."""

    database: str = ""
    reviewed_only: bool = True
    signed_off_only: bool = False
    n_cells_read: int = 0
    n_cells_written: int = 0
    n_border_cells: int = 0
    n_border_dropped: int = 0
    n_fields: int = 0
    n_slides: int = 0
    n_unreadable_fields: int = 0
    unreadable_fields: list[str] = field(default_factory=list)
    n_bad_labels: int = 0
    bad_label_examples: list[str] = field(default_factory=list)
    shares: dict[str, float] = field(default_factory=dict)
    class_counts: dict[str, dict[str, int]] = field(default_factory=dict)
    slides_per_split: dict[str, int] = field(default_factory=dict)
    split_of_slide: dict[str, str] = field(default_factory=dict)

    def problems(self) -> str:
        return (
            f"{self.n_unreadable_fields} fields that could not be decoded, "
            f"{self.n_bad_labels} cells without a usable label, "
            f"{self.n_border_dropped} border cells dropped"
        )

    def summary(self) -> str:
        which = "reviewed" if self.reviewed_only else "red"
        where = " of signed-off slides" if self.signed_off_only else ""
        lines = [
            f"Imported {self.n_cells_written} {which} cells{where} from {self.n_fields} fields of "
            f"{self.n_slides} slides in {self.database} ({self.n_border_cells} cut by the field's "
            "edge).",
            "Skipped: " + self.problems() + ".",
        ]
        if self.unreadable_fields:
            lines.append("Fields not decoded: " + "; ".join(self.unreadable_fields))
        if self.bad_label_examples:
            lines.append("Unusable labels: " + "; ".join(self.bad_label_examples))
        splits = list(self.slides_per_split)
        classes = sorted({c for per in self.class_counts.values() for c in per})
        width = max([len(c) for c in classes] + [len("slides")])
        lines.append(f"{'class':<{width}} " + " ".join(f"{s:>7}" for s in splits))
        for cls in classes:
            counts = " ".join(f"{self.class_counts[s].get(cls, 0):>7}" for s in splits)
            lines.append(f"{cls:<{width}} {counts}")
        totals = " ".join(f"{sum(self.class_counts[s].values()):>7}" for s in splits)
        lines.append(f"{'cells':<{width}} {totals}")
        lines.append(
            f"{'slides':<{width}} " + " ".join(f"{self.slides_per_split[s]:>7}" for s in splits)
        )
        empty = [s for s in splits if self.slides_per_split[s] == 0 and self.shares.get(s, 0) > 0]
        if empty:
            lines.append(
                f"Note: no slide went to {', '.join(empty)}: a split by slide needs at least one "
                "slide per split; review cells of more slides (or set that share to 0)."
            )
        return "\n".join(lines)


def database_url(given: str | None) -> str:
    """The URL to read: `given`, else $RBC_DATABASE_URL, else the service's embedded default
    (`$RBC_DATA_DIR/rbc.sqlite3`, `data/rbc.sqlite3`). DataError for "none" and for a SQLite file
    that does not exist (opening it would create an empty database)."""
    from sqlalchemy import make_url
    from sqlalchemy.exc import ArgumentError

    from records.store import default_url

    url = given or os.environ.get(ENV_URL) or default_url(os.environ.get(ENV_DATA_DIR, "data"))
    url = url.strip()
    if url.lower() == "none":
        raise DataError("no records database: the URL is 'none' (slides off); give --database URL")
    try:
        parsed = make_url(url)
    except (ArgumentError, ValueError):
        return url  # open_store words the error
    if parsed.get_backend_name() == "sqlite":
        path = parsed.database
        in_memory = path in (None, "", ":memory:") or str(path).startswith("file:")
        if not in_memory and not Path(str(path)).is_file():
            raise DataError(
                f"no records database at {path} (from {parsed.render_as_string()}); give "
                f"--database URL or set {ENV_URL}"
            )
    return url


def _fractions(val_share: float, test_share: float) -> tuple[float, float, float]:
    for name, share in (("--val-share", val_share), ("--test-share", test_share)):
        if not 0 <= share < 1:
            raise DataError(f"{name} must lie in [0, 1), got {share}")
    train = 1.0 - val_share - test_share
    if train <= 0:
        raise DataError(
            f"--val-share {val_share} and --test-share {test_share} leave nothing to train on"
        )
    try:
        return validate_fractions((train, val_share, test_share))
    except ValueError as exc:
        raise DataError(str(exc)) from exc


def _open(url: str) -> Any:
    from records.errors import DatabaseUnavailable, SchemaOutOfDate
    from records.store import open_store

    try:
        store = open_store(url)
    except DatabaseUnavailable as exc:
        raise DataError(str(exc)) from None
    try:
        store.check_current()
    except SchemaOutOfDate as exc:
        store.close()
        raise DataError(str(exc)) from None
    except Exception:
        store.close()
        raise
    return store


def _field_at_training_scale(
    image: Image.Image, microns_per_pixel: float | None
) -> tuple[Image.Image, float]:
    """The decoded field as the analysis saw it, resized to the training scale. Returns the
    working image and the factor (working / uploaded pixels)."""
    factor = scale_factor(microns_per_pixel)
    if factor == 1.0:
        return image, factor
    width, height = image.size
    size = (max(1, round(width * factor)), max(1, round(height * factor)))
    return image.resize(size, Image.Resampling.LANCZOS), factor


def import_slides(
    url: str,
    out: Path,
    *,
    reviewed_only: bool = True,
    signed_off_only: bool = False,
    val_share: float = 0.15,
    test_share: float = 0.15,
    seed: int = 0,
    window: int = DEFAULT_WINDOW,
    drop_border: bool = False,
    overwrite: bool = False,
    progress: bool = True,
) -> SlidesImportReport:
    """Crop the red cells of the records database at `url` into `out`, split by slide.

    `reviewed_only`: only cells a technologist reviewed, labelled with the final label; else every
    red cell, labelled with the final label where reviewed and the proposed one elsewhere.
    `signed_off_only`: only cells of signed-off slides. Every cell of a slide goes to the same
    split (grouped, class-stratified, seeded: training.datasets.split.grouped_split), so valid
    and test never hold a cell of a training slide. Cells are `window` px crops at the training
    scale (`TRAINING_MICRONS_PER_PIXEL`), padded where the window runs past the field's edge;
    cells the analysis found cut by that edge (`at_border`, not counted in grades) are dropped
    with `drop_border`, else kept.
    The set is built in a hidden folder beside `out` and renamed at the end. DataError, one line,
    for a database that cannot be reached or is not at the current schema, and when no cell is
    left to import.
    """
    out = Path(out)
    if isinstance(window, bool) or not isinstance(window, int) or window < MIN_WINDOW:
        raise DataError(f"window must be an integer >= {MIN_WINDOW} pixels, got {window!r}")
    fractions = _fractions(val_share, test_share)
    check_output(out, overwrite, overwrite_hint="--overwrite")
    store = _open(url)
    report = SlidesImportReport(
        database=store.display_url, reviewed_only=reviewed_only, signed_off_only=signed_off_only
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    # Build next to `out` and rename at the end, so an interrupted import leaves no partial `out`.
    tmp = out.parent / f".{out.name}.partial-{os.getpid()}-{secrets.token_hex(4)}"
    tmp.mkdir()
    try:
        colours: dict[int, list[float]] = {}
        rows = _crop_from_store(store, tmp, window, drop_border, report, progress, colours)
        if not rows:
            raise _nothing_to_import(report)
        _write_manifest(tmp, rows, fractions, seed, report)
        _write_fields(tmp, colours, report)
        _write_import_report(tmp, report, fractions, seed, window, drop_border)
        replace_folder(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return report


def _crop_from_store(
    store: Any,
    dest: Path,
    window: int,
    drop_border: bool,
    report: SlidesImportReport,
    progress: bool,
    colours: dict[int, list[float]],
) -> list[dict[str, object]]:
    """`_write_crops` on the cells `report` asks for, read from `store`, which is closed after.
    A database error becomes a one-line DataError."""
    from sqlalchemy.exc import SQLAlchemyError

    from records.errors import first_line
    from records.store import reviewed_cells

    try:
        cells = iter(
            reviewed_cells(store, report.reviewed_only, signed_off_only=report.signed_off_only)
        )
        first = next(cells, None)  # no progress bar before the "no cells" error line
        if first is None:
            return []
        rows = _write_crops(
            itertools.chain([first], cells), dest, window, drop_border, report, progress, colours
        )
        _write_population(store, dest, {int(str(r["slide_id"])) for r in rows})
        return rows
    except SQLAlchemyError as exc:
        raise DataError(f"database {store.display_url}: {first_line(exc)}") from None
    finally:
        store.close()


def _write_population(store: Any, dest: Path, slide_ids: set[int]) -> None:
    """POPULATION_FILE: every red cell of the slides `slide_ids` (records.export)."""
    from records.export import slide_population

    population = pd.DataFrame(slide_population(store, slide_ids), columns=POPULATION_COLUMNS)
    population.to_csv(dest / POPULATION_FILE, index=False, lineterminator="\n")


def _nothing_to_import(report: SlidesImportReport) -> DataError:
    """Why an import wrote no cell: none to read, or none of those read usable."""
    what = "reviewed red cells" if report.reviewed_only else "red cells"
    where = " on signed-off slides" if report.signed_off_only else ""
    hint = " (review cells first, or pass --all)" if report.reviewed_only else ""
    if report.n_cells_read == 0:
        return DataError(f"no {what}{where} to import in {report.database}{hint}")
    return DataError(
        f"none of the {report.n_cells_read} {what}{where} in {report.database} could be "
        f"used: {report.problems()}"
    )


def _write_manifest(
    dest: Path,
    rows: list[dict[str, object]],
    fractions: tuple[float, float, float],
    seed: int,
    report: SlidesImportReport,
) -> None:
    """manifest.csv of `rows`, each slide's cells given one split; the split's figures go into
    `report`."""
    manifest = pd.DataFrame(rows)
    manifest["split"] = (
        manifest["slide_id"].astype(str).map(_split_by_slide(manifest, fractions, seed))
    )
    manifest = manifest[MANIFEST_COLUMNS]
    manifest.to_csv(dest / "manifest.csv", index=False, lineterminator="\n")
    _fill_stats(report, manifest, fractions)


def _write_fields(dest: Path, colours: dict[int, list[float]], report: SlidesImportReport) -> None:
    """fields.csv: each decoded field's slide, split and colour descriptor (`c0`..`c12`)."""
    slides = pd.read_csv(dest / "manifest.csv", usecols=["field_id", "slide_id", "split"])
    fields = slides.drop_duplicates("field_id").set_index("field_id")
    rows = [
        {
            "field_id": field_id,
            "slide_id": int(fields.at[field_id, "slide_id"]),
            "split": str(fields.at[field_id, "split"]),
            **{f"c{i}": v for i, v in enumerate(descriptor)},
        }
        for field_id, descriptor in sorted(colours.items())
        if field_id in fields.index  # a field none of whose cells was usable has no split
    ]
    pd.DataFrame(rows).to_csv(dest / "fields.csv", index=False, lineterminator="\n")


def _write_import_report(
    dest: Path,
    report: SlidesImportReport,
    fractions: tuple[float, float, float],
    seed: int,
    window: int,
    drop_border: bool,
) -> None:
    """import_report.json: the report, and the arguments that made the set."""
    arguments = {
        "database": report.database,  # without the password
        "reviewed_only": report.reviewed_only,
        "signed_off_only": report.signed_off_only,
        "fractions": list(fractions),
        "seed": seed,
        "window": window,
        "training_microns_per_pixel": TRAINING_MICRONS_PER_PIXEL,
        "drop_border": drop_border,
    }
    payload = {"report": asdict(report), "arguments": arguments}
    (dest / "import_report.json").write_text(json.dumps(payload, indent=2) + "\n")


def replace_folder(tmp: Path, out: Path) -> None:
    """Put the finished folder `tmp` at `out`; an earlier one there is moved aside first and
    deleted after."""
    old = None
    if out.exists():
        old = out.parent / f".{out.name}.old-{os.getpid()}-{secrets.token_hex(4)}"
        out.rename(old)
    tmp.rename(out)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


# A field at the training scale: the image, its factor (working / uploaded pixels) and its
# median colour, which pads crops that run past its edge.
_WorkField = tuple[Image.Image, float, tuple[int, int, int]]


def _write_crops(
    cells: Any,
    dest: Path,
    window: int,
    drop_border: bool,
    report: SlidesImportReport,
    progress: bool,
    colours: dict[int, list[float]],
) -> list[dict[str, object]]:
    """Write one PNG per usable cell into `dest/<label>/`; return the manifest rows (no split).
    Each decoded field's colour descriptor goes into `colours` (by field id)."""
    rows: list[dict[str, object]] = []
    field_id: int | None = None
    work: _WorkField | None = None
    fields: set[int] = set()
    slides: set[int] = set()
    for cell in tqdm(cells, desc="Importing slide cells", unit="cell", disable=not progress):
        report.n_cells_read += 1
        if cell.field_id != field_id:  # cells come field by field: decode each field once
            field_id = cell.field_id
            work = _decode_field(cell, report, colours)
        if work is None:
            continue
        label = _usable_label(cell, report)
        if label is None:
            continue
        image, factor, fill = work
        x0, y0, x1, y1 = cell.box
        cx, cy = round((x0 + x1) / 2 * factor), round((y0 + y1) / 2 * factor)
        crop, outside = crop_cell(image, cx, cy, window, fill)
        if cell.at_border:  # cut by the field's edge: the analysis did not count it
            report.n_border_cells += 1
            if drop_border:
                report.n_border_dropped += 1
                continue
        relative = f"{label}/slide{cell.slide_id}_field{cell.field_id}_cell{cell.cell_id}.png"
        (dest / label).mkdir(exist_ok=True)
        # Level 1 encodes twice as fast as the default 6 for ~14% larger files.
        crop.save(dest / relative, format="PNG", compress_level=1)
        fields.add(cell.field_id)
        slides.add(cell.slide_id)
        rows.append(_manifest_row(cell, relative, label, outside))
    report.n_cells_written = len(rows)
    report.n_fields = len(fields)
    report.n_slides = len(slides)
    return rows


def _decode_field(
    cell: Any, report: SlidesImportReport, colours: dict[int, list[float]]
) -> _WorkField | None:
    """The cell's field at the training scale, or None (counted in `report`) if it cannot be
    decoded. The uploaded field's colour descriptor goes into `colours`."""
    name = f"field {cell.field_ordinal} ({cell.filename}) of slide {cell.slide_id}"
    try:
        uploaded = decode_image(cell.image, name=name)
        image, factor = _field_at_training_scale(uploaded, cell.microns_per_pixel)
        colours[cell.field_id] = [float(v) for v in field_colour_descriptor(uploaded)]
    except (ImageError, SmearError) as exc:
        report.n_unreadable_fields += 1
        if len(report.unreadable_fields) < MAX_EXAMPLES:
            report.unreadable_fields.append(f"{name}: {exc}")
        return None
    return image, factor, median_colour(image)


def _usable_label(cell: Any, report: SlidesImportReport) -> str | None:
    """The cell's label if it can name a folder; else None, counted in `report`."""
    label = cell.label
    if label is None or not _SAFE_LABEL.fullmatch(label):
        report.n_bad_labels += 1
        if len(report.bad_label_examples) < MAX_EXAMPLES:
            report.bad_label_examples.append(f"cell {cell.cell_id}: {label!r}")
        return None
    return label


def _manifest_row(cell: Any, relative: str, label: str, outside: float) -> dict[str, object]:
    """The manifest's row of a written crop (all columns but `split`)."""
    x0, y0, x1, y1 = cell.box
    return {
        "path": relative,
        "label": label,
        "slide_id": cell.slide_id,
        "sample_id": cell.sample_id,
        "slide_status": cell.slide_status,
        "field_id": cell.field_id,
        "field_ordinal": cell.field_ordinal,
        "field_filename": cell.filename,
        "cell_id": cell.cell_id,
        "x0": x0,
        "y0": y0,
        "x1": x1,
        "y1": y1,
        "at_border": bool(cell.at_border),
        "border_fraction": round(outside, 6),
        "microns_per_pixel": cell.microns_per_pixel,
        "proposed_label": cell.proposed_label,
        "classifier_name": cell.classifier_name,
        "reviewer": cell.reviewed_by,
        "reviewed_at": cell.reviewed_at.isoformat() if cell.reviewed_at else None,
    }


def _split_by_slide(
    manifest: pd.DataFrame, fractions: tuple[float, float, float], seed: int
) -> dict[str, str]:
    """train / valid / test per slide id (as text): whole slides, stratified by class, seeded."""
    group_counts: dict[str, dict[str, int]] = {}
    for (slide, label), n in manifest.groupby(["slide_id", "label"]).size().items():
        group_counts.setdefault(str(slide), {})[str(label)] = int(n)
    return grouped_split(group_counts, fractions, seed)


def _fill_stats(
    report: SlidesImportReport, manifest: pd.DataFrame, fractions: tuple[float, float, float]
) -> None:
    report.shares = dict(zip(SPLITS, fractions, strict=True))
    classes: Sequence[str] = sorted(manifest["label"].unique())
    for split in SPLITS:
        in_split = manifest[manifest["split"] == split]
        counts = in_split["label"].value_counts()
        report.class_counts[split] = {c: int(counts.get(c, 0)) for c in classes}
        report.slides_per_split[split] = int(in_split["slide_id"].nunique())
    per_slide = manifest.drop_duplicates("slide_id").sort_values("slide_id")
    report.split_of_slide = {
        str(s): str(p) for s, p in zip(per_slide.slide_id, per_slide.split, strict=True)
    }
