"""The classifier's commands: feature-extract and fine-tune (the thesis's two methods), evaluate,
export and calibrate."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from training.commands.shared import Subparsers, add_views_arg, default_detector, read_notes
from training.errors import TrainingError


def register(sub: Subparsers) -> None:
    _add_feature_extract(sub)
    _add_fine_tune(sub)
    _add_evaluate(sub)
    _add_export(sub)
    _add_export_onnx(sub)
    _add_calibrate(sub)


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
        "num_workers": args.workers,
        "max_per_class": args.max_per_class,
        "classes": args.classes.split(",") if args.classes else None,
        "split": args.split,
        "cache_features": True if args.cache_features else None,
    }


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
    p.add_argument("--workers", type=int, help="data-loading worker processes (default 0)")
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


def _cmd_train(args: argparse.Namespace) -> None:
    from training.classify.config import load_config
    from training.classify.engine import train

    cfg = load_config(args.config, _train_overrides(args, args.command))
    run_dir = train(cfg)
    print(f"run written to {run_dir} (report: {run_dir / 'report.md'})")


def _add_feature_extract(sub: Subparsers) -> None:
    p = sub.add_parser("feature-extract", help="method 1: frozen body, new head, one cycle")
    _add_train_args(p, fine_tune=False)
    p.set_defaults(func=_cmd_train)


def _add_fine_tune(sub: Subparsers) -> None:
    p = sub.add_parser("fine-tune", help="method 2: unfreeze, LR finder, discriminative one cycle")
    _add_train_args(p, fine_tune=True)
    p.set_defaults(func=_cmd_train)


def _cmd_evaluate(args: argparse.Namespace) -> None:
    from training.classify.evaluate import evaluate

    result = evaluate(args.model, args.data, split=args.split, tta_views=args.tta_views)
    # The last stdout line is the machine-readable result.
    print(json.dumps(result))


def _add_evaluate(sub: Subparsers) -> None:
    p = sub.add_parser("evaluate", help="metrics of an exported model on a labelled set (JSON)")
    p.add_argument("--model", type=Path, required=True, help="exported model folder")
    p.add_argument("--data", type=Path, required=True, help="folder-per-class set or Chula layout")
    p.add_argument("--split", help="train, valid, test or all (default: test where present)")
    add_views_arg(
        p, "test-time views averaged per cell (default: the model card's, as the service)"
    )
    p.set_defaults(func=_cmd_evaluate)


def _cmd_export(args: argparse.Namespace) -> None:
    from training.classify.export import publish_run

    notes = read_notes(args.note)
    dest = publish_run(
        args.run,
        args.models_dir,
        args.name,
        overwrite=args.overwrite,
        notes=notes,
        tta_views=args.tta_views,
    )
    print(f"exported {args.run} to {dest}")


def _add_export(sub: Subparsers) -> None:
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
    add_views_arg(
        p,
        "serve with this many test-time views: re-measures valid and test with them on the "
        "run's own data (which must still be there) and puts those figures on the card",
    )
    p.set_defaults(func=_cmd_export)


def _cmd_export_onnx(args: argparse.Namespace) -> None:
    from core.detect.learned import DETECTOR_CARD

    if (args.model / DETECTOR_CARD).is_file():
        from training.detect.export import add_detector_onnx

        path = add_detector_onnx(args.model)
        print(f"{path}: ONNX Runtime gives the torch network's heatmaps and sizes; in the card")
        return
    from training.classify.export import ONNX_TOLERANCE, add_onnx, calibration_as_arrays

    card = add_onnx(args.model)
    print(
        f"{args.model}/{card.onnx_file}: ONNX Runtime gives the torch network's probabilities "
        f"within {ONNX_TOLERANCE:g}; sha256 {card.onnx_sha256} in the card"
    )
    if calibration_as_arrays(args.model):
        print(f"{args.model}/calibration.pt rewritten as calibration.npz (served without torch)")


def _add_export_onnx(sub: Subparsers) -> None:
    p = sub.add_parser(
        "export-onnx",
        help="add model.onnx (or detector.onnx) to an exported classifier (or detector) folder, "
        "and rewrite an older calibration.pt as calibration.npz: the service then runs it with "
        "ONNX Runtime on a CPU, without torch",
    )
    p.add_argument(
        "--model", type=Path, required=True, help="exported classifier or detector folder"
    )
    p.set_defaults(func=_cmd_export_onnx)


def _cmd_calibrate(args: argparse.Namespace) -> None:
    from training.classify.calibrate import calibrate

    if not 0.5 <= args.target_accuracy < 1:
        raise TrainingError("--target-accuracy must be at least 0.5 and below 1")
    detector = None if str(args.detector) in ("classical", "none", "") else Path(args.detector)
    result = calibrate(
        args.model,
        args.data,
        args.chula,
        detector,
        foreign=args.foreign,
        target_accuracy=args.target_accuracy,
        progress=not args.quiet,
    )
    figures = {k: v for k, v in result["figures"].items() if not k.startswith("reliability")}
    print(json.dumps({**result, "figures": figures}))


def _add_calibrate(sub: Subparsers) -> None:
    p = sub.add_parser(
        "calibrate",
        help="fit a model's temperature, review threshold and familiarity statistics, and "
        "measure them (written beside the weights)",
    )
    p.add_argument("--model", type=Path, default=Path("models/default"))
    p.add_argument("--data", type=Path, required=True, help="the import-chula crop set")
    p.add_argument(
        "--chula", type=Path, help="Chula RBC-12 (Dataset/): fields for the field threshold"
    )
    p.add_argument(
        "--detector",
        default=default_detector(),
        help='a detector folder (default models/detector when shipped) or "classical"',
    )
    p.add_argument(
        "--foreign", type=Path, help="a YOLO set of other laboratories' fields (txl-pbc): measured"
    )
    p.add_argument(
        "--target-accuracy",
        type=float,
        default=0.97,
        help="accuracy among cells not flagged for review, on validation (default 0.97)",
    )
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=_cmd_calibrate)
