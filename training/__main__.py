"""Command line: python -m training COMMAND ...  (see --help of each command)."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from core.modelcard import ModelFileError
from training.errors import TrainingError

log = logging.getLogger("training")


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


def _train_overrides(args: argparse.Namespace, method: str) -> dict[str, object]:
    return {
        "method": method,
        "data": str(args.data) if args.data else None,
        "name": args.name,
        "out_dir": str(args.out_dir) if args.out_dir else None,
        "arch": args.arch,
        "weights": args.weights,
        "input_size": args.size,
        "batch_size": args.bs,
        "epochs": args.epochs,
        "frozen_epochs": getattr(args, "frozen_epochs", None),
        "init_from": str(args.init_from) if getattr(args, "init_from", None) else None,
        "max_lr": getattr(args, "max_lr", None),
        "lr": args.lr,
        "seed": args.seed,
        "device": args.device,
        "max_per_class": args.max_per_class,
        "classes": args.classes.split(",") if args.classes else None,
        "split": args.split,
        "cache_features": True if args.cache_features else None,
    }


def _cmd_train(args: argparse.Namespace) -> None:
    from training.config import load_config
    from training.train import train

    cfg = load_config(args.config, _train_overrides(args, args.command))
    run_dir = train(cfg)
    print(f"run written to {run_dir} (report: {run_dir / 'report.md'})")


def _cmd_evaluate(args: argparse.Namespace) -> None:
    from training.evaluate import evaluate

    result = evaluate(args.model, args.data, split=args.split)
    # The last stdout line is the machine-readable result.
    print(json.dumps(result))


def _cmd_export(args: argparse.Namespace) -> None:
    from training.export import publish_run

    notes = [Path(n[1:]).read_text().strip() if n.startswith("@") else n for n in args.note]
    dest = publish_run(args.run, args.models_dir, args.name, overwrite=args.overwrite, notes=notes)
    print(f"exported {args.run} to {dest}")


def _cmd_archs(args: argparse.Namespace) -> None:
    from training.archs import ARCHS

    for spec in ARCHS.values():
        print(f"{spec.name:20s} {spec.family:18s} ImageNet size {spec.native_size}")


def _add_train_args(p: argparse.ArgumentParser, fine_tune: bool) -> None:
    p.add_argument("--config", type=Path, help="YAML file of settings (see configs/)")
    p.add_argument(
        "--data", type=Path, help="folder-per-class data set (or an import-chula output)"
    )
    p.add_argument("--name", help="run name (folder under --out-dir)")
    p.add_argument("--out-dir", type=Path, help="where run folders go (default runs/)")
    p.add_argument("--arch", help="architecture; `python -m training archs` lists them")
    p.add_argument(
        "--weights", help='"imagenet" (default), "random" (from scratch) or a state-dict FILE'
    )
    p.add_argument("--size", type=int, help="input size in pixels")
    p.add_argument("--bs", type=int, help="batch size")
    p.add_argument("--epochs", type=int, help="epochs (fine tuning: after unfreezing)")
    p.add_argument("--lr", type=float, help="learning rate of the frozen stage")
    p.add_argument("--seed", type=int)
    p.add_argument("--device", choices=["auto", "cpu", "cuda"])
    p.add_argument("--split", choices=["auto", "manifest", "folders", "random"])
    p.add_argument("--classes", help="comma-separated subset of classes to train on")
    p.add_argument("--max-per-class", type=int, help="cap training items per class (quick runs)")
    p.add_argument(
        "--cache-features",
        action="store_true",
        help="frozen stage on cached body features (fast on a CPU; BatchNorm stays ImageNet's)",
    )
    if fine_tune:
        p.add_argument("--frozen-epochs", type=int, help="frozen epochs before unfreezing")
        p.add_argument("--init-from", type=Path, help="start from this feature-extraction run")
        p.add_argument("--max-lr", type=float, help="max learning rate (default: LR finder)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m training", description=__doc__)
    parser.add_argument("-q", "--quiet", action="store_true", help="warnings and errors only")
    sub = parser.add_subparsers(dest="command", required=True)

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

    p = sub.add_parser("feature-extract", help="method 1: frozen body, new head, one cycle")
    _add_train_args(p, fine_tune=False)
    p.set_defaults(func=_cmd_train)
    p = sub.add_parser("fine-tune", help="method 2: unfreeze, LR finder, discriminative one cycle")
    _add_train_args(p, fine_tune=True)
    p.set_defaults(func=_cmd_train)

    p = sub.add_parser("evaluate", help="metrics of an exported model on a labelled set (JSON)")
    p.add_argument("--model", type=Path, required=True, help="exported model folder")
    p.add_argument("--data", type=Path, required=True, help="folder-per-class set or Chula layout")
    p.add_argument("--split", help="train, valid, test or all (default: test where present)")
    p.set_defaults(func=_cmd_evaluate)

    p = sub.add_parser("export", help="publish a run's model and report under models/NAME")
    p.add_argument("--run", type=Path, required=True, help="run folder")
    p.add_argument("--name", required=True, help="model name")
    p.add_argument("--models-dir", type=Path, default=Path("models"))
    p.add_argument("--overwrite", action="store_true")
    p.add_argument(
        "--note",
        action="append",
        default=[],
        help="a note for the model card (repeatable; @FILE reads it from a file)",
    )
    p.set_defaults(func=_cmd_export)

    p = sub.add_parser("archs", help="list the architectures")
    p.set_defaults(func=_cmd_archs)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.WARNING if args.quiet else logging.INFO,
        format="%(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    try:
        args.func(args)
    except (TrainingError, ModelFileError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
