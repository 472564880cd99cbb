"""How many reviewed cells does a laboratory need before `adapt` changes its classifier, and how
much of a stain's cost does it win back? A figure from bench/bench_adapt.py's results.

    .venv/bin/python research/review_curve.py \
        research/results/adapt/simulated-labs-250.json research/results/adapt/simulated-labs.json \
        research/results/adapt/simulated-labs-1000.json \
        research/results/adapt/simulated-labs-1400.json \
        --out research/results/adapt/review-curve.png

Each input is one run of `bench/bench_adapt.py --reviewed N` (the same seed, so the same
reviewed and measured smears, with more of the first half's cells reviewed); runs made with
`--order queue` or `--order confidence` are drawn dashed beside the random ones. Per source: the
share of the shift's cost regained on the measured half, against the cells reviewed; a hollow
marker where adapt kept the base layer (only the calibration is the laboratory's). A table of
the same figures is printed.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt


def review_order(command: str) -> str:
    """The order a bench_adapt run took its reviews in, from its recorded command line."""
    words = command.split()
    return words[words.index("--order") + 1] if "--order" in words[:-1] else "random"


def read_runs(paths: list[Path]) -> dict[str, list[dict[str, object]]]:
    """Each source's rows over the runs, by the number of cells reviewed. A source whose runs
    took their reviews in another order than at random is keyed "source (order)"."""
    by_source: dict[str, list[dict[str, object]]] = {}
    for path in paths:
        run = json.loads(path.read_text())
        order = review_order(str(run.get("command", "")))
        for row in run["rows"]:
            key = str(row["source"]) + ("" if order == "random" else f" ({order})")
            by_source.setdefault(key, []).append(row)
    for rows in by_source.values():
        rows.sort(key=lambda r: int(str(r["reviewed"])))
    return by_source


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", type=Path, nargs="+", help="bench_adapt.py --out files")
    parser.add_argument("--out", type=Path, required=True, help="the figure (PNG)")
    args = parser.parse_args(argv)
    by_source = read_runs(args.runs)
    print("source  reviewed  shifted  adapted  regained  chula_change  chosen")
    fig, ax = plt.subplots(figsize=(8, 4.2))
    colours: dict[str, Any] = {}
    for k, (source, rows) in enumerate(sorted(by_source.items())):
        n = [int(str(r["reviewed"])) for r in rows]
        regained = [100 * float(str(r["recovered"] or 0.0)) for r in rows]
        nudged = [x + 12 * (k - 1) for x in n]  # sources that coincide stay visible
        stain = source.split(" ")[0]
        style = "-" if source == stain else "--"  # another order than random: dashed
        (line,) = ax.plot(nudged, regained, style, label=source, color=colours.get(stain))
        colours.setdefault(stain, line.get_color())
        for x, nx, y, r in zip(n, nudged, regained, rows, strict=True):
            kept = r["chosen"] == "base"
            ax.plot(nx, y, "o", color=line.get_color(), markerfacecolor="white" if kept else None)
            print(
                f"{source:>6}  {x:>8}  {r['shifted']:.4f}  {r['adapted']:.4f}  {y:>7.0f}%  "
                f"{float(str(r['chula_change'])):+.4f}  {r['chosen']}"
            )
    ax.axhline(80, color="grey", linestyle=":", linewidth=1)
    ax.text(ax.get_xlim()[0], 81, " the issue's target with 500 reviews", color="grey", fontsize=8)
    ax.set_xlabel("reviewed cells (of half of Chula's test smears; dashed: not at random)")
    ax.set_ylabel("shift's cost regained on the other half (%)")
    ax.set_title("Simulated laboratories: adapt's gain against reviews\n(hollow: base layer kept)")
    ax.legend(title="stain of", fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    fig.tight_layout()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out, dpi=120)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
