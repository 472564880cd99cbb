"""Builders of tiny synthetic data sets for tests (helpers, not tests).

Images are drawn with numpy and saved with PIL; each builder takes well under a second.
"""

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

# Pinkish plasma background of a stained smear.
BACKGROUND = (236, 204, 210)
# Cell centres keep this distance from the border, so that crops of up to 2 * (MARGIN - JITTER)
# pixels lie inside the image; only the deliberate border cell is closer.
MARGIN = 14
JITTER = 2
SPACING = 22
BORDER_CELL_X = 3


def disc(canvas: np.ndarray, x: int, y: int, radius: float, colour: Sequence[int]) -> None:
    yy, xx = np.ogrid[: canvas.shape[0], : canvas.shape[1]]
    canvas[(xx - x) ** 2 + (yy - y) ** 2 <= radius**2] = colour


def _draw_cell(canvas: np.ndarray, x: int, y: int, class_id: int) -> None:
    """Draw one cell whose look depends on its class, so a tiny CNN can tell them apart."""
    if class_id == 0:  # normal: pale-red disc with a paler centre
        disc(canvas, x, y, 9, (205, 95, 105))
        disc(canvas, x, y, 4, (225, 150, 160))
    elif class_id == 3:  # spherocyte: smaller, darker, no pale centre
        disc(canvas, x, y, 7, (150, 40, 60))
    elif class_id == 4:  # target cell: disc, pale ring, dark central dot
        disc(canvas, x, y, 9, (205, 95, 105))
        disc(canvas, x, y, 6, (230, 170, 175))
        disc(canvas, x, y, 3, (150, 40, 60))
    else:  # other classes: size and colour vary with the id
        shade = 40 + 13 * (class_id % 8)
        disc(canvas, x, y, 5 + class_id % 6, (shade + 100, shade, 200 - shade))


def make_chula_dir(
    root: Path,
    n_images: int = 6,
    cells_per_image: int = 8,
    classes: Sequence[int] = (0, 3, 4),
    size: tuple[int, int] = (160, 120),
    seed: int = 0,
) -> Path:
    """Write a Chula RBC-12 layout: `root/Dataset/<n>.jpg` and `root/Label/<n>.txt`, n = 1.. .

    Cells sit on a jittered grid with centres at least 12 px from the border (so crops of up to
    24 px are interior), except in image 1 whose first cell is centred 3 px from the left edge.
    Classes cycle over `classes`, so with `cells_per_image >= len(classes)` every image has every
    class. Label points are the cell centres. Returns `root`.
    """
    width, height = size
    grid = [
        (gx, gy)
        for gy in range(MARGIN, height - MARGIN + 1, SPACING)
        for gx in range(MARGIN, width - MARGIN + 1, SPACING)
    ]
    # Image 1 leaves the left column free for the border cell.
    free = [p for p in grid if p[0] != MARGIN]
    if cells_per_image > len(free) + 1:
        raise ValueError(f"at most {len(free) + 1} cells fit in a {width}x{height} image")
    rng = np.random.default_rng(seed)
    (root / "Dataset").mkdir(parents=True, exist_ok=True)
    (root / "Label").mkdir(parents=True, exist_ok=True)
    for number in range(1, n_images + 1):
        canvas = np.empty((height, width, 3), dtype=np.uint8)
        canvas[:] = BACKGROUND
        if number == 1:
            picks = rng.choice(len(free), cells_per_image - 1, replace=False)
            points = [(BORDER_CELL_X, free[0][1])] + [free[i] for i in picks]
        else:
            picks = rng.choice(len(grid), cells_per_image, replace=False)
            points = [grid[i] for i in picks]
        lines = []
        for index, (gx, gy) in enumerate(points):
            jitter = rng.integers(-JITTER, JITTER + 1, size=2)
            x = gx if gx == BORDER_CELL_X else int(gx + jitter[0])
            y = int(gy + jitter[1])
            class_id = classes[(index + number) % len(classes)]
            _draw_cell(canvas, x, y, class_id)
            lines.append(f"{x} {y} {class_id}\n")
        noise = rng.integers(-6, 7, size=canvas.shape)
        noisy = np.clip(canvas.astype(np.int16) + noise, 0, 255).astype(np.uint8)
        Image.fromarray(noisy).save(root / "Dataset" / f"{number}.jpg", quality=95)
        (root / "Label" / f"{number}.txt").write_text("".join(lines))
    return root


def make_folder_dataset(
    root: Path,
    classes: Sequence[str] = ("a", "b"),
    n_per_class: int = 10,
    size: int = 32,
    seed: int = 0,
) -> Path:
    """Write `root/<class>/<i>.png`, `size` x `size` RGB, one visually distinct look per class:
    a disc whose colour and radius depend on the class index, on a noisy background."""
    rng = np.random.default_rng(seed)
    for index, name in enumerate(classes):
        folder = root / name
        folder.mkdir(parents=True, exist_ok=True)
        hue = np.array([(index * 97) % 256, (index * 53 + 80) % 256, (255 - index * 71) % 256])
        radius = size * (0.2 + 0.25 * (index % 2))
        for i in range(n_per_class):
            canvas = np.empty((size, size, 3), dtype=np.uint8)
            canvas[:] = BACKGROUND
            cx, cy = (size // 2 + rng.integers(-2, 3, size=2)).tolist()
            disc(canvas, cx, cy, radius, hue.tolist())
            noise = rng.integers(-10, 11, size=canvas.shape)
            noisy = np.clip(canvas.astype(np.int16) + noise, 0, 255).astype(np.uint8)
            Image.fromarray(noisy).save(folder / f"{i}.png")
    return root


# A smear field at the training scale (0.19 um per pixel): greenish-grey plasma, red cells
# ~39 px across with a paler centre, platelets, one dark white-cell-like blob.
SMEAR_BACKGROUND = (196, 212, 206)
SMEAR_CELL = (150, 105, 150)
SMEAR_PALLOR = (178, 150, 180)


def make_smear(
    size: tuple[int, int] = (320, 240), seed: int = 0
) -> tuple[np.ndarray, list[tuple[int, int]], list[tuple[int, int]]]:
    """(image, interior red-cell centres, border red-cell centres) of a synthetic smear: five
    separate cells, one touching pair, one cell cut by the left edge, three platelets and one
    dark white-cell-like blob (not red cells)."""
    width, height = size
    rng = np.random.default_rng(seed)
    canvas = np.empty((height, width, 3), dtype=np.uint8)
    canvas[:] = SMEAR_BACKGROUND
    interior = [(60, 60), (160, 50), (260, 70), (70, 170), (250, 180), (140, 150), (174, 150)]
    border = [(6, 115)]
    for x, y in interior + border:
        disc(canvas, x, y, 19, SMEAR_CELL)
    for x, y in interior + border:
        disc(canvas, x, y, 7, SMEAR_PALLOR)
    for x, y in [(110, 100), (205, 110), (300, 130)]:  # platelets
        disc(canvas, x, y, 3, (120, 70, 150))
    disc(canvas, 200, 215, 16, (40, 8, 90))  # white-cell nucleus
    noise = rng.integers(-4, 5, size=canvas.shape)
    image = np.clip(canvas.astype(np.int16) + noise, 0, 255).astype(np.uint8)
    return image, interior, border


def one_cell_image(
    size: tuple[int, int],
    centre: tuple[float, float],
    microns_per_pixel: float,
    diameter_um: float = 7.5,
    neighbours: Sequence[tuple[float, float]] = (),
    cell: Sequence[int] = SMEAR_CELL,
    background: Sequence[int] = SMEAR_BACKGROUND,
    seed: int = 0,
) -> np.ndarray:
    """An analyser-style image of one red cell (`diameter_um` across, a paler centre a third of
    it) at `centre`, drawn at `microns_per_pixel`, with whole or partial neighbours of the same
    size at `neighbours`, on plasma with a little noise."""
    width, height = size
    canvas = np.empty((height, width, 3), dtype=np.uint8)
    canvas[:] = background
    radius = diameter_um / 2 / microns_per_pixel
    pallor = [(c + b) // 2 for c, b in zip(cell, background, strict=True)]
    for x, y in [centre, *neighbours]:
        yy, xx = np.ogrid[:height, :width]
        distance = (xx - x) ** 2 + (yy - y) ** 2
        canvas[distance <= radius**2] = cell
        canvas[distance <= (radius / 3) ** 2] = pallor
    noise = np.random.default_rng(seed).integers(-3, 4, size=canvas.shape)
    return np.clip(canvas.astype(np.int16) + noise, 0, 255).astype(np.uint8)
