"""The Chula RBC-12 layout (`Dataset/<n>.jpg`, `Label/<n>.txt`): the one reader of its label files
(`read_label_file`), how much of a smear its labels cover (`label_coverage`), and the import into
a folder-per-class crop set with a smear-grouped split.

Output of the import: `out/<class_name>/<image_stem>_<x>_<y>.png`, `out/manifest.csv` (columns
`path`, `label`, `split`, `source_image`, `x`, `y`, `border_fraction`) and
`out/import_report.json`.
"""

import json
import os
import secrets
import shutil
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image
from tqdm import tqdm

from core.smear.crop import DEFAULT_WINDOW, crop_cell, median_colour
from training.datasets.split import SPLITS, grouped_split, validate_fractions
from training.errors import DataError

CHULA_CLASSES: dict[int, str] = {
    0: "normal",
    1: "macrocyte",
    2: "microcyte",
    3: "spherocyte",
    4: "target_cell",
    5: "stomatocyte",
    6: "ovalocyte",
    7: "teardrop",
    8: "burr_cell",
    9: "schistocyte",
    10: "uncategorised",
    11: "hypochromia",
    12: "elliptocyte",
}

MIN_WINDOW = 8
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
MANIFEST_COLUMNS = ["path", "label", "split", "source_image", "x", "y", "border_fraction"]
MAX_BAD_LINE_EXAMPLES = 10
# Split name used when splits=False (evaluation sets).
NO_SPLIT = "all"
# What is wrong with a label line (`BadLine.problem`).
MALFORMED = "malformed line"
UNKNOWN_CLASS = "unknown class"
COVERAGE_RADIUS_PX = 30  # label points are approximate centres, often ~10 px off
FULL_COVERAGE = 0.8


def is_chula_layout(path: Path) -> bool:
    """True if `path` has the `Dataset/` and `Label/` folders of the Chula RBC-12 layout."""
    return (path / "Dataset").is_dir() and (path / "Label").is_dir()


@dataclass(frozen=True)
class LabelPoint:
    """One labelled cell: its centre in the image's pixels and its class id (in CHULA_CLASSES)."""

    x: int
    y: int
    class_id: int
    line: int  # 1-based line number in the label file

    @property
    def label(self) -> str:
        return CHULA_CLASSES[self.class_id]


@dataclass(frozen=True)
class BadLine:
    """A label line that gives no point: `problem` is MALFORMED or UNKNOWN_CLASS, `reason` says
    what is wrong in words."""

    line: int  # 1-based line number in the label file
    text: str
    problem: str
    reason: str
    class_id: int | None = None  # the unknown id, for UNKNOWN_CLASS


@dataclass
class LabelFile:
    points: list[LabelPoint]
    bad_lines: list[BadLine]
    empty: bool  # nothing but white space


def read_label_file(path: Path) -> LabelFile:
    """Read a Chula label file: one cell a line, `x y class_id` (integers). Blank lines are
    skipped; any other line that is not three integers with a known class id is a BadLine.
    Whether a point lies inside its image is for the caller, who has the image."""
    points: list[LabelPoint] = []
    bad: list[BadLine] = []
    # utf-8-sig drops a BOM; undecodable bytes become malformed lines instead of a crash.
    text = Path(path).read_text(encoding="utf-8-sig", errors="replace")
    for number, line in enumerate(text.splitlines(), start=1):
        fields = line.split()
        if not fields:
            continue
        if len(fields) != 3:
            reason = f"expected 3 fields 'x y class_id', got {len(fields)}"
            bad.append(BadLine(number, line, MALFORMED, reason))
            continue
        try:
            x, y, class_id = (int(f) for f in fields)
        except ValueError:
            bad.append(BadLine(number, line, MALFORMED, f"non-integer value in {line.strip()!r}"))
            continue
        if class_id not in CHULA_CLASSES:
            reason = f"unknown class id {class_id}"
            bad.append(BadLine(number, line, UNKNOWN_CLASS, reason, class_id))
            continue
        points.append(LabelPoint(x, y, class_id, number))
    return LabelFile(points, bad, empty=not text.strip())


@dataclass
class ImportReport:
    """What an import found and wrote. `summary()` gives a printable digest."""

    n_images_seen: int = 0
    n_images_used: int = 0
    n_cells_written: int = 0
    n_border_cells: int = 0
    n_border_dropped: int = 0
    n_cells_filtered_out: int = 0
    n_bad_lines: int = 0
    bad_line_examples: list[str] = field(default_factory=list)
    n_missing_images: int = 0
    n_unreadable_images: int = 0
    unreadable_images: list[str] = field(default_factory=list)
    n_images_without_labels: int = 0
    n_empty_label_files: int = 0
    class_counts: dict[str, dict[str, int]] = field(default_factory=dict)
    split_fractions: dict[str, float] = field(default_factory=dict)

    def add_bad_line(self, where: str, reason: str) -> None:
        self.n_bad_lines += 1
        if len(self.bad_line_examples) < MAX_BAD_LINE_EXAMPLES:
            self.bad_line_examples.append(f"{where}: {reason}")

    def problems(self) -> str:
        """One line with the counts of everything that was skipped or odd."""
        return (
            f"{self.n_images_seen} images seen, {self.n_bad_lines} bad label lines, "
            f"{self.n_missing_images} label files without image, "
            f"{self.n_unreadable_images} unreadable images, "
            f"{self.n_images_without_labels} images without label file, "
            f"{self.n_empty_label_files} empty label files, "
            f"{self.n_border_dropped} border cells dropped, "
            f"{self.n_cells_filtered_out} cells of excluded classes"
        )

    def summary(self) -> str:
        lines = [
            f"Imported {self.n_cells_written} cells from {self.n_images_used} images "
            f"({self.n_border_cells} touch the border).",
            "Skipped/odd: " + self.problems() + ".",
        ]
        if self.bad_line_examples:
            lines.append("Bad line examples:")
            lines += [f"  {example}" for example in self.bad_line_examples]
        if self.unreadable_images:
            lines.append("Unreadable images: " + ", ".join(self.unreadable_images))
        splits = list(self.split_fractions)
        classes = list(next(iter(self.class_counts.values()), {}))
        width = max([len(c) for c in classes] + [len("class")])
        lines.append(f"{'class':<{width}} " + " ".join(f"{s:>7}" for s in splits))
        for cls in classes:
            counts = " ".join(f"{self.class_counts[s].get(cls, 0):>7}" for s in splits)
            lines.append(f"{cls:<{width}} {counts}")
        fractions = " ".join(f"{self.split_fractions[s]:>7.3f}" for s in splits)
        lines.append(f"{'fraction':<{width}} {fractions}")
        return "\n".join(lines)


@dataclass(frozen=True)
class _Cell:
    x: int
    y: int
    label: str


def _natural_key(path: Path) -> tuple[bool, int, str]:
    # Numeric stems in numeric order (2 before 10), then the rest by name.
    stem = path.stem
    return (not stem.isdigit(), int(stem) if stem.isdigit() else 0, path.name)


def label_coverage(rgb: np.ndarray, points: Sequence[tuple[float, float]]) -> float:
    """Share of the cell-covered pixels within COVERAGE_RADIUS_PX of a label point: near 1 on a
    smear whose every cell is labelled, low where only some cells (say, the abnormal ones) are.
    "Cell-covered" is a plain Otsu cut of the green channel, fixed on purpose: the set of smears
    that count as fully labelled must not move when the detector's settings do."""
    from scipy import ndimage as ndi

    from core.detect.classical import otsu_threshold

    green = ndi.gaussian_filter(rgb[..., 1].astype(np.float32), 1.0)
    foreground = green < otsu_threshold(green)
    if not foreground.any():
        return 0.0
    height, width = foreground.shape[:2]
    seeds = np.zeros((height, width), dtype=bool)
    for x, y in points:
        if 0 <= int(y) < height and 0 <= int(x) < width:
            seeds[int(y), int(x)] = True
    if not seeds.any():
        return 0.0
    near = ndi.distance_transform_edt(~seeds) <= COVERAGE_RADIUS_PX
    return float((foreground & near).sum() / foreground.sum())


def check_output(out: Path, overwrite: bool, overwrite_hint: str = "overwrite=True") -> None:
    """Refuse to write an import into a folder that holds anything but an earlier import (a
    manifest.csv), or into an earlier import without `overwrite` (`overwrite_hint` names it as
    the caller's user passes it)."""
    if not out.exists():
        return
    if not out.is_dir():
        raise DataError(f"output path {out} exists and is not a folder")
    if not any(out.iterdir()):
        return
    if not overwrite:
        raise DataError(
            f"output folder {out} already exists and is not empty; choose another folder, "
            f"or pass {overwrite_hint} to replace a previous import there"
        )
    if not (out / "manifest.csv").is_file():
        raise DataError(
            f"output folder {out} is not empty and holds no manifest.csv, so it is not a previous "
            "import; refusing to overwrite it"
        )


def import_chula(
    src: Path,
    out: Path,
    window: int = DEFAULT_WINDOW,
    seed: int = 0,
    fractions: tuple[float, float, float] = (0.7, 0.15, 0.15),
    drop_border: bool = False,
    classes: Sequence[str] | None = None,
    splits: bool = True,
    progress: bool = True,
    overwrite: bool = False,
) -> ImportReport:
    """Crop every labelled cell of a Chula RBC-12 folder into `out`, split by smear image.

    Each cell becomes a `window` x `window` PNG centred on its label point, at native scale; cells
    near the border are padded with the image's median colour (or dropped if `drop_border`).
    `classes` keeps only those class names. With `splits=False` every cell gets split "all".
    Malformed label lines, missing or unreadable images are skipped and counted in the report.
    With `overwrite=True` a previous import at `out` (a folder with manifest.csv) is replaced.
    The result is deterministic for given arguments. Raises DataError when the input is not usable.
    """
    src, out = Path(src), Path(out)
    if not is_chula_layout(src):
        missing = [d for d in ("Dataset", "Label") if not (src / d).is_dir()]
        raise DataError(
            f"{src} is not a Chula RBC-12 folder: missing {' and '.join(f'{d}/' for d in missing)}"
        )
    if isinstance(window, bool) or not isinstance(window, int) or window < MIN_WINDOW:
        raise DataError(f"window must be an integer >= {MIN_WINDOW} pixels, got {window!r}")
    try:
        fracs = validate_fractions(fractions)
    except ValueError as exc:
        raise DataError(str(exc)) from exc
    wanted = _wanted_classes(classes)
    check_output(out, overwrite)

    out.parent.mkdir(parents=True, exist_ok=True)
    # Build next to `out` and rename at the end, so an interrupted import leaves no partial `out`.
    tmp = out.parent / f".{out.name}.partial-{os.getpid()}-{secrets.token_hex(4)}"
    tmp.mkdir()
    try:
        report, manifest = _write_crops(src, tmp, window, drop_border, wanted, progress)
        if manifest.empty:
            raise DataError(f"no usable cells in {src}: {report.problems()}")
        if splits:
            per_image = manifest.groupby(["source_image", "label"]).size()
            group_counts: dict[str, dict[str, int]] = {}
            for (image, label), n in per_image.items():
                group_counts.setdefault(str(image), {})[str(label)] = int(n)
            assignment = grouped_split(group_counts, fracs, seed)
            manifest["split"] = manifest["source_image"].map(assignment)
            split_names: Sequence[str] = SPLITS
        else:
            manifest["split"] = NO_SPLIT
            split_names = (NO_SPLIT,)
        manifest = manifest[MANIFEST_COLUMNS]
        manifest.to_csv(tmp / "manifest.csv", index=False, lineterminator="\n")
        _fill_split_stats(report, manifest, split_names, wanted)
        arguments = {
            "src": str(src.resolve()),
            "window": window,
            "seed": seed,
            "fractions": list(fracs),
            "drop_border": drop_border,
            "classes": wanted,
            "splits": splits,
        }
        payload = {"report": asdict(report), "arguments": arguments}
        (tmp / "import_report.json").write_text(json.dumps(payload, indent=2) + "\n")
        if out.exists():
            shutil.rmtree(out)
        tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return report


def _wanted_classes(classes: Sequence[str] | None) -> list[str]:
    """Class names to keep, in Chula id order."""
    known = list(CHULA_CLASSES.values())
    if classes is None:
        return known
    if isinstance(classes, str):
        classes = [classes]
    unknown = sorted(set(classes) - set(known))
    if unknown:
        raise DataError(f"unknown class names {unknown}; known: {', '.join(known)}")
    if not classes:
        raise DataError("classes is empty: nothing would be imported")
    return [c for c in known if c in set(classes)]


def _write_crops(
    src: Path, dest: Path, window: int, drop_border: bool, wanted: list[str], progress: bool
) -> tuple[ImportReport, pd.DataFrame]:
    """Write the crops into `dest`; return the report so far and the manifest without split."""
    report = ImportReport()
    images: dict[str, Path] = {}
    for path in sorted((src / "Dataset").iterdir(), key=_natural_key):
        if path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES:
            images.setdefault(path.stem, path)
    labels = {
        p.stem: p
        for p in sorted((src / "Label").iterdir(), key=_natural_key)
        if p.is_file() and p.suffix.lower() == ".txt"
    }
    report.n_images_seen = len(images)
    report.n_images_without_labels = sum(stem not in labels for stem in images)
    report.n_missing_images = sum(stem not in images for stem in labels)

    wanted_set = set(wanted)
    rows: list[dict[str, object]] = []
    stems = [stem for stem in images if stem in labels]
    for stem in tqdm(stems, desc="Importing smears", unit="image", disable=not progress):
        label_file = read_label_file(labels[stem])
        if label_file.empty:
            report.n_empty_label_files += 1
        for bad in label_file.bad_lines:
            report.add_bad_line(f"{labels[stem].name}:{bad.line}", bad.reason)
        if not label_file.points:
            continue
        try:
            with Image.open(images[stem]) as opened:
                image = opened.convert("RGB")
        except (OSError, ValueError, Image.DecompressionBombError) as exc:
            report.n_unreadable_images += 1
            report.unreadable_images.append(f"{images[stem].name} ({exc})")
            continue
        width, height = image.size
        fill = median_colour(image)
        seen: set[tuple[int, int]] = set()
        used = False
        for point in label_file.points:
            x, y, class_id = point.x, point.y, point.class_id
            where = f"{labels[stem].name}:{point.line}"
            if not (0 <= x < width and 0 <= y < height):
                report.add_bad_line(where, f"point ({x}, {y}) outside the {width}x{height} image")
                continue
            if (x, y) in seen:
                report.add_bad_line(where, f"point ({x}, {y}) labelled twice")
                continue
            seen.add((x, y))
            label = CHULA_CLASSES[class_id]
            if label not in wanted_set:
                report.n_cells_filtered_out += 1
                continue
            crop, outside = crop_cell(image, x, y, window, fill)
            if outside > 0:
                report.n_border_cells += 1
                if drop_border:
                    report.n_border_dropped += 1
                    continue
            relative = f"{label}/{stem}_{x}_{y}.png"
            (dest / label).mkdir(exist_ok=True)
            # Level 1 encodes twice as fast as the default 6 for ~14% larger files.
            crop.save(dest / relative, format="PNG", compress_level=1)
            used = True
            rows.append(
                {
                    "path": relative,
                    "label": label,
                    "source_image": images[stem].name,
                    "x": x,
                    "y": y,
                    "border_fraction": round(outside, 6),
                }
            )
        report.n_images_used += used
    report.n_cells_written = len(rows)
    columns = [c for c in MANIFEST_COLUMNS if c != "split"]
    return report, pd.DataFrame(rows, columns=columns)


def _fill_split_stats(
    report: ImportReport, manifest: pd.DataFrame, split_names: Sequence[str], wanted: list[str]
) -> None:
    total = len(manifest)
    for split in split_names:
        in_split = manifest[manifest["split"] == split]
        counts = in_split["label"].value_counts()
        report.class_counts[split] = {c: int(counts.get(c, 0)) for c in wanted}
        report.split_fractions[split] = round(len(in_split) / total, 4)
