"""adapt and add-replay: a laboratory's reviewed cells make the classifier its own (issue #27)."""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

from training.commands.shared import Subparsers
from training.errors import TrainingError


def register(sub: Subparsers) -> None:
    _add_adapt(sub)
    _add_replay(sub)
    _add_learn_other_labs(sub)


def _cmd_adapt(args: argparse.Namespace) -> None:
    from training.adapt.pipeline import adapt_cells, adapt_from_database
    from training.datasets.slides import database_url

    # The schema check loads Alembic's scripts, which log every plugin at INFO.
    logging.getLogger("alembic").setLevel(logging.WARNING)
    common = {
        "base": args.base,
        "name": args.name,
        "seed": args.seed,
        "overwrite": args.overwrite,
        "progress": not args.no_progress,
    }
    if args.progress_json:
        common["step"] = json_step
    if args.cells is not None:
        if args.database is not None:
            raise TrainingError("give --database or --cells, not both")
        adapt_cells(args.cells, args.out, **common)
    else:
        adapt_from_database(database_url(args.database), args.out, **common)


def json_step(stage: str, progress: float) -> None:
    """`--progress-json`: one line per step on stdout, for a program that follows the run (the
    service's teach jobs, app/teaching.py): {"stage": ..., "progress": 0..1}."""
    print(json.dumps({"stage": stage, "progress": round(progress, 3)}), flush=True)


def _add_adapt(sub: Subparsers) -> None:
    from training.adapt import DEFAULT_BASE

    p = sub.add_parser(
        "adapt",
        help="teach a model a laboratory's microscope from its reviewed, signed-off slides",
        description=(
            "Refit the base model's last layer on the reviewed red cells of the signed-off "
            "slides (with the base's own cells replayed), recalibrate it, measure it before and "
            "after on held-out slides and write a servable model folder: serve it with "
            "RBC_MODEL_DIR=OUT."
        ),
    )
    p.add_argument(
        "--database",
        help="records database URL (default: $RBC_DATABASE_URL, else the service's own SQLite)",
    )
    p.add_argument(
        "--cells", type=Path, help="an import-slides output to adapt to, instead of a database"
    )
    p.add_argument("--out", type=Path, required=True, help="new folder for the adapted model")
    p.add_argument(
        "--base",
        type=Path,
        default=DEFAULT_BASE,
        help="model to adapt (default: the shipped models/default)",
    )
    p.add_argument("--name", help="the adapted model's name (default: BASE-adapted)")
    p.add_argument("--seed", type=int, default=0, help="seed of the held-out split")
    p.add_argument("--overwrite", action="store_true", help="replace an earlier model at --out")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument(
        "--progress-json",
        action="store_true",
        help='also print each step as one JSON line on stdout ({"stage": ..., "progress": 0..1})',
    )
    p.set_defaults(func=_cmd_adapt)


def _cmd_add_replay(args: argparse.Namespace) -> None:
    from training.adapt.replay import add_replay

    card = add_replay(args.model, args.data, progress=not args.no_progress)
    print(f"{card.replay_file} written into {args.model} (sha256 {card.replay_sha256})")


def _add_replay(sub: Subparsers) -> None:
    p = sub.add_parser(
        "add-replay",
        help="keep a model's training cells beside it as features, for adapt to replay",
    )
    p.add_argument("--model", type=Path, required=True, help="exported model folder")
    p.add_argument("--data", type=Path, required=True, help="its import-chula crop set")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=_cmd_add_replay)


def _cmd_learn_other_labs(args: argparse.Namespace) -> None:
    from training.adapt.other_labs import learn_other_labs

    detector = None if str(args.detector) in ("classical", "none", "") else Path(args.detector)
    summary = learn_other_labs(
        args.model,
        args.data,
        args.txl,
        args.out,
        detector=detector,
        name=args.name,
        weight=args.weight,
        fields_per_source=args.fields_per_source,
        overwrite=args.overwrite,
    )
    print(json.dumps(summary))


def _add_learn_other_labs(sub: Subparsers) -> None:
    from training.adapt import DEFAULT_BASE
    from training.commands.shared import default_detector

    p = sub.add_parser(
        "learn-other-labs",
        help="refit a model's last layer with other laboratories' red cells taught as normal",
        description=(
            "Before any review: refit the model's last layer on its Chula training crops and "
            "the red cells counted on other laboratories' train fields (a YOLO set with "
            "sources, txl-pbc), taught as normal, with the weight that keeps Chula's "
            "validation cells; then run calibrate on the result."
        ),
    )
    p.add_argument("--model", type=Path, default=DEFAULT_BASE, help="the base model folder")
    p.add_argument("--data", type=Path, required=True, help="its import-chula crop set")
    p.add_argument("--txl", type=Path, required=True, help="other laboratories' fields (YOLO)")
    p.add_argument("--out", type=Path, required=True, help="new folder for the model")
    p.add_argument(
        "--detector",
        default=default_detector(),
        help='a detector folder (default models/detector when shipped) or "classical"',
    )
    p.add_argument("--name", help="the model's name (default: the base's)")
    p.add_argument("--weight", type=float, help="the other laboratories' weight, not chosen")
    p.add_argument(
        "--fields-per-source", type=int, help="at most this many train fields of each source"
    )
    p.add_argument("--overwrite", action="store_true", help="replace an earlier model at --out")
    p.set_defaults(func=_cmd_learn_other_labs)
