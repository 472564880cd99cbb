"""A laboratory's records for teaching the classifier: a small synthetic SQLite records database
of signed-off slides whose red cells are all reviewed with their true label (used by
tests/training/test_adapt.py, which runs `python -m training adapt` on it, and by the service's
teach jobs' tests, tests/app/test_teach.py).

Each slide has two synthetic fields at the training scale; every field has 35 red cells on a
grid, drawn as one of three kinds: a normal cell (pale centre), a spherocyte (smaller, dense) and
a sickle cell (a long thin ellipse: a class the shipped model lacks), plus three "echinocytes" on
the first field (too few for a class of their own).
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
from PIL import Image

from records.store import (
    CellInput,
    FieldInput,
    add_field,
    create_slide,
    create_user,
    get_slide,
    list_cells,
    open_store,
    review_cell,
    sign_off,
)
from tests.synthetic import SMEAR_BACKGROUND, SMEAR_CELL, SMEAR_PALLOR, disc

REPO = Path(__file__).resolve().parents[1]
BASE = REPO / "models" / "default"
SLIDES = 4
FIELDS_PER_SLIDE = 2
KINDS = ("normal", "spherocyte", "sickle_cell")
# What the reviewers may label: the shipped model's classes and the lab's own (the service's
# RBC_EXTRA_LABELS).
LABELS = [
    *json.loads((BASE / "model_card.json").read_text())["classes"],
    "sickle_cell",
    "echinocyte",
]
GRID = [(60 + 90 * i, 50 + 95 * j) for j in range(5) for i in range(7)]  # 35 cells a field


def draw_cell(canvas: np.ndarray, x: int, y: int, kind: str) -> None:
    if kind == "normal":
        disc(canvas, x, y, 20, SMEAR_CELL)
        disc(canvas, x, y, 8, SMEAR_PALLOR)
    elif kind == "spherocyte":
        disc(canvas, x, y, 15, (120, 60, 120))
    elif kind == "sickle_cell":
        yy, xx = np.ogrid[: canvas.shape[0], : canvas.shape[1]]
        inside = ((xx - x) / 26.0) ** 2 + ((yy - y) / 7.0) ** 2 <= 1.0
        canvas[inside] = (140, 80, 140)
    else:  # echinocyte: a disc with a spiky rim
        for angle in np.linspace(0, 2 * np.pi, 12, endpoint=False):
            disc(canvas, int(x + 18 * np.cos(angle)), int(y + 18 * np.sin(angle)), 4, SMEAR_CELL)
        disc(canvas, x, y, 17, SMEAR_CELL)


def lab_field(seed: int, extra: int) -> tuple[FieldInput, list[str]]:
    rng = np.random.default_rng(seed)
    canvas = np.empty((480, 700, 3), dtype=np.uint8)
    canvas[:] = SMEAR_BACKGROUND
    labels = []
    cells = []
    for k, (x, y) in enumerate(GRID):
        kind = "echinocyte" if k < extra else KINDS[int(rng.integers(0, len(KINDS)))]
        draw_cell(canvas, x, y, kind)
        labels.append(kind)
        cells.append(
            CellInput(
                kind="red_cell",
                x=float(x),
                y=float(y),
                box=(x - 27, y - 21, x + 27, y + 21),
                label="normal",
                confidence=0.5,
                probabilities={"normal": 0.5, "spherocyte": 0.5},
            )
        )
    noise = rng.integers(-4, 5, size=canvas.shape)
    pixels = np.clip(canvas.astype(np.int16) + noise, 0, 255).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    field = FieldInput(
        filename=f"field{seed}.png",
        image=buffer.getvalue(),
        media_type="image/png",
        width=700,
        height=480,
        classifier_name="default",
        classifier_sha256="ab" * 32,
        detector_name="classical",
        microns_per_pixel=0.19,
        cells=cells,
    )
    return field, labels


def lab_database(path: Path, slides: int, review_every: int = 1, sign: bool = True) -> str:
    url = f"sqlite:///{path}"
    with open_store(url) as store:
        store.upgrade()
        user = create_user(store, "rae", "reviewer")[0]
        for s in range(slides):
            slide = create_slide(store, user, f"LAB-{s}", microns_per_pixel=0.19)
            truth: list[str] = []
            for f in range(FIELDS_PER_SLIDE):
                field, labels = lab_field(seed=10 * s + f, extra=3 if (s, f) == (0, 0) else 0)
                add_field(store, user, slide.id, field)
                truth += labels
            cells = [c for c in list_cells(store, slide.id, limit=1000)[0] if c.kind == "red_cell"]
            cells.sort(key=lambda c: (c.field_id, c.id))
            for k, (cell, label) in enumerate(zip(cells, truth, strict=True)):
                if k % review_every == 0:
                    new = None if label == cell.label else label
                    review_cell(store, user, slide.id, cell.id, cell.version, new, LABELS)
            if sign:
                sign_off(store, user, slide.id, get_slide(store, slide.id).version)
    return url
