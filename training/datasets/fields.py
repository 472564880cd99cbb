"""Whole fields with every cell marked: the detector's data, from the field's usual formats.

Three importers give one representation (`Field`: an image, its source laboratory, its split and
its objects, each a red cell, white cell or platelet with a box or a point):
- `read_yolo(root)`: the YOLO layout (`images/<split>/*`, `labels/<split>/*.txt`, one line per
  object `class xc yc w h` normalised to 0..1; class names from `data.yaml` or `classes.txt`;
  an optional `sources.csv` with columns image, source);
- `read_coco(json_file, images_dir)`: COCO detection JSON (`bbox` = x, y, w, h in pixels);
- `read_chula_points(root)`: Chula RBC-12's red-cell centres (`Label/<n>.txt`, `x y class_id`,
  read by training.datasets.chula.read_label_file), with the morphology class kept and
  `complete` set on the smears whose labels cover the field.

Whatever cannot be used is counted in the `FieldReport` (malformed lines, unknown classes, boxes
outside the image or clipped to it, missing and unreadable images, empty label files) and never
stops the import; nothing usable left is a DataError. Long imports show a progress bar.
"""

from __future__ import annotations

import csv
import json
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from PIL import Image, UnidentifiedImageError
from tqdm import tqdm

from training.errors import DataError

KINDS = ("red_cell", "white_cell", "platelet")
# Names data sets give the three kinds (lower case, spaces and dashes as underscores).
KIND_NAMES = {
    "rbc": "red_cell",
    "red_cell": "red_cell",
    "red_blood_cell": "red_cell",
    "erythrocyte": "red_cell",
    "wbc": "white_cell",
    "white_cell": "white_cell",
    "white_blood_cell": "white_cell",
    "leukocyte": "white_cell",
    "leucocyte": "white_cell",
    "platelet": "platelet",
    "platelets": "platelet",
    "plt": "platelet",
    "thrombocyte": "platelet",
}
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff")
# A box edge this close to the image edge marks a cell cut by the border.
BORDER_MARGIN_PX = 2.0
# Assumed diameter of a normal red cell, to derive a scale from a set's own cells.
NORMAL_RED_CELL_UM = 7.5
MAX_EXAMPLES = 10


def kind_of(name: str) -> str | None:
    return KIND_NAMES.get(name.strip().lower().replace(" ", "_").replace("-", "_"))


@dataclass(frozen=True)
class FieldObject:
    kind: str  # one of KINDS
    x: float  # centre, pixels
    y: float
    box: tuple[float, float, float, float] | None = None  # x0, y0, x1, y1; None for a point
    label: str | None = None  # a morphology class, where the data set gives one


@dataclass
class Field:
    image: Path
    source: str
    split: str
    width: int
    height: int
    objects: list[FieldObject]
    # Every cell of the field is marked (boxes of a detection set); Chula labels only some
    # cells on many smears, and those may serve for recall but not for precision.
    complete: bool = True

    def of_kind(self, kind: str) -> list[FieldObject]:
        return [o for o in self.objects if o.kind == kind]

    def at_border(self, obj: FieldObject) -> bool:
        if obj.box is None:
            return False
        x0, y0, x1, y1 = obj.box
        m = BORDER_MARGIN_PX
        return x0 <= m or y0 <= m or x1 >= self.width - m or y1 >= self.height - m


@dataclass
class FieldReport:
    """What an import found; `summary()` is the printable digest."""

    fields: list[Field] = field(default_factory=list)
    problems: Counter[str] = field(default_factory=Counter)
    examples: list[str] = field(default_factory=list)
    objects: Counter[str] = field(default_factory=Counter)

    def note(self, problem: str, example: str) -> None:
        self.problems[problem] += 1
        if len(self.examples) < MAX_EXAMPLES:
            self.examples.append(f"{problem}: {example}")

    def add(self, item: Field) -> None:
        self.fields.append(item)
        self.objects.update(o.kind for o in item.objects)

    def sources(self) -> list[str]:
        return sorted({f.source for f in self.fields})

    def summary(self) -> str:
        per_source = Counter(f"{f.source}/{f.split}" for f in self.fields)
        lines = [
            f"{len(self.fields)} fields: "
            + ", ".join(f"{k} {n}" for k, n in sorted(per_source.items())),
            "objects: " + ", ".join(f"{k} {self.objects[k]}" for k in KINDS),
        ]
        if self.problems:
            lines.append(
                "skipped or changed: "
                + ", ".join(f"{k} {n}" for k, n in sorted(self.problems.items()))
            )
            lines += [f"  e.g. {e}" for e in self.examples]
        return "\n".join(lines)

    def require_some(self, where: Path) -> FieldReport:
        if not self.fields:
            raise DataError(f"no usable field in {where}: {dict(self.problems) or 'it is empty'}")
        return self


def _image_size(path: Path, report: FieldReport) -> tuple[int, int] | None:
    if not path.is_file():
        report.note("missing image", str(path))
        return None
    try:
        with Image.open(path) as image:
            return image.size
    except (UnidentifiedImageError, OSError, ValueError):
        report.note("unreadable image", str(path))
        return None


def _clip_box(
    box: tuple[float, float, float, float], width: int, height: int, where: str, report: FieldReport
) -> tuple[float, float, float, float] | None:
    """The box inside the image; None (counted) when nothing of it is inside."""
    x0, y0, x1, y1 = box
    if x1 <= x0 or y1 <= y0:
        report.note("empty box", where)
        return None
    cx0, cy0 = max(0.0, x0), max(0.0, y0)
    cx1, cy1 = min(float(width), x1), min(float(height), y1)
    if cx1 - cx0 < 1 or cy1 - cy0 < 1:
        report.note("box outside the image", where)
        return None
    overshoot = max(cx0 - x0, cy0 - y0, x1 - cx1, y1 - cy1)
    if overshoot >= 1.0:  # less is rounding in the normalised coordinates
        report.note("box clipped to the image", where)
    return cx0, cy0, cx1, cy1


def _box_object(kind: str, box: tuple[float, float, float, float]) -> FieldObject:
    x0, y0, x1, y1 = box
    return FieldObject(kind=kind, x=(x0 + x1) / 2, y=(y0 + y1) / 2, box=box)


def yolo_class_names(root: Path) -> list[str]:
    data_yaml = root / "data.yaml"
    if data_yaml.is_file():
        data = yaml.safe_load(data_yaml.read_text()) or {}
        names = data.get("names")
        if isinstance(names, dict):
            return [str(names[k]) for k in sorted(names)]
        if isinstance(names, list):
            return [str(n) for n in names]
    classes_txt = root / "classes.txt"
    if classes_txt.is_file():
        return [line.strip() for line in classes_txt.read_text().splitlines() if line.strip()]
    raise DataError(f"{root} has neither data.yaml with names nor classes.txt: class names unknown")


def _sources_by_image(root: Path) -> dict[str, str]:
    path = root / "sources.csv"
    if not path.is_file():
        return {}
    with path.open(newline="") as f:
        return {row["image"]: row["source"] for row in csv.DictReader(f) if row.get("source")}


def read_yolo(
    root: Path,
    splits: Sequence[str] = ("train", "val", "test"),
    source: str | None = None,
    progress: bool = True,
) -> FieldReport:
    """Fields of a YOLO-layout detection set; `source` names the laboratory when the set has
    no sources.csv (default: the folder's name)."""
    root = Path(root)
    if not (root / "images").is_dir() or not (root / "labels").is_dir():
        raise DataError(f"{root} is not a YOLO layout: it needs images/ and labels/")
    names = yolo_class_names(root)
    kinds = [kind_of(n) for n in names]
    sources = _sources_by_image(root)
    report = FieldReport()
    todo: list[tuple[str, Path]] = []
    for split in splits:
        folder = root / "images" / split
        if folder.is_dir():
            todo += [
                (split, p) for p in sorted(folder.iterdir()) if p.suffix.lower() in IMAGE_SUFFIXES
            ]
    for split, image_path in tqdm(todo, desc="fields", disable=not progress, unit="img"):
        label_path = root / "labels" / split / f"{image_path.stem}.txt"
        if not label_path.is_file():
            report.note("image without a label file", str(image_path.name))
            continue
        size = _image_size(image_path, report)
        if size is None:
            continue
        width, height = size
        objects = []
        lines = label_path.read_text().splitlines()
        if not any(line.strip() for line in lines):
            report.note("empty label file", label_path.name)
        for number, line in enumerate(lines, 1):
            if not line.strip():
                continue
            where = f"{label_path.name}:{number}"
            parts = line.split()
            try:
                class_id = int(parts[0])
                xc, yc, w, h = (float(v) for v in parts[1:5])
                if len(parts) != 5 or not np.isfinite([xc, yc, w, h]).all():
                    raise ValueError
            except (ValueError, IndexError):
                report.note("malformed line", f"{where} {line[:60]!r}")
                continue
            if not 0 <= class_id < len(kinds) or kinds[class_id] is None:
                report.note("unknown class", f"{where} class {class_id}")
                continue
            box = (
                (xc - w / 2) * width,
                (yc - h / 2) * height,
                (xc + w / 2) * width,
                (yc + h / 2) * height,
            )
            clipped = _clip_box(box, width, height, where, report)
            if clipped is not None:
                objects.append(_box_object(str(kinds[class_id]), clipped))
        relative = f"images/{split}/{image_path.name}"
        report.add(
            Field(
                image=image_path,
                source=source or sources.get(relative, root.name),
                split=split,
                width=width,
                height=height,
                objects=objects,
            )
        )
    return report.require_some(root)


def read_coco(
    json_file: Path,
    images_dir: Path | None = None,
    source: str | None = None,
    split: str = "test",
    progress: bool = True,
) -> FieldReport:
    """Fields of a COCO detection file (images under `images_dir`, default: beside the file)."""
    json_file = Path(json_file)
    try:
        data: dict[str, Any] = json.loads(json_file.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise DataError(f"{json_file} is not a readable COCO JSON file: {exc}") from exc
    if not isinstance(data, dict) or not isinstance(data.get("images"), list):
        raise DataError(f"{json_file} has no 'images' list: not a COCO detection file")
    images_dir = Path(images_dir) if images_dir else json_file.parent
    report = FieldReport()
    kinds: dict[Any, str | None] = {
        c.get("id"): kind_of(str(c.get("name", ""))) for c in data.get("categories", [])
    }
    by_image: dict[Any, list[dict[str, Any]]] = {}
    for number, ann in enumerate(data.get("annotations", [])):
        if not isinstance(ann, dict) or "image_id" not in ann:
            report.note("malformed annotation", f"annotation #{number}")
            continue
        by_image.setdefault(ann["image_id"], []).append(ann)
    for entry in tqdm(data["images"], desc="fields", disable=not progress, unit="img"):
        if not isinstance(entry, dict) or "file_name" not in entry or "id" not in entry:
            report.note("malformed image entry", str(entry)[:60])
            continue
        image_path = images_dir / str(entry["file_name"])
        size = _image_size(image_path, report)
        if size is None:
            continue
        width, height = size
        objects = []
        for ann in by_image.get(entry["id"], []):
            where = f"{entry['file_name']} annotation {ann.get('id', '?')}"
            kind = kinds.get(ann.get("category_id"))
            if kind is None:
                report.note("unknown class", where)
                continue
            bbox = ann.get("bbox")
            try:
                x, y, w, h = (float(v) for v in bbox)  # type: ignore[union-attr]
                if not np.isfinite([x, y, w, h]).all():
                    raise ValueError
            except (TypeError, ValueError):
                report.note("malformed annotation", where)
                continue
            clipped = _clip_box((x, y, x + w, y + h), width, height, where, report)
            if clipped is not None:
                objects.append(_box_object(kind, clipped))
        report.add(
            Field(
                image=image_path,
                source=source or json_file.stem,
                split=split,
                width=width,
                height=height,
                objects=objects,
            )
        )
    return report.require_some(json_file)


def read_chula_points(
    root: Path,
    stems: Iterable[str] | None = None,
    split_of: dict[str, str] | None = None,
    progress: bool = True,
) -> FieldReport:
    """Chula RBC-12 smears as fields of red-cell points with their morphology class; `complete`
    where the labels cover the field (training.datasets.chula.label_coverage), split from
    `split_of` (stem -> split; default "all")."""
    from training.datasets.chula import (
        FULL_COVERAGE,
        UNKNOWN_CLASS,
        is_chula_layout,
        label_coverage,
        read_label_file,
    )

    root = Path(root)
    if not is_chula_layout(root):
        raise DataError(f"{root} is not a Chula layout: it needs Dataset/ and Label/")
    if stems is None:
        stems = sorted((p.stem for p in (root / "Label").glob("*.txt")), key=_numeric)
    report = FieldReport()
    for stem in tqdm(list(stems), desc="smears", disable=not progress, unit="img"):
        label_path = root / "Label" / f"{stem}.txt"
        image_path = root / "Dataset" / f"{stem}.jpg"
        if not label_path.is_file():
            report.note("image without a label file", stem)
            continue
        size = _image_size(image_path, report)
        if size is None:
            continue
        width, height = size
        label_file = read_label_file(label_path)
        for bad in label_file.bad_lines:
            if bad.problem == UNKNOWN_CLASS:
                report.note(bad.problem, f"{stem}.txt:{bad.line} class {bad.class_id}")
            else:
                report.note(bad.problem, f"{stem}.txt:{bad.line} {bad.text[:60]!r}")
        objects = []
        for point in label_file.points:
            if not (0 <= point.x < width and 0 <= point.y < height):
                report.note("point outside the image", f"{stem}.txt:{point.line}")
                continue
            objects.append(
                FieldObject("red_cell", float(point.x), float(point.y), label=point.label)
            )
        if not objects:
            report.note("empty label file", stem)
            continue
        with Image.open(image_path) as opened:
            rgb = np.asarray(opened.convert("RGB"))
        coverage = label_coverage(rgb, [(o.x, o.y) for o in objects])
        report.add(
            Field(
                image=image_path,
                source="chula",
                split=(split_of or {}).get(stem, "all"),
                width=width,
                height=height,
                objects=objects,
                complete=coverage >= FULL_COVERAGE,
            )
        )
    return report.require_some(root)


def _numeric(stem: str) -> tuple[int, str]:
    return (int(stem), "") if stem.isdigit() else (1 << 30, stem)


def derived_microns_per_pixel(fields: Sequence[Field]) -> float | None:
    """A scale derived from the fields' own red cells: NORMAL_RED_CELL_UM over the median box
    side of the red cells clear of the edge. For training and evaluation only; a user's image
    comes with its own scale or none."""
    sides = [
        ((o.box[2] - o.box[0]) + (o.box[3] - o.box[1])) / 2
        for f in fields
        for o in f.of_kind("red_cell")
        if o.box is not None and not f.at_border(o)
    ]
    if not sides:
        return None
    return NORMAL_RED_CELL_UM / float(np.median(sides))
