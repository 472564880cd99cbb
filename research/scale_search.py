"""Where does a detector's scale search start, and how wrong does it end? (issue #11)

    .venv/bin/python research/scale_search.py --detector models/detector \
        [--compare runs/detector-blur/detector] [--sources raabin] [--show-wrong] \
        [--out research/results/detection/scale-search.json]

Without a scale, `CellDetector.estimate_scale` runs the network at each candidate scale
(`scale_tries`), picks a start (`core.detect.learned.start_scale`) and refines it from the red
cells' sizes. This runs the candidates once per field, then each start rule below, and reports
the estimate's error against each source's scale (derived for txl-pbc, known for Chula) on the
probes' fields (research/probe_fields.py: txl-pbc's val and test splits, a seeded sample of
Chula's):
median and 90th percentile of |estimated / true - 1|, and the fields more than 50 % off.
Rules are chosen on "val"; "test" checks them.

Rules:
  highest the candidate with the highest sum of red-cell scores (the rule until stop 21)
  agree   the same sum, weighted by how well the candidate's implied scale agrees with the
          candidate itself: exp(-(ln(implied / candidate) / ln 1.5)^2); a run that finds
          many "cells" of a size that says the field is at another scale is a run at the
          wrong scale
  within  of the candidates whose implied scale is within 1.5x of themselves, the highest
          sum; "highest" where none is
  sharp   the highest sum among the candidates whose input is at least a third as sharp
          (core/detect/focus.py) as the sharpest candidate's: a field enlarged far beyond the
          working scale is smooth, and a network trained on blurred cells may find "cells" in
          it; "highest" where none is
  basin   each candidate points to the candidate nearest the scale it implies; following
          the pointers, every candidate ends at an attractor (a candidate pointing to itself,
          or the best of a cycle). The attractor whose basin holds the highest sum of scores
          wins: the true scale draws the runs from many candidates, a wrong one that agrees
          with itself (a sharp field enlarged, where a network trained on blurred cells finds
          "cells" of the size it expects) draws only its own (`start_scale`, shipped since stop 21)
"""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from core.detect.focus import sharpness  # noqa: E402
from core.detect.learned import CellDetector, ScaleTry, start_scale  # noqa: E402
from research.probe_fields import (  # noqa: E402
    add_field_arguments,
    command_line,
    probe_fields,
    write_result,
)

STEP = math.log(1.5)  # the candidates' spacing


@dataclass(frozen=True)
class SharpTry(ScaleTry):
    """A run of the scale search and the sharpness (core/detect/focus.py) of its input."""

    sharpness: float = 0.0


def _highest(tries: Sequence[ScaleTry]) -> float | None:
    usable = [t for t in tries if t.implied is not None]
    if not usable:
        return None
    return max(usable, key=lambda t: t.total).candidate


def _agreement(t: ScaleTry) -> float:
    assert t.implied is not None
    return math.exp(-((math.log(t.implied / t.candidate) / STEP) ** 2))


def _agree(tries: Sequence[ScaleTry]) -> float | None:
    usable = [t for t in tries if t.implied is not None]
    if not usable:
        return None
    return max(usable, key=lambda t: t.total * _agreement(t)).candidate


def _within(tries: Sequence[ScaleTry]) -> float | None:
    usable = [
        t for t in tries if t.implied is not None and abs(math.log(t.implied / t.candidate)) <= STEP
    ]
    if not usable:
        return _highest(tries)
    return max(usable, key=lambda t: t.total).candidate


def _sharp(tries: Sequence[SharpTry]) -> float | None:
    sharpest = max(t.sharpness for t in tries)
    usable = [t for t in tries if t.implied is not None and t.sharpness >= sharpest / 3]
    if not usable:
        return _highest(tries)
    return max(usable, key=lambda t: t.total).candidate


RULES: dict[str, Callable[[Sequence[SharpTry]], float | None]] = {
    "highest": _highest,
    "agree": _agree,
    "within": _within,
    "sharp": _sharp,
    "basin": start_scale,
}


def _summary(errors: list[float]) -> dict[str, Any]:
    e = np.asarray(errors)
    return {
        "fields": len(errors),
        "median_error": round(float(np.median(e)), 3),
        "p90_error": round(float(np.quantile(e, 0.9)), 3),
        "over_50pct": int((e > 0.5).sum()),
        "over_20pct": int((e > 0.2).sum()),
    }


def search(
    detector: CellDetector,
    chosen: list[tuple[Any, str]],
    scales: dict[str, float],
    show_wrong: bool,
) -> dict[str, Any]:
    """Each rule's errors per source and split, and the sharpness margin "sharp" rests on."""
    errors: dict[str, dict[str, list[float]]] = {rule: {} for rule in RULES}
    # What "sharp" rests on: the sharpness of the candidate nearest the true scale over the
    # sharpest candidate's (the finest: a field shrunk is sharper)
    sharp_ratio: dict[str, list[float]] = {}
    for n, (item, split) in enumerate(chosen, 1):
        with Image.open(item.image) as image:
            rgb = np.asarray(image.convert("RGB"))
        true = scales[item.source]
        tries = [
            SharpTry(**vars(t), sharpness=sharpness(detector.search_window(rgb, t.candidate)))
            for t in detector.scale_tries(rgb)
        ]
        nearest = min(tries, key=lambda t: abs(math.log(t.candidate / true)))
        sharpest = max(t.sharpness for t in tries)
        sharp_ratio.setdefault(item.source, []).append(nearest.sharpness / max(sharpest, 1e-9))
        refined: dict[float | None, float] = {}
        for rule, pick in RULES.items():
            start = pick(tries)
            if start not in refined:
                refined[start] = (
                    detector.card.microns_per_pixel / 2
                    if start is None
                    else detector.refine_scale(rgb, start)
                )
            error = abs(refined[start] / true - 1)
            errors[rule].setdefault(f"{item.source} {split}", []).append(error)
            if show_wrong and error > 0.5:
                found = ", ".join(
                    f"{t.candidate}: {t.count} cells, sum {t.total:.1f}, "
                    f"sharp {t.sharpness:.3f}, implies "
                    + (f"{t.implied:.3f}" if t.implied else "-")
                    for t in tries
                )
                print(
                    f"  [{rule}] {item.image.name} ({item.source}, true {true:.4f}): "
                    f"{refined[start]:.3f}; {found}"
                )
        if n % 50 == 0:
            print(f"  {n}/{len(chosen)} fields", flush=True)
    out: dict[str, Any] = {
        rule: {key: _summary(v) for key, v in sorted(by.items())} for rule, by in errors.items()
    }
    out["sharpness_nearest_over_sharpest"] = {
        source: {"min": round(min(v), 3), "median": round(float(np.median(v)), 3)}
        for source, v in sorted(sharp_ratio.items())
    }
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_field_arguments(ap, chula_per_split=40)
    ap.add_argument("--compare", type=Path, action="append", default=[], help="more detectors")
    ap.add_argument("--show-wrong", action="store_true", help="print each field > 50 %% off")
    ap.add_argument("--sources", help="only these sources, comma-separated (default: all)")
    ap.add_argument("--out", type=Path)
    args = ap.parse_args(argv)
    chosen, scales = probe_fields(args.yolo, args.chula, args.chula_fields)
    if args.sources:
        chosen = [(f, split) for f, split in chosen if f.source in args.sources.split(",")]
    results: dict[str, Any] = {}
    for path in [args.detector, *args.compare]:
        print(f"{path}:", flush=True)
        results[str(path)] = search(CellDetector.load(path), chosen, scales, args.show_wrong)
        for rule, by in results[str(path)].items():
            if rule not in RULES:
                print(f"  {rule}: {by}")
                continue
            for key, s in by.items():
                print(
                    f"  {rule:8s} {key:14s} n={s['fields']:3d} median {s['median_error']:.3f} "
                    f"p90 {s['p90_error']:.3f} >50% {s['over_50pct']} >20% {s['over_20pct']}"
                )
    if args.out:
        measured_by = command_line("research/scale_search.py", argv)
        write_result(args.out, {"measured_by": measured_by, "results": results})
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
