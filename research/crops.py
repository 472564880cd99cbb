"""Crops the probes read (a shared helper, not a probe): Chula's imported crops by their
manifest path, another laboratory's fields (txl-pbc) by source and split, and its red cells cut
as the service cuts them."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pandas as pd
from PIL import Image


def load_crops(data: Path, paths: Iterable[str]) -> list[Image.Image]:
    """The RGB crops of an `import-chula` output `data`, by their manifest paths."""
    out = []
    for rel in paths:
        with Image.open(data / rel) as opened:
            out.append(opened.convert("RGB"))
    return out


def fields_of(txl: Path, source: str, split: str) -> list[str]:
    """The images (paths under `txl`) of a txl-pbc source's `split`, in order."""
    table = pd.read_csv(txl / "sources.csv", dtype=str)
    return sorted(table[(table.source == source) & (table.split == split)].image)


def txl_counted_crops(
    txl: Path, source: str, split: str, predictor: Any, detector: Any
) -> list[Image.Image]:
    """The counted red cells of a txl-pbc source's fields of `split`, as the classifier saw
    them through the service's own path (`analyze_smear`, the scale estimated)."""
    from core.smear.analysis import analyze_smear

    crops: list[Image.Image] = []
    for rel in fields_of(txl, source, split):
        with Image.open(txl / rel) as opened:
            field = opened.convert("RGB")
        analysed = analyze_smear(field, predictor, None, detector=detector, keep_crops=True)
        crops += [analysed.crops[c.id] for c in analysed.result.counted]
    return crops
