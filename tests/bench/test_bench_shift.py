"""The shift benchmark (bench/bench_shift.py, issue #12): each shift does what it says, on
synthetic crops; and the benchmark runs end to end on a tiny crop set with the shipped model."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from scipy import ndimage
from skimage.color import rgb2lab

from bench.bench_shift import (
    ColourStats,
    brightness,
    cell_mask,
    field_regions,
    gaussian_blur,
    jpeg_round_trip,
    main,
    recolour,
    rescale_round_trip,
    source_colour_stats,
    stratified_subset,
)

ROOT = Path(__file__).resolve().parents[2]
DEFAULT = ROOT / "models" / "default"
BACKGROUND = (200, 205, 195)  # a greyish Chula-like background
CELL = (170, 110, 125)  # a darker pink red cell
RADIUS = 18


def synthetic_crop(seed: int = 0, centre: tuple[int, int] = (36, 36)) -> Image.Image:
    """A 72x72 crop: one disc-shaped cell on a plain background, its edge as soft as a
    microscope's (Gaussian, sigma 1 px), a little noise."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:72, :72]
    disc = (xx - centre[0]) ** 2 + (yy - centre[1]) ** 2 <= RADIUS**2
    rgb = np.where(disc[..., None], np.array(CELL), np.array(BACKGROUND)).astype(np.float64)
    rgb = ndimage.gaussian_filter(rgb, (1.0, 1.0, 0), mode="nearest")
    rgb += rng.normal(0, 3, rgb.shape)
    return Image.fromarray(np.clip(rgb, 0, 255).astype(np.uint8))


def regions(shrink: int = 4) -> tuple[np.ndarray, np.ndarray]:
    """(inside, outside) of the synthetic disc, `shrink` px clear of its edge."""
    yy, xx = np.mgrid[:72, :72]
    d2 = (xx - 36) ** 2 + (yy - 36) ** 2
    return d2 <= (RADIUS - shrink) ** 2, d2 >= (RADIUS + shrink) ** 2


def lab(image: Image.Image) -> np.ndarray:
    return np.asarray(rgb2lab(np.asarray(image.convert("RGB")) / 255.0))


TARGET = ColourStats(
    cell_mean=(45.0, 20.0, -6.0),
    cell_std=(3.0, 3.0, 4.0),
    background_mean=(68.0, 9.0, 12.0),
    background_std=(2.0, 1.5, 2.0),
)


def test_cell_mask_finds_the_darker_disc() -> None:
    inside, outside = regions()
    mask = cell_mask(np.asarray(synthetic_crop()))
    assert mask[inside].mean() > 0.99
    assert not mask[outside].any()
    # A flat crop has no cell to split off.
    assert not cell_mask(np.full((72, 72, 3), 128, dtype=np.uint8)).any()


def test_recolour_moves_each_region_to_the_target() -> None:
    crop = synthetic_crop()
    out = recolour(crop, TARGET)
    assert out.size == crop.size and out.mode == "RGB"
    inside, outside = regions()
    before, after = lab(crop), lab(out)
    cell, background = after[inside].mean(axis=0), after[outside].mean(axis=0)
    # Each region's Lab mean is the target's (within 1.5 units per channel; sRGB rounding).
    np.testing.assert_allclose(cell, TARGET.cell_mean, atol=1.5)
    np.testing.assert_allclose(background, TARGET.background_mean, atol=1.5)
    # Far from the target before: the check above is not trivially true.
    assert abs(before[outside].mean(axis=0)[0] - TARGET.background_mean[0]) > 10
    # The cell stays darker than the background, as in the crop.
    assert before[inside, 0].mean() < before[outside, 0].mean()
    assert cell[0] < background[0]


def test_recolour_of_a_crop_without_a_cell_maps_it_whole_as_background() -> None:
    rng = np.random.default_rng(3)
    flat = np.clip(rng.normal(200, 0.4, (72, 72, 3)), 0, 255).astype(np.uint8)
    flat[..., 1] = 200  # the green channel is flat: no cell to split off
    out = lab(recolour(Image.fromarray(flat), TARGET))
    np.testing.assert_allclose(out.reshape(-1, 3).mean(axis=0), TARGET.background_mean, atol=1.5)


def test_recolour_blends_without_a_hard_edge() -> None:
    """Across the cell border the recoloured lightness goes from the background's to the
    cell's without a halo (no dip below the cell or rise above the background) and without a
    step sharper than the clean crop's."""
    crop = synthetic_crop(2)
    clean, out = lab(crop)[36, :, 0], lab(recolour(crop, TARGET))[36, :, 0]  # through the centre
    edge = slice(36 - RADIUS - 5, 36 - RADIUS + 5)
    low = TARGET.cell_mean[0] - 3 * TARGET.cell_std[0]
    high = TARGET.background_mean[0] + 3 * TARGET.background_std[0]
    assert low <= out[edge].min() and out[edge].max() <= high
    assert np.abs(np.diff(out[edge])).max() <= np.abs(np.diff(clean[edge])).max()


def checkerboard() -> Image.Image:
    yy, xx = np.mgrid[:72, :72]
    grey = np.where((xx // 2 + yy // 2) % 2 == 0, 60, 200).astype(np.uint8)
    return Image.fromarray(np.stack([grey] * 3, axis=-1))


def test_rescale_round_trip_keeps_size_and_loses_detail_only_when_shrunk() -> None:
    board = checkerboard()
    variance = np.asarray(board, dtype=np.float64).var()
    small = rescale_round_trip(board, 0.7)
    large = rescale_round_trip(board, 1.4)
    assert small.size == large.size == (72, 72)
    # 2 px squares are finer than 0.7x the pixels per micron can hold: most of it is gone.
    assert np.asarray(small, dtype=np.float64).var() < 0.5 * variance
    assert np.asarray(large, dtype=np.float64).var() > 0.8 * variance
    # A smooth crop goes through nearly unchanged either way.
    crop = synthetic_crop()
    for factor in (0.7, 1.4):
        diff = np.abs(
            np.asarray(rescale_round_trip(crop, factor), dtype=float)
            - np.asarray(crop, dtype=float)
        )
        assert np.median(diff) < 4


def test_blur_smooths() -> None:
    board = checkerboard()
    blurred = gaussian_blur(board, 1.0)
    assert blurred.size == board.size
    assert np.asarray(blurred, dtype=float).var() < 0.5 * np.asarray(board, dtype=float).var()


def test_jpeg_round_trip_is_a_quality_40_jpeg() -> None:
    crop = synthetic_crop()
    out = jpeg_round_trip(crop, 40)
    assert out.size == crop.size and out.mode == "RGB"
    # The same as saving at quality 40 and decoding, and not the crop itself.
    buffer = io.BytesIO()
    crop.save(buffer, format="JPEG", quality=40)
    expected = np.asarray(Image.open(io.BytesIO(buffer.getvalue())).convert("RGB"))
    np.testing.assert_array_equal(np.asarray(out), expected)
    assert not np.array_equal(np.asarray(out), np.asarray(crop))
    # A lower quality loses more.
    clean = np.asarray(crop, dtype=float)
    err = {q: np.abs(np.asarray(jpeg_round_trip(crop, q), float) - clean).mean() for q in (40, 95)}
    assert err[40] > err[95]


def test_brightness_scales_and_clips() -> None:
    rgb = np.array([[[100, 50, 250], [0, 10, 200]]], dtype=np.uint8)
    up = np.asarray(brightness(Image.fromarray(rgb), 1.2))
    down = np.asarray(brightness(Image.fromarray(rgb), 0.8))
    np.testing.assert_array_equal(up, [[[120, 60, 255], [0, 12, 240]]])
    np.testing.assert_array_equal(down, [[[80, 40, 200], [0, 8, 160]]])


def test_stratified_subset_keeps_every_class_and_repeats() -> None:
    labels = ["a"] * 90 + ["b"] * 9 + ["c"] * 1
    chosen = stratified_subset(labels, 20, seed=0)
    assert len(chosen) == 20 == len(set(chosen))
    picked = [labels[i] for i in chosen]
    assert picked.count("c") == 1 and picked.count("b") >= 1 and picked.count("a") >= 16
    assert chosen == stratified_subset(labels, 20, seed=0)
    assert stratified_subset(labels, 500, seed=0) == list(range(100))


# --- a tiny txl-pbc layout and a tiny crop set, for the source statistics and the end to end run


def make_txl(root: Path, sources: tuple[str, ...] = ("bccd", "bcd", "raabin")) -> Path:
    """Fields of each source: pale background, darker red cells (YOLO class 1) and one white
    cell (class 0), each source tinted differently."""
    rows = ["image,split,source,width,height"]
    tints = {"bccd": (0, 0, 0), "bcd": (-10, -5, 5), "raabin": (10, -10, -20)}
    for split in ("train", "val"):
        (root / "images" / split).mkdir(parents=True)
        (root / "labels" / split).mkdir(parents=True)
    rng = np.random.default_rng(0)
    for source in sources:
        for k in range(3):
            w, h = 160, 120
            rgb = np.empty((h, w, 3), dtype=np.float64)
            rgb[:] = np.array((225, 215, 205)) + tints[source]
            yy, xx = np.mgrid[:h, :w]
            lines = []
            for cx, cy in ((40, 40), (110, 40), (40, 90)):
                rgb[(xx - cx) ** 2 + (yy - cy) ** 2 <= 15**2] = (
                    np.array((190, 120, 140)) + tints[source]
                )
                lines.append(f"1 {cx / w} {cy / h} {32 / w} {32 / h}")
            rgb[(xx - 115) ** 2 + (yy - 90) ** 2 <= 16**2] = (120, 60, 160)
            lines.append(f"0 {115 / w} {90 / h} {34 / w} {34 / h}")
            rgb += rng.normal(0, 2, rgb.shape)
            name = f"{source}_{k}"
            Image.fromarray(np.clip(rgb, 0, 255).astype(np.uint8)).save(
                root / "images" / "train" / f"{name}.jpg", quality=95
            )
            (root / "labels" / "train" / f"{name}.txt").write_text("\n".join(lines) + "\n")
            rows.append(f"images/train/{name}.jpg,train,{source},{w},{h}")
    (root / "sources.csv").write_text("\n".join(rows) + "\n")
    (root / "data.yaml").write_text("nc: 3\nnames: ['WBC', 'RBC', 'Platelets']\n")
    return root


def test_source_statistics_separate_cells_from_background(tmp_path: Path) -> None:
    txl = make_txl(tmp_path / "txl")
    found = source_colour_stats(txl, "bccd", max_fields=2)
    assert found["fields_used"] == 2 and found["fields_in_split"] == 3
    stats = ColourStats.from_dict(found["stats"])
    expected_cell = rgb2lab(np.array([[[190, 120, 140]]]) / 255.0)[0, 0]
    expected_bg = rgb2lab(np.array([[[225, 215, 205]]]) / 255.0)[0, 0]
    # JPEG and noise aside, the drawn colours; the white cell is in neither region.
    np.testing.assert_allclose(stats.cell_mean, expected_cell, atol=2.5)
    np.testing.assert_allclose(stats.background_mean, expected_bg, atol=2.5)
    assert all(0 < s < 5 for s in stats.cell_std + stats.background_std)


def test_field_regions_leave_out_white_cells_and_box_margins() -> None:
    rgb = np.full((60, 60, 3), 220, dtype=np.uint8)
    rgb[10:30, 10:30] = (180, 100, 120)  # a red cell
    rgb[35:55, 35:55] = (100, 50, 150)  # a white cell
    boxes = [(1, 10.0, 10.0, 30.0, 30.0), (0, 35.0, 35.0, 55.0, 55.0)]
    cells, background = field_regions(rgb, boxes, red={1}, white={0})
    assert cells[20, 20] and not cells[45, 45] and not cells[11, 11]  # box corner: not core
    assert not background[45, 45] and not background[31, 20]  # grown box margin
    assert background[5, 50] and not (cells & background).any()


def make_crops(root: Path) -> Path:
    """The import-chula layout: class folders of 72x72 crops and a manifest with a split."""
    rows = ["path,label,split,source_image,x,y,border_fraction"]
    for k, label in enumerate(["normal", "spherocyte", "target_cell", "elliptocyte"] * 3):
        (root / label).mkdir(parents=True, exist_ok=True)
        rel = f"{label}/{k}.png"
        synthetic_crop(k, centre=(36 + k % 3, 36 - k % 2)).save(root / rel)
        split = "test" if k < 10 else "train"
        rows.append(f"{rel},{label},{split},{k}.jpg,36,36,0.0")
    (root / "manifest.csv").write_text("\n".join(rows) + "\n")
    return root


def test_main_end_to_end(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    crops = make_crops(tmp_path / "crops")
    txl = make_txl(tmp_path / "txl")
    out = tmp_path / "report" / "shift.json"
    code = main(
        [
            "--model", str(DEFAULT), "--data", str(crops), "--txl", str(txl),
            "--out", str(out), "--limit", "6", "--no-progress",
        ]
    )  # fmt: skip
    assert code == 0
    report = json.loads(out.read_text())
    conditions = [
        "clean", "recolour-bccd", "recolour-bcd", "recolour-raabin", "scale-0.7", "scale-1.4",
        "blur", "jpeg-40", "bright+20", "bright-20",
    ]  # fmt: skip
    figures = report["results"]["default"]
    assert list(figures) == conditions
    for condition in conditions:
        assert 0.0 <= figures[condition]["accuracy"] <= 1.0
        assert 0.0 <= figures[condition]["macro_f1"] <= 1.0
        assert figures[condition]["n"] == 6
    assert figures["clean"]["accuracy_drop"] == 0.0
    # 10 test crops, 2 of them elliptocytes (not a class of the model): 8 known, 6 taken.
    assert report["n"] == 6 and report["n_test_known_classes"] == 8
    assert report["skipped_labels"] == {"elliptocyte": 2}
    assert set(report["colour_statistics"]["sources"]) == {"bccd", "bcd", "raabin"}
    assert report["colour_statistics"]["from_cache"] is False
    assert "--limit 6" in report["command"]
    assert out.with_suffix(".md").read_text().count("| recolour-") == 3
    with Image.open(out.with_name("shift-examples.png")) as grid:
        assert grid.size[1] == 10 * 144
    assert "bright-20" in capsys.readouterr().out
    # A second run reuses the colour statistics.
    assert main(["--data", str(crops), "--txl", str(txl), "--out", str(out), "--limit", "2",
                 "--no-progress"]) == 0  # fmt: skip
    assert json.loads(out.read_text())["colour_statistics"]["from_cache"] is True


def test_one_map_for_a_laboratory_keeps_the_difference_between_cells() -> None:
    """Mapped crop by crop, a paler cell ends nearly as dark as any other (its own statistics
    are taken to the target's); with the laboratory's statistics (`own`) one map serves every
    crop, and the paler cell stays paler by about the same amount."""
    inside, _ = regions()
    dense = synthetic_crop(seed=1)
    pale_rgb = np.asarray(dense).astype(np.float64)
    pale_rgb[inside] += 25  # a paler cell, the same background
    pale = Image.fromarray(np.clip(pale_rgb, 0, 255).astype(np.uint8))
    gap_before = lab(pale)[inside, 0].mean() - lab(dense)[inside, 0].mean()
    assert gap_before > 5

    def cell_lightness(image: Image.Image, own: ColourStats | None) -> float:
        return float(lab(recolour(image, TARGET, own=own))[inside, 0].mean())

    per_crop = cell_lightness(pale, None) - cell_lightness(dense, None)
    assert abs(per_crop) < gap_before / 2  # 9.5 -> 3.0 here: most of it erased
    own = ColourStats(
        cell_mean=tuple(lab(dense)[inside].mean(axis=0)),
        cell_std=TARGET.cell_std,
        background_mean=tuple(lab(dense)[~inside].mean(axis=0)),
        background_std=TARGET.background_std,
    )
    lab_wide = cell_lightness(pale, own) - cell_lightness(dense, own)
    assert lab_wide == pytest.approx(gap_before, abs=2.0)
    # The laboratory's dense cell itself lands on the target's cell colour.
    assert cell_lightness(dense, own) == pytest.approx(TARGET.cell_mean[0], abs=1.5)
