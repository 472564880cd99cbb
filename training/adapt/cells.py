"""A laboratory's reviewed cells, read from an `import-slides` output, checked and split.

Whole slides go to one part (whole fields when there are fewer than three slides). Parts: `fit`
and `calibrate`, which the last layer, the familiarity statistics and the field colours learn
from together and are judged on cross-fitted, slide by slide (training/adapt/pipeline.py); `test`
(the before / after figures, nothing chosen or fitted on it).

The split is by cell count, not stratified by class (`split_groups`): a laboratory has a few
slides of very different sizes, and the class-stratified split the training sets use
(training.datasets.split.grouped_split) left the fit part 16-35 % of the cells on eight simulated
slides (bench/bench_lab_loop.py).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from training.adapt.judging import read_population
from training.datasets.slides import POPULATION_FILE
from training.errors import DataError

MIN_CELLS = 200  # usable reviewed red cells, all classes together
MIN_GROUPS = 3  # fields at least (slides when there are three): some must be held out
MIN_NEW_CLASS_CELLS = 30  # a reviewed class the base lacks becomes a class of its own from here
PARTS = ("fit", "calibrate", "test")
LEARN_PARTS = ("fit", "calibrate")  # what the fits learn from and are judged on, in this order
FRACTIONS = (0.6, 0.2, 0.2)
COLOUR_COLUMNS = [f"c{i}" for i in range(13)]


@dataclass
class LabCells:
    """The usable reviewed cells (`rows`: path, label, target, part, slide_id, field_id) and
    fields (`fields`: field_id, part, colour descriptor), the classes of the adapted model, and
    what was left out and why."""

    root: Path
    rows: pd.DataFrame
    fields: pd.DataFrame
    classes: list[str]
    new_classes: list[str]
    group_by: str  # "slide" or "field"
    too_few: dict[str, int] = field(default_factory=dict)  # label -> reviewed cells it has
    not_learnt: list[str] = field(default_factory=list)  # new classes no fit learnt

    population: pd.DataFrame | None = None  # every red cell of the slides (judging.py)

    def part(self, name: str) -> pd.DataFrame:
        return self.rows[self.rows["part"] == name]

    def learn_rows(self) -> pd.DataFrame:
        """The fit and calibrate cells, in the order adapt learns from and judges them."""
        return pd.concat([self.part(name) for name in LEARN_PARTS])

    def counts(self) -> dict[str, dict[str, int]]:
        """Cells per part and class."""
        return {
            part: {str(k): int(v) for k, v in self.part(part)["label"].value_counts().items()}
            for part in PARTS
        }


def _describe(counts: pd.Series) -> str:
    return ", ".join(f"{label} {n}" for label, n in counts.sort_values(ascending=False).items())


def read_lab_cells(root: Path, base_classes: list[str], seed: int = 0) -> LabCells:
    """The cells of the crop set `root` (manifest.csv, fields.csv), split into PARTS. DataError,
    naming what is missing, when there are too few cells or fields to adapt and measure."""
    manifest = Path(root) / "manifest.csv"
    if not manifest.is_file():
        raise DataError(
            f"{root} has no manifest.csv: make it with `python -m training import-slides`"
        )
    rows = pd.read_csv(manifest)
    missing = {"path", "label", "slide_id", "field_id"} - set(rows.columns)
    if missing:
        raise DataError(
            f"{manifest} lacks the columns {sorted(missing)}: not an import-slides output"
        )
    per_label = rows["label"].value_counts()
    new = sorted(
        str(label)
        for label, n in per_label.items()
        if label not in base_classes and n >= MIN_NEW_CLASS_CELLS
    )
    too_few = {
        str(label): int(n)
        for label, n in per_label.items()
        if label not in base_classes and n < MIN_NEW_CLASS_CELLS
    }
    classes = list(base_classes) + new
    rows = rows[rows["label"].isin(classes)].reset_index(drop=True)
    _check_enough(rows, per_label, root)
    group_by = "slide" if rows["slide_id"].nunique() >= MIN_GROUPS else "field"
    groups = rows[f"{group_by}_id"].astype(str)
    sizes = {str(g): int(n) for g, n in groups.value_counts().items()}
    split = split_groups(sizes, FRACTIONS, seed)
    rows["part"] = groups.map(split)
    rows["target"] = rows["label"].map({c: i for i, c in enumerate(classes)})
    for part in PARTS:
        if not (rows["part"] == part).any():
            raise DataError(
                f"no {group_by} was left for the {part} part of {len(sizes)} {group_by}s: "
                "review cells on more slides"
            )
    return LabCells(
        root=Path(root),
        rows=rows,
        fields=_fields(Path(root), rows),
        classes=classes,
        new_classes=new,
        group_by=group_by,
        too_few=too_few,
        population=(
            read_population(Path(root) / POPULATION_FILE, set(rows["slide_id"]))
            if "cell_id" in rows
            else None
        ),
    )


def split_groups(
    sizes: dict[str, int], fractions: tuple[float, ...] = FRACTIONS, seed: int = 0
) -> dict[str, str]:
    """Each group (its cell count in `sizes`) to one of PARTS, in a seeded order: the first three
    groups one to each part, then each group to the part furthest below its share of the cells.
    Depends only on the content of `sizes` and `seed`."""
    order = sorted(sizes)
    np.random.default_rng(seed).shuffle(order)
    total = sum(sizes.values())
    have = dict.fromkeys(PARTS, 0)
    split: dict[str, str] = {}
    for k, group in enumerate(order):
        if k < len(PARTS):
            part = PARTS[k]
        else:
            part = max(PARTS, key=lambda p: fractions[PARTS.index(p)] * total - have[p])
        split[group] = part
        have[part] += sizes[group]
    return split


def _check_enough(rows: pd.DataFrame, per_label: pd.Series, root: Path) -> None:
    n_fields = rows["field_id"].nunique()
    if len(rows) < MIN_CELLS:
        raise DataError(
            f"adapting needs at least {MIN_CELLS} reviewed red cells of the model's classes (or "
            f"of a new class with {MIN_NEW_CLASS_CELLS}+ cells); {root} has {len(rows)} on "
            f"{rows['slide_id'].nunique()} slides ({_describe(per_label) or 'none'}): review "
            f"and sign off {MIN_CELLS - len(rows)} more"
        )
    if n_fields < MIN_GROUPS:
        raise DataError(
            f"adapting needs reviewed cells on at least {MIN_GROUPS} fields, so that some are "
            f"held out to measure the result; found {n_fields}"
        )


def _fields(root: Path, rows: pd.DataFrame) -> pd.DataFrame:
    """Each field's colour descriptor (fields.csv) with the part of its cells."""
    path = root / "fields.csv"
    if not path.is_file():
        raise DataError(f"{root} has no fields.csv: import it again with this version")
    fields = pd.read_csv(path)
    missing = {"field_id", *COLOUR_COLUMNS} - set(fields.columns)
    if missing:
        raise DataError(f"{path} lacks the columns {sorted(missing)}")
    part = rows.drop_duplicates("field_id").set_index("field_id")["part"]
    fields = fields[fields["field_id"].isin(part.index)].copy()
    fields["part"] = fields["field_id"].map(part)
    return fields.reset_index(drop=True)
