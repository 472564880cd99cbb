"""The learned cell detector's parts: network shapes, peak decoding, the hash-checked load, and
training end to end on a tiny synthetic set (random weights, a few steps: the mechanics, not the
accuracy; the shipped detector's figures come from `python -m training evaluate-detector`)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from core.detect.learned import (
    KINDS,
    STRIDE,
    CellDetector,
    DetectorCard,
    ScaleTry,
    decode,
    parse_small_red,
    start_scale,
    to_input,
    verified_detector_path,
)
from core.detect.network import CentreNet
from core.modelcard import ModelFileError
from tests.training.test_fields import write_yolo
from training.augment import stain_jitter
from training.detect.config import DetectorConfig, load_detector_config
from training.detect.data import load_samples, segmented_sizes
from training.detect.engine import train_detector
from training.detect.export import export_detector
from training.detect.transforms import targets


def test_network_predicts_at_a_quarter_of_the_input() -> None:
    net = CentreNet("efficientnet_lite0", width=16).eval()
    x, size = to_input(np.full((100, 130, 3), 200, dtype=np.uint8))
    assert x.shape == (1, 3, 128, 160) and size == (100, 130)  # padded to multiples of 32
    with torch.no_grad():
        heat, boxes = net(torch.from_numpy(x))
    assert heat.shape == (1, len(KINDS), 32, 40) and boxes.shape == (1, 2, 32, 40)


def test_two_touching_peaks_are_two_cells_and_thresholds_are_per_kind() -> None:
    heat = torch.full((3, 10, 10), -8.0)
    heat[0, 4, 4] = heat[0, 4, 6] = 3.0  # two red-cell peaks two cells apart
    heat[0, 4, 5] = 1.0  # the saddle between them: not a peak
    heat[1, 8, 8] = 0.0  # a white cell at probability 0.5
    heat[2, 1, 1] = -1.0  # a platelet at 0.27
    size = torch.zeros(2, 10, 10)
    size[:, 4, 4] = math.log(20 / STRIDE)
    found = decode(heat, size, {"red_cell": 0.5, "white_cell": 0.4, "platelet": 0.3})
    kinds = sorted(KINDS[k] for k, *_ in found)
    assert kinds == ["red_cell", "red_cell", "white_cell"]
    first = next(f for f in found if f[1] == (4 + 0.5) * STRIDE)
    assert first[3] == pytest.approx(20.0) and first[2] == (4 + 0.5) * STRIDE


def test_small_red_peaks_are_kept_from_a_lower_threshold() -> None:
    # Two red-cell peaks at probability 0.35, under the red threshold 0.5: a fragment (box 12 px)
    # and a whole-cell-sized one (box 24 px); a platelet peak at 0.6 sits where the large one is.
    heat = torch.full((3, 12, 12), -8.0)
    heat[0, 3, 3] = heat[0, 8, 8] = math.log(0.35 / 0.65)
    heat[2, 8, 8] = math.log(0.6 / 0.4)
    size = torch.zeros(2, 12, 12)
    size[:, 3, 3] = math.log(12 / STRIDE)
    size[:, 8, 8] = math.log(24 / STRIDE)
    thresholds = {"red_cell": 0.5, "white_cell": 0.5, "platelet": 0.5}
    plain = decode(heat, size, thresholds)
    assert [KINDS[k] for k, *_ in plain] == ["platelet"]
    # Under 16 px across, red peaks count from 0.3: the fragment is found, the large weak peak
    # is not (and is no red cell at the platelet's centre either).
    found = decode(heat, size, thresholds, small_red=(0.3, 16.0))
    kinds = sorted((KINDS[k], x) for k, x, *_ in found)
    assert kinds == [("platelet", (8 + 0.5) * STRIDE), ("red_cell", (3 + 0.5) * STRIDE)]
    # A red peak over the card's threshold is kept at any size.
    heat[0, 8, 8] = 3.0
    heat[2, 8, 8] = -8.0
    assert len(decode(heat, size, thresholds, small_red=(0.3, 16.0))) == 2


def test_targets_put_a_peak_and_a_size_at_each_centre() -> None:
    objects = np.array([[0, 40.0, 40.0, 20.0, 24.0], [2, 10.0, 50.0, 0.0, 0.0]], dtype=np.float32)
    heat, size, mask = targets(objects, side=64, point_side=20.0)
    assert heat.shape == (3, 16, 16) and heat[0].max() == 1.0 and heat[2].max() == 1.0
    iy, ix = np.unravel_index(int(heat[0].argmax()), heat[0].shape)
    assert mask[0, iy, ix] == 1.0
    assert np.exp(size[:, iy, ix]) * STRIDE == pytest.approx([20.0, 24.0], rel=1e-5)
    assert mask.sum() == 1.0  # a point (the platelet row here) has no size to learn


def test_stain_jitter_keeps_white_white_and_changes_stain() -> None:
    rng = np.random.default_rng(0)
    image = np.full((8, 8, 3), 255, dtype=np.uint8)
    image[:4] = (200, 90, 110)
    out = stain_jitter(image, rng)
    assert out.shape == image.shape and out.dtype == np.uint8
    assert (out[4:] >= 240).all()  # background with no stain stays (near) white
    assert not np.array_equal(out[:4], image[:4])


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("yolo")
    data = write_yolo(root / "set", bad=False)
    (data / "images" / "val").mkdir()
    (data / "labels" / "val").mkdir()
    for folder in ("images", "labels"):
        for item in (data / folder / "train").iterdir():
            (data / folder / "val" / item.name).write_bytes(item.read_bytes())
    config = root / "tiny.yaml"
    settings = {
        "yolo": [str(data)],
        "weights": "random",
        "width": 16,
        "crop": 64,
        "batch_size": 2,
        "epochs": 2,
        "microns_per_pixel": 0.38,
        "out_dir": str(root / "runs"),
        "name": "tiny",
        "chula_test_from": "none",
    }
    config.write_text(yaml.safe_dump(settings))
    # Two training fields make one batch of two per epoch.
    extra = data / "images" / "train" / "a.png"
    (data / "images" / "train" / "b.png").write_bytes(extra.read_bytes())
    (data / "labels" / "train" / "b.txt").write_text(
        (data / "labels" / "train" / "a.txt").read_text()
    )
    # The synthetic smear's scale is known: cells 38 px across, as at 0.19 um per pixel.
    cfg = load_detector_config(config, {})
    return train_detector(cfg, progress=False)


def test_point_labels_get_the_size_of_the_cell_segmented_around_them() -> None:
    from tests.synthetic import make_smear

    image, interior, border = make_smear()
    separate = interior[:5]
    rows = [(0, x, y, 0.0, 0.0) for x, y in [*separate, *border]]
    rows.append((0, 262.0, 72.0, 0.0, 0.0))  # a second point on the third cell
    sized = segmented_sizes(image, np.asarray(rows, dtype=np.float32))
    for row in sized[[0, 1, 3, 4]]:  # alone in their cell: the disc's 39 px
        assert 36 <= row[3] <= 42 and 36 <= row[4] <= 42
    assert sized[2, 3] == 0 and sized[-1, 3] == 0  # two points in one region: no size
    assert sized[5, 3] == 0  # the cell cut by the edge: no size
    assert np.array_equal(sized[:, :3], np.asarray(rows, dtype=np.float32)[:, :3])


def test_an_unknown_way_of_sizing_chula_points_is_refused() -> None:
    from training.errors import ConfigError

    with pytest.raises(ConfigError, match="chula_sizes"):
        load_detector_config(None, {"yolo": ["x"], "chula_sizes": "boxes"})


def test_a_left_out_source_is_in_neither_training_nor_validation(tmp_path: Path) -> None:
    # Thresholds and the size calibration are chosen on validation: a left-out source there
    # would flatter its own test figures.
    data = write_yolo(tmp_path / "set", bad=False)
    for split in ("val", "test"):
        for folder in ("images", "labels"):
            (data / folder / split).mkdir()
    names = []
    for split in ("train", "val", "test"):
        for lab in ("near", "far"):
            name = f"{lab}-{split}"
            (data / "images" / split / f"{name}.png").write_bytes(
                (data / "images" / "train" / "a.png").read_bytes()
            )
            (data / "labels" / split / f"{name}.txt").write_text(
                (data / "labels" / "train" / "a.txt").read_text()
            )
            names.append((f"images/{split}/{name}.png", lab))
    (data / "images" / "train" / "a.png").unlink()
    (data / "labels" / "train" / "a.txt").unlink()
    (data / "sources.csv").write_text(
        "image,source\n" + "".join(f"{n},{lab}\n" for n, lab in names)
    )
    cfg = DetectorConfig(yolo=[str(data)], chula_test_from="none", leave_out=["far"])
    train, valid, test, _ = load_samples(cfg, progress=False)
    assert {s.source for s in train} == {"near"}
    assert {s.source for s in valid} == {"near"}
    assert {s.source for s in test} == {"near", "far"}


def test_training_writes_a_verified_detector_with_its_figures(tiny_run: Path) -> None:
    path, card = verified_detector_path(tiny_run / "detector")
    assert path.name == "detector_state.pt"
    assert set(card.thresholds) == set(KINDS)
    assert "valid" in card.metrics and "test_with_scale" in card.metrics
    assert card.dataset["sources"] == ["set"]
    history = json.loads((tiny_run / "history.json").read_text())
    assert [row["epoch"] for row in history] == [1, 2]
    detector = CellDetector.load(tiny_run / "detector")
    result = detector.detect(np.full((120, 160, 3), 230, dtype=np.uint8), 0.19)
    assert result.microns_per_pixel == 0.19 and not result.scale_estimated


def test_export_and_tampering(tiny_run: Path, tmp_path: Path) -> None:
    dest = export_detector(tiny_run, tmp_path, "det", ["a note"])
    card = DetectorCard.load(dest)
    assert card.name == "det" and card.notes == ["a note"]
    assert card.onnx_file == "detector.onnx" and card.onnx_sha256  # checked against torch
    assert CellDetector.load(dest).engine_name.startswith("onnxruntime ")
    assert CellDetector.load(dest, engine="torch").engine_name.startswith("torch ")
    graph = dest / "detector.onnx"
    graph.write_bytes(graph.read_bytes() + b"\0")
    with pytest.raises(ModelFileError, match="sha256"):
        CellDetector.load(dest)
    CellDetector.load(dest, engine="torch")  # torch reads no graph
    state = dest / "detector_state.pt"
    state.write_bytes(state.read_bytes()[:-10] + b"0123456789")
    with pytest.raises(ModelFileError, match="sha256"):
        CellDetector.load(dest)
    with pytest.raises(ModelFileError, match="does not exist"):
        CellDetector.load(tmp_path / "absent")


# --- the shipped detector (models/detector) ------------------------------------------------------

SHIPPED = Path(__file__).resolve().parents[2] / "models" / "detector"
TXL = Path(__file__).resolve().parents[3] / "shared" / "datasets" / "txl-pbc"


@pytest.fixture(scope="module")
def shipped() -> CellDetector:
    if not (SHIPPED / "detector_card.json").is_file():
        pytest.skip("no detector shipped in models/")
    return CellDetector.load(SHIPPED)


def test_shipped_detector_is_small_and_says_what_it_learnt_from(shipped: CellDetector) -> None:
    _, card = verified_detector_path(SHIPPED)
    total = sum(p.stat().st_size for p in SHIPPED.iterdir() if p.is_file())
    assert total < 30e6, f"models/detector is {total / 1e6:.1f} MB"
    assert card.kinds == list(KINDS) and card.microns_per_pixel > 0
    assert {"bccd", "bcd", "raabin", "chula"} <= set(card.dataset["sources"])
    assert set(card.metrics["test_with_scale"]) >= {"bccd", "bcd", "raabin", "chula"}


def test_both_engines_find_the_same_objects(shipped: CellDetector) -> None:
    from tests.synthetic import make_smear

    image, _, _ = make_smear()
    torch_run = CellDetector.load(SHIPPED, engine="torch")
    assert shipped.engine_name.startswith("onnxruntime ")  # the service's default on a CPU
    for scale in (0.19, None):
        a, b = shipped.detect(image, scale), torch_run.detect(image, scale)
        assert [o.kind for o in a.objects] == [o.kind for o in b.objects]
        assert a.microns_per_pixel == pytest.approx(b.microns_per_pixel, rel=1e-4)
        for o, q in zip(a.objects, b.objects, strict=True):
            assert o.box == pytest.approx(q.box, abs=0.05)


def test_synthetic_field_touching_cells_white_cell_and_platelets(shipped: CellDetector) -> None:
    from tests.synthetic import make_smear

    image, interior, _ = make_smear()
    result = shipped.detect(image, 0.19)
    red = result.of_kind("red_cell")
    # Every red cell, the touching pair (140, 150) and (174, 150) as two, the cut one at the edge.
    for x, y in interior:
        assert any(abs(d.x - x) < 12 and abs(d.y - y) < 12 and not d.at_border for d in red), (x, y)
    assert len([d for d in red if not d.at_border]) == len(interior)
    assert [d for d in red if d.at_border] and all(d.x < 30 for d in red if d.at_border)
    # The dark white-cell nucleus at (200, 215) is a white cell, never a red one.
    (white,) = result.of_kind("white_cell")
    assert abs(white.x - 200) < 12 and abs(white.y - 215) < 12
    assert not any(abs(d.x - 200) < 15 and abs(d.y - 215) < 15 for d in red)
    # The three platelets (radius 3) are never red cells (whether these drawn ones pass the
    # platelet threshold is another matter: real platelets are tested below).
    for x, y in [(110, 100), (205, 110), (300, 130)]:
        assert not any(abs(d.x - x) < 10 and abs(d.y - y) < 10 for d in red), (x, y)


def test_scale_search_starts_where_most_candidates_point_not_at_a_lone_self_agreeing_one() -> None:
    # A raabin field (true 0.055 um/px) as a detector trained on blurred cells saw it: at 0.45
    # the sharp field, enlarged, is full of "cells" of the expected size, the highest sum of
    # scores of any candidate; but every other candidate's cells point towards 0.06.
    runs = [(0.04, 0.065, 10.4), (0.06, 0.065, 11.3), (0.09, 0.068, 11.7), (0.135, 0.079, 9.1)]
    runs += [(0.2, 0.126, 3.5), (0.3, 0.202, 4.0), (0.45, 0.453, 13.7)]
    tries = [ScaleTry(c, implied, 10, total) for c, implied, total in runs]
    assert max(tries, key=lambda t: t.total).candidate == 0.45
    assert start_scale(tries) == 0.06
    # Candidates with under three red cells point nowhere; with none left there is no start.
    assert start_scale([ScaleTry(c, None, 2, 1.5) for c in (0.04, 0.2)]) is None
    # Two candidates pointing at each other: the better of the two.
    pair = [ScaleTry(0.135, 0.2, 9, 5.0), ScaleTry(0.2, 0.135, 9, 6.0)]
    assert start_scale([*pair, ScaleTry(0.45, None, 1, 0.4)]) == 0.2


def test_scale_estimate_follows_a_known_rescaling(shipped: CellDetector) -> None:
    from tests.synthetic import make_smear

    image, _, _ = make_smear()
    base = shipped.detect(image).microns_per_pixel  # drawn at 0.19 um per pixel
    assert base == pytest.approx(0.19, rel=0.15)
    from PIL import Image

    for factor in (0.6, 1.5):
        size = (round(image.shape[1] * factor), round(image.shape[0] * factor))
        scaled = np.asarray(Image.fromarray(image).resize(size, Image.Resampling.BILINEAR))
        estimate = shipped.detect(scaled).microns_per_pixel
        assert estimate == pytest.approx(base / factor, rel=0.15), factor


@pytest.mark.skipif(not TXL.is_dir(), reason="needs ../shared/datasets/txl-pbc")
def test_scale_estimate_on_another_laboratorys_field(shipped: CellDetector) -> None:
    from PIL import Image

    from training.datasets.fields import derived_microns_per_pixel, read_yolo

    report = read_yolo(TXL, splits=("test",), progress=False)
    bccd = [f for f in report.fields if f.source == "bccd"][:3]
    true = derived_microns_per_pixel(bccd)
    assert true is not None
    for item in bccd:
        with Image.open(item.image) as opened:
            rgb = np.asarray(opened.convert("RGB"))
        estimate = shipped.detect(rgb).microns_per_pixel
        assert estimate == pytest.approx(true, rel=0.25), item.image.name


@pytest.mark.skipif(not TXL.is_dir(), reason="needs ../shared/datasets/txl-pbc")
def test_platelets_of_another_laboratory_are_found(shipped: CellDetector) -> None:
    from PIL import Image

    from training.datasets.fields import derived_microns_per_pixel, read_yolo
    from training.detect.evaluate import Found, match

    report = read_yolo(TXL, splits=("test",), progress=False)
    bccd = [f for f in report.fields if f.source == "bccd"]
    scale = derived_microns_per_pixel(bccd)
    assert scale is not None
    labelled = found = 0
    for item in bccd:
        with Image.open(item.image) as opened:
            result = shipped.detect(np.asarray(opened.convert("RGB")), scale)
        platelets = [
            Found(d.kind, d.x, d.y, d.box, d.at_border) for d in result.of_kind("platelet")
        ]
        labels = item.of_kind("platelet")
        labelled += len(labels)
        found += len(match(platelets, labels, point_radius_px=0.0))
    assert labelled >= 20 and found / labelled >= 0.7, (found, labelled)


def test_the_small_red_rule_is_off_unless_asked_and_its_option_is_checked() -> None:
    if not (SHIPPED / "detector_card.json").is_file():
        pytest.skip("no detector shipped in models/")
    from training.commands.shared import load_detector
    from training.errors import DataError

    assert load_detector(str(SHIPPED)).small_red is None  # the measured candidate, not shipped
    assert load_detector(str(SHIPPED), "0.3,6.5").small_red == (0.3, 6.5)
    with pytest.raises(DataError, match="THRESHOLD,UM"):
        load_detector(str(SHIPPED), "0.3")


def test_the_small_red_option_is_parsed_or_refused() -> None:
    assert parse_small_red("0.3,6.5") == (0.3, 6.5)
    for bad in ("0.3", "0.3,6.5,7", "a,b", ""):
        with pytest.raises(ValueError, match="THRESHOLD,UM"):
            parse_small_red(bad)
