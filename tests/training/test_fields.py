"""Importers of labelled fields (YOLO, COCO, Chula points) and the detector evaluation."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.synthetic import make_chula_dir, make_smear
from training.datasets.fields import (
    Field,
    FieldObject,
    derived_microns_per_pixel,
    read_chula_points,
    read_coco,
    read_yolo,
)
from training.detect.evaluate import (
    Found,
    classical_detector,
    evaluate_fields,
    field_figures,
    match,
    summarise,
)
from training.errors import DataError

# The synthetic smear: 320x240, red cells of radius 19, three platelets, one white-cell nucleus.
RED_R = 19


def smear_objects() -> tuple[np.ndarray, list[tuple[int, float, float, float, float]]]:
    """The synthetic smear and its YOLO lines (class 0 WBC, 1 RBC, 2 platelet; normalised)."""
    image, interior, border = make_smear()
    h, w = image.shape[:2]
    lines = []
    for x, y in interior + border:
        x0, x1 = max(0, x - RED_R), min(w, x + RED_R)
        lines.append((1, (x0 + x1) / 2 / w, y / h, (x1 - x0) / w, 2 * RED_R / h))
    for x, y in [(110, 100), (205, 110), (300, 130)]:
        lines.append((2, x / w, y / h, 8 / w, 8 / h))
    lines.append((0, 200 / w, 215 / h, 34 / w, 34 / h))
    return image, lines


def write_yolo(root: Path, bad: bool = True) -> Path:
    image, lines = smear_objects()
    (root / "images" / "train").mkdir(parents=True)
    (root / "labels" / "train").mkdir(parents=True)
    (root / "classes.txt").write_text("WBC\nRBC\nPlatelets\n")
    Image.fromarray(image).save(root / "images" / "train" / "a.png")
    text = "\n".join(f"{c} {x:.6f} {y:.6f} {bw:.6f} {bh:.6f}" for c, x, y, bw, bh in lines)
    if bad:
        text += "\n1 0.5 0.5 oops 0.1\n7 0.5 0.5 0.1 0.1\n1 1.5 1.5 0.1 0.1\n1 0.98 0.5 0.2 0.1\n"
        Image.fromarray(image).save(root / "images" / "train" / "nolabel.png")
        (root / "images" / "train" / "broken.png").write_bytes(b"not a png")
        (root / "labels" / "train" / "broken.txt").write_text("1 0.5 0.5 0.1 0.1\n")
        Image.fromarray(image).save(root / "images" / "train" / "empty.png")
        (root / "labels" / "train" / "empty.txt").write_text("")
    (root / "labels" / "train" / "a.txt").write_text(text)
    return root


def test_yolo_import_counts_every_problem(tmp_path: Path) -> None:
    report = read_yolo(write_yolo(tmp_path / "set"), progress=False)
    assert len(report.fields) == 2  # a.png and the empty field
    field = next(f for f in report.fields if f.image.name == "a.png")
    assert len(field.of_kind("red_cell")) == 9  # 8 drawn + the clipped one
    assert len(field.of_kind("platelet")) == 3 and len(field.of_kind("white_cell")) == 1
    problems = report.problems
    assert problems["malformed line"] == 1
    assert problems["unknown class"] == 1
    assert problems["box outside the image"] == 1
    assert problems["box clipped to the image"] == 1
    assert problems["image without a label file"] == 1
    assert problems["unreadable image"] == 1
    assert problems["empty label file"] == 1
    assert "malformed line 1" in report.summary()
    assert field.source == "set"  # no sources.csv: the folder's name


def test_yolo_import_refuses_a_folder_with_nothing_usable(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="not a YOLO layout"):
        read_yolo(tmp_path, progress=False)
    (tmp_path / "images" / "train").mkdir(parents=True)
    (tmp_path / "labels" / "train").mkdir(parents=True)
    (tmp_path / "classes.txt").write_text("RBC\n")
    with pytest.raises(DataError, match="no usable field"):
        read_yolo(tmp_path, progress=False)


def test_yolo_sources_csv_names_the_laboratory(tmp_path: Path) -> None:
    root = write_yolo(tmp_path / "set", bad=False)
    (root / "sources.csv").write_text("image,source\nimages/train/a.png,labX\n")
    (field,) = read_yolo(root, progress=False).fields
    assert field.source == "labX"


def test_coco_import(tmp_path: Path) -> None:
    image, lines = smear_objects()
    h, w = image.shape[:2]
    Image.fromarray(image).save(tmp_path / "a.png")
    annotations = []
    for k, (c, x, y, bw, bh) in enumerate(lines):
        box = [(x - bw / 2) * w, (y - bh / 2) * h, bw * w, bh * h]
        annotations.append({"id": k, "image_id": 1, "category_id": c + 10, "bbox": box})
    annotations += [
        {"id": 100, "image_id": 1, "category_id": 99, "bbox": [1, 1, 5, 5]},  # unknown class
        {"id": 101, "image_id": 1, "category_id": 11, "bbox": "nonsense"},
        {"id": 102, "image_id": 1, "category_id": 11, "bbox": [900, 900, 10, 10]},
        {"id": 103},
    ]
    data = {
        "images": [
            {"id": 1, "file_name": "a.png", "width": w, "height": h},
            {"id": 2, "file_name": "missing.png"},
            {"nonsense": True},
        ],
        "categories": [
            {"id": 10, "name": "WBC"},
            {"id": 11, "name": "red blood cell"},
            {"id": 12, "name": "Platelets"},
            {"id": 99, "name": "dust"},
        ],
        "annotations": annotations,
    }
    path = tmp_path / "lab.json"
    path.write_text(json.dumps(data))
    report = read_coco(path, progress=False)
    (field,) = report.fields
    assert field.source == "lab"
    assert [len(field.of_kind(k)) for k in ("red_cell", "white_cell", "platelet")] == [8, 1, 3]
    p = report.problems
    assert p["unknown class"] == 1 and p["malformed annotation"] == 2
    assert p["box outside the image"] == 1 and p["missing image"] == 1
    assert p["malformed image entry"] == 1
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(DataError, match="not a readable COCO"):
        read_coco(tmp_path / "bad.json", progress=False)


def test_chula_points_import(tmp_path: Path) -> None:
    root = make_chula_dir(tmp_path / "chula", n_images=3, cells_per_image=6)
    with (root / "Label" / "2.txt").open("a") as f:
        f.write("garbage line\n5 5 42\n9999 9999 0\n")
    report = read_chula_points(root, split_of={"1": "test"}, progress=False)
    assert len(report.fields) == 3
    assert report.problems["malformed line"] == 1
    assert report.problems["unknown class"] == 1
    assert report.problems["point outside the image"] == 1
    first = next(f for f in report.fields if f.image.stem == "1")
    assert first.split == "test" and all(o.box is None for o in first.objects)
    assert {o.label for o in first.objects} <= {"normal", "spherocyte", "target_cell"}


def test_derived_scale_from_red_cells() -> None:
    boxes = [FieldObject("red_cell", 50, 50, (40.0, 40.0, 60.0, 60.0)) for _ in range(3)]
    field = Field(Path("x.png"), "s", "train", 100, 100, boxes)
    assert derived_microns_per_pixel([field]) == pytest.approx(7.5 / 20)


def test_match_is_one_to_one_inside_boxes() -> None:
    labels = [
        FieldObject("red_cell", 10, 10, (0.0, 0.0, 20.0, 20.0)),
        FieldObject("red_cell", 30, 10, (20.0, 0.0, 40.0, 20.0)),
    ]
    found = [
        Found("red_cell", 11, 10, (0, 0, 1, 1), False),
        Found("red_cell", 12, 11, (0, 0, 1, 1), False),
    ]
    assert match(found, labels, point_radius_px=5) == [(0, 0)]  # both inside the first box only


def test_field_figures_count_white_cells_taken_for_red() -> None:
    white = FieldObject("white_cell", 50, 50, (40.0, 40.0, 60.0, 60.0))
    red = FieldObject("red_cell", 20, 20, (10.0, 10.0, 30.0, 30.0))
    field = Field(Path("x.png"), "s", "test", 100, 100, [white, red])
    found = [
        Found("red_cell", 20, 20, (10, 10, 30, 30), False),
        Found("red_cell", 50, 50, (40, 40, 60, 60), False),  # the white cell, called red
    ]
    figures = field_figures(field, found, microns_per_pixel=0.1)
    assert figures["red_recalled_interior"] == 1 and figures["red_counted"] == 2
    assert figures["red_counted_matched"] == 1 and figures["white_counted_as_red"] == 1
    assert figures["white_counted_as_red_within"] == 1
    assert figures["white_recalled"] == 0 and figures["white_missed_counted_as_red"] == 1
    assert figures["found_over_there"] == 2.0


def test_a_red_detection_beside_a_white_cell_found_as_white_is_not_that_white_cell_missed() -> None:
    # The white cell is found and set apart; the unlabelled red detection at its edge is charged
    # by the box and within figures (and by precision), but the white cell was not taken for red.
    white = FieldObject("white_cell", 50, 50, (30.0, 30.0, 70.0, 70.0))
    field = Field(Path("x.png"), "s", "test", 100, 100, [white])
    found = [
        Found("white_cell", 50, 50, (30, 30, 70, 70), False),
        Found("red_cell", 62, 50, (54, 42, 70, 58), False),
    ]
    figures = field_figures(field, found, microns_per_pixel=0.1)
    assert figures["white_counted_as_red"] == 1 and figures["white_counted_as_red_within"] == 1
    assert figures["white_recalled"] == 1 and figures["white_missed_counted_as_red"] == 0
    summary = summarise([figures])
    assert summary["white_recall"] == 1.0 and summary["white_missed_counted_as_red"] == 0.0


def test_a_red_cell_in_a_white_cells_box_corner_is_not_within_the_white_cell() -> None:
    # A round white cell leaves its box's corners to the red cells beside it; a red cell there
    # that the labels leave out counts against the box figure, not the within-the-cell one.
    white = FieldObject("white_cell", 50, 50, (30.0, 30.0, 70.0, 70.0))
    field = Field(Path("x.png"), "s", "test", 100, 100, [white])
    corner = [Found("red_cell", 33, 33, (25, 25, 41, 41), False)]
    figures = field_figures(field, corner, microns_per_pixel=0.1)
    assert figures["white_counted_as_red"] == 1 and figures["white_counted_as_red_within"] == 0
    off_centre = [Found("red_cell", 62, 50, (54, 42, 70, 58), False)]
    figures = field_figures(field, off_centre, microns_per_pixel=0.1)
    assert figures["white_counted_as_red"] == 1 and figures["white_counted_as_red_within"] == 1


def test_classical_detector_on_the_synthetic_smear(tmp_path: Path) -> None:
    root = write_yolo(tmp_path / "set", bad=False)
    report = read_yolo(root, progress=False)
    by_source, rows = evaluate_fields(
        report.fields, classical_detector, lambda f: 0.19, progress=False
    )
    figures = by_source["set"]
    assert figures["red_recall_interior"] == 1.0
    assert figures["red_precision_one_to_one"] == 1.0
    assert figures["white_counted_as_red"] == 0.0
    assert figures["white_counted_as_red_within"] == 0.0
    assert figures["white_missed_counted_as_red"] == 0.0
    assert figures["platelet_recall"] == 0.0  # the classical detector finds none
    assert len(rows) == 1
