"""Does adapt's gate keep fits that would have helped, or refuse the ones that would have hurt?

    .venv/bin/python research/adapt_gate_probe.py --data /tmp/chula-crops --order queue \
        --seeds 0,1,2 --out research/results/adapt/adapt-gate.json

Adapt adopts a fitted last layer only when it beats the base layer on the reviewed slides it was
not fitted on (a one-sided sign test, z > `training.adapt.pipeline.MIN_GAIN_Z`). This runs
bench/bench_adapt.py twice per seed, as the product is (the gate on) and with the gate off (any
z passes, so the best held-out candidate is adopted), and reports what each choice does on the
measuring half, which neither saw. Everything else, the simulated laboratories, the reviewed
cells and the forgetting check, is the bench's.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import training.adapt.pipeline as pipeline  # noqa: E402
from bench.bench_adapt import main as bench  # noqa: E402
from research.probe_fields import command_line, write_result  # noqa: E402

KEPT = ("source", "shifted", "adapted", "recovered", "chula_change", "chosen", "candidates")


def run(bench_args: list[str], gate: float) -> list[dict[str, Any]]:
    """bench_adapt's rows with the gate set to `gate` (restored afterwards)."""
    saved = pipeline.MIN_GAIN_Z
    pipeline.MIN_GAIN_Z = gate
    try:
        with tempfile.TemporaryDirectory() as scratch:
            out = Path(scratch) / "rows.json"
            bench([*bench_args, "--out", str(out)])
            rows = json.loads(out.read_text())["rows"]
    finally:
        pipeline.MIN_GAIN_Z = saved
    return [{k: row[k] for k in KEPT} for row in rows]


def compare(gated: list[dict[str, Any]], open_: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per source: what the gate chose and what the best held-out candidate would have given."""
    out = []
    for g, o in zip(gated, open_, strict=True):
        assert g["source"] == o["source"]
        out.append(
            {
                "source": g["source"],
                "shifted": g["shifted"],
                "gated": {
                    "chosen": g["chosen"],
                    "adapted": g["adapted"],
                    "regained": g["recovered"],
                },
                "gate_off": {
                    "chosen": o["chosen"],
                    "adapted": o["adapted"],
                    "regained": o["recovered"],
                    "chula_change": o["chula_change"],
                },
                # Where the gate refused a fit: did that fit help on the measuring half?
                "gate_refused_a_fit_that": None
                if g["chosen"] != "base" or o["chosen"] == "base"
                else ("helped" if o["adapted"] > o["shifted"] else "hurt or did nothing"),
            }
        )
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, required=True, help="an import-chula crop set")
    parser.add_argument("--order", choices=("random", "queue"), default="random")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--reviewed", type=int, default=500)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    result: dict[str, Any] = {
        "command": command_line("research/adapt_gate_probe.py", argv),
        "min_gain_z": pipeline.MIN_GAIN_Z,
    }
    for seed in [int(s) for s in args.seeds.split(",")]:
        common = ["--data", str(args.data), "--order", args.order, "--seed", str(seed)]
        common += ["--reviewed", str(args.reviewed)]
        rows = compare(run(common, pipeline.MIN_GAIN_Z), run(common, float("-inf")))
        result[f"seed{seed}"] = rows
        for row in rows:
            print(f"seed {seed} {json.dumps(row)}", flush=True)
    if args.out:
        write_result(args.out, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
