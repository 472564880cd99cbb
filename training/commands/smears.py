"""evaluate-smears: the two models together, whole smears against Chula's point labels."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from training.commands.shared import (
    Subparsers,
    add_small_red_arg,
    add_views_arg,
    default_detector,
    load_detector,
    load_predictor,
)
from training.errors import DataError


def register(sub: Subparsers) -> None:
    _add_evaluate_smears(sub)


def _cmd_evaluate_smears(args: argparse.Namespace) -> None:
    from training.smear import evaluate_smears

    predictor = load_predictor(args.model, args.threads, args.tta_views)
    if args.smears == "test":
        stems = [Path(s).stem for s in predictor.card.dataset.get("test_smears", [])]
        if not stems:
            raise DataError(f"the model card of {args.model} lists no test smears")
    elif args.smears == "all":
        stems = sorted(p.stem for p in (args.data / "Label").glob("*.txt"))
    else:
        stems = [s.strip() for s in args.smears.split(",") if s.strip()]
    summary, rows = evaluate_smears(
        args.data, stems, predictor, detector=load_detector(args.detector, args.small_red)
    )
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({"summary": summary, "smears": rows}, indent=1))
    print(json.dumps(summary))


def _add_evaluate_smears(sub: Subparsers) -> None:
    p = sub.add_parser("evaluate-smears", help="smear pipeline against Chula's point labels")
    p.add_argument("--model", type=Path, default=Path("models/default"))
    p.add_argument("--data", type=Path, required=True, help="Chula layout: Dataset/ and Label/")
    p.add_argument(
        "--smears", default="test", help='"test" (the model card\'s), "all", or stems "1,2,3"'
    )
    p.add_argument("--out", type=Path, help="JSON file for the summary and per-smear rows")
    p.add_argument(
        "--detector",
        default=default_detector(),
        help='a detector folder (default models/detector when shipped) or "classical"',
    )
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: one per core)")
    add_views_arg(p, "test-time views averaged per cell (default: the model card's)")
    add_small_red_arg(p)
    p.set_defaults(func=_cmd_evaluate_smears)
