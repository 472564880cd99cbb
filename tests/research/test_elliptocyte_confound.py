"""research/elliptocyte_confound.py: the colour statistics it recolours crops with."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from bench.bench_shift import ColourStats, _to_lab, cell_mask, recolour
from research.elliptocyte_confound import crop_colour_stats, image_number
from tests.synthetic import one_cell_image

BLUISH = (215, 225, 245)  # a brighter, bluish background like images 707-738


def _crops(folder: Path, background: tuple[int, int, int], n: int = 6) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        rgb = one_cell_image((72, 72), (36, 36), 0.19, background=background, seed=i)
        paths.append(folder / f"{i}.png")
        Image.fromarray(rgb).save(paths[-1])
    return paths


def test_crop_colour_stats_and_the_recolouring_they_drive(tmp_path: Path) -> None:
    assert image_number("707.jpg") == 707
    ordinary = crop_colour_stats(_crops(tmp_path / "ordinary", (196, 212, 206)))
    bluish = crop_colour_stats(_crops(tmp_path / "bluish", BLUISH))
    assert ordinary["crops_used"] == 6
    # CIELAB b (yellow-blue): the bluish background is bluer; the cells are drawn alike.
    assert bluish["stats"]["background_mean"][2] < ordinary["stats"]["background_mean"][2] - 5
    assert abs(bluish["stats"]["cell_mean"][0] - ordinary["stats"]["cell_mean"][0]) < 1

    # An ordinary crop recoloured to the bluish statistics gets their background.
    crop = Image.open(_crops(tmp_path / "one", (196, 212, 206), n=1)[0]).convert("RGB")
    shifted = np.asarray(recolour(crop, ColourStats.from_dict(bluish["stats"])))
    background = ~cell_mask(shifted)
    lab = _to_lab(shifted)[background].mean(axis=0)
    assert np.allclose(lab, bluish["stats"]["background_mean"], atol=2)
