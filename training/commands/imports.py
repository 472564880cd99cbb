"""import-chula and import-slides: labelled cells into a folder-per-class crop set."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from training.commands.shared import Subparsers
from training.errors import TrainingError


def register(sub: Subparsers) -> None:
    _add_import_chula(sub)
    _add_import_slides(sub)


def _cmd_import_chula(args: argparse.Namespace) -> None:
    from training.datasets.chula import import_chula

    fractions = tuple(float(x) for x in args.fractions.split(","))
    if len(fractions) != 3:
        raise TrainingError("--fractions needs three numbers: train,valid,test")
    report = import_chula(
        args.src,
        args.out,
        window=args.window,
        seed=args.seed,
        fractions=(fractions[0], fractions[1], fractions[2]),
        drop_border=args.drop_border,
        classes=args.classes.split(",") if args.classes else None,
        overwrite=args.overwrite,
    )
    print(report.summary())


def _add_import_chula(sub: Subparsers) -> None:
    p = sub.add_parser("import-chula", help="crop Chula RBC-12 smears into a folder-per-class set")
    p.add_argument("--src", type=Path, required=True, help="folder with Dataset/ and Label/")
    p.add_argument("--out", type=Path, required=True, help="new folder for the crops")
    p.add_argument("--window", type=int, default=72, help="crop side in native pixels")
    p.add_argument("--seed", type=int, default=0, help="seed of the smear-grouped split")
    p.add_argument("--fractions", default="0.7,0.15,0.15", help="train,valid,test fractions")
    p.add_argument("--drop-border", action="store_true", help="drop cells cut by the border")
    p.add_argument("--classes", help="comma-separated class names to keep")
    p.add_argument("--overwrite", action="store_true", help="replace an earlier import at --out")
    p.set_defaults(func=_cmd_import_chula)


def _cmd_import_slides(args: argparse.Namespace) -> None:
    from training.datasets.slides import database_url, import_slides

    # The schema check loads Alembic's scripts, which log every plugin at INFO.
    logging.getLogger("alembic").setLevel(logging.WARNING)
    report = import_slides(
        database_url(args.database),
        args.out,
        reviewed_only=args.reviewed_only,
        signed_off_only=args.signed_off_only,
        val_share=args.val_share,
        test_share=args.test_share,
        seed=args.seed,
        window=args.window,
        drop_border=args.drop_border,
        overwrite=args.overwrite,
        progress=not args.quiet,
    )
    print(report.summary())


def _add_import_slides(sub: Subparsers) -> None:
    p = sub.add_parser(
        "import-slides",
        help="crop the reviewed cells of the slides database into a folder-per-class set",
    )
    p.add_argument(
        "--database",
        metavar="URL",
        help="records database (default: $RBC_DATABASE_URL, else $RBC_DATA_DIR/rbc.sqlite3, "
        "data/rbc.sqlite3)",
    )
    p.add_argument("--out", type=Path, required=True, help="new folder for the crops")
    which = p.add_mutually_exclusive_group()
    which.add_argument(
        "--reviewed-only",
        dest="reviewed_only",
        action="store_true",
        default=True,
        help="only cells a technologist reviewed, with their final label (the default)",
    )
    which.add_argument(
        "--all",
        dest="reviewed_only",
        action="store_false",
        help="every red cell: the final label where reviewed, else the proposed one",
    )
    p.add_argument("--signed-off-only", action="store_true", help="only signed-off slides")
    p.add_argument("--val-share", type=float, default=0.15, help="share of cells for valid")
    p.add_argument("--test-share", type=float, default=0.15, help="share of cells for test")
    p.add_argument("--seed", type=int, default=0, help="seed of the slide-grouped split")
    p.add_argument(
        "--window", type=int, default=72, help="crop side in pixels at the training scale"
    )
    p.add_argument("--drop-border", action="store_true", help="drop cells cut by the field's edge")
    p.add_argument("--overwrite", action="store_true", help="replace an earlier import at --out")
    p.set_defaults(func=_cmd_import_slides)
