"""Command line: python -m training COMMAND ...  (see --help of each command)."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Any

from core.modelcard import ModelFileError
from training.errors import DataError, TrainingError

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


def _cmd_train(args: argparse.Namespace) -> None:
    from training.classify.config import load_config
    from training.classify.engine import train

    cfg = load_config(args.config, _train_overrides(args, args.command))
    run_dir = train(cfg)
    print(f"run written to {run_dir} (report: {run_dir / 'report.md'})")


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


def _cmd_evaluate(args: argparse.Namespace) -> None:
    from training.classify.evaluate import evaluate

    result = evaluate(args.model, args.data, split=args.split, tta_views=args.tta_views)
    # The last stdout line is the machine-readable result.
    print(json.dumps(result))


def _cmd_export(args: argparse.Namespace) -> None:
    from training.classify.export import publish_run

    notes = [Path(n[1:]).read_text().strip() if n.startswith("@") else n for n in args.note]
    dest = publish_run(
        args.run,
        args.models_dir,
        args.name,
        overwrite=args.overwrite,
        notes=notes,
        tta_views=args.tta_views,
    )
    print(f"exported {args.run} to {dest}")


def _load_predictor(model: Path, threads: int, tta_views: int | None) -> Any:
    from core.classify.predictor import ModelLoadError, Predictor

    try:
        return Predictor.load(model, device="auto", threads=threads, tta_views=tta_views)
    except ModelLoadError as exc:
        raise DataError(f"cannot load the model: {exc}") from exc


def _load_detector(choice: str, small_red: str | None = None) -> Any:
    """ "classical" (or "none"): None, the classical segmentation; else a detector folder, with
    `small_red` ("THRESHOLD,UM": red-cell peaks under UM across kept from THRESHOLD up)."""
    if choice in ("classical", "none"):
        return None
    from core.detect.learned import CellDetector

    try:
        detector = CellDetector.load(Path(choice))
    except ModelFileError as exc:
        raise DataError(f"cannot load the detector: {exc}") from exc
    if small_red:
        from core.detect.learned import parse_small_red

        try:
            detector.small_red = parse_small_red(small_red)
        except ValueError as exc:
            raise DataError(str(exc)) from None
    return detector


def _add_small_red_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--small-red",
        metavar="THRESHOLD,UM",
        help="keep red-cell peaks under UM across from THRESHOLD up (a candidate rule, "
        "research/small_cell_threshold.py; default: the card's threshold for every peak)",
    )


def _default_detector() -> str:
    return (
        "models/detector" if Path("models/detector/detector_card.json").is_file() else "classical"
    )


def _cmd_evaluate_smears(args: argparse.Namespace) -> None:
    from training.smear import evaluate_smears

    predictor = _load_predictor(args.model, args.threads, args.tta_views)
    if args.smears == "test":
        stems = [Path(s).stem for s in predictor.card.dataset.get("test_smears", [])]
        if not stems:
            raise DataError(f"the model card of {args.model} lists no test smears")
    elif args.smears == "all":
        stems = sorted(p.stem for p in (args.data / "Label").glob("*.txt"))
    else:
        stems = [s.strip() for s in args.smears.split(",") if s.strip()]
    summary, rows = evaluate_smears(
        args.data, stems, predictor, detector=_load_detector(args.detector, args.small_red)
    )
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({"summary": summary, "smears": rows}, indent=1))
    print(json.dumps(summary))


def _cmd_evaluate_detector(args: argparse.Namespace) -> None:
    from training.detect.data import load_fields
    from training.detect.evaluate import (
        LearnedDetector,
        classical_detector,
        evaluate_fields,
        markdown_table,
        scale_errors,
    )

    if not (args.yolo or args.coco or args.chula):
        raise DataError("nothing to evaluate on: give --yolo, --coco and/or --chula")
    chula_stems = None
    if args.chula and args.chula_smears == "test":
        card = json.loads((args.model / "model_card.json").read_text())
        chula_stems = [Path(s).stem for s in card.get("dataset", {}).get("test_smears", [])]
        if not chula_stems:
            raise DataError(f"the model card of {args.model} lists no test smears")
    coco = [(c, args.coco_images) for c in args.coco]
    fields, scales = load_fields(args.yolo, coco, args.chula, chula_stems)
    splits = set(args.split.split(","))
    fields = [f for f in fields if f.split in splits or f.source == "chula"]
    if not fields:
        raise DataError(f"no field in the split(s) {sorted(splits)}")
    print("scales (um per pixel): " + ", ".join(f"{k} {v:.4f}" for k, v in scales.items()))
    loaded = _load_detector(args.detector, args.small_red)
    if loaded is not None and args.no_nucleus_rule:
        loaded.nucleus_rule = None
    elif loaded is not None and args.nucleus_rule:
        from core.detect.nucleus import NucleusRule

        try:
            loaded.nucleus_rule = NucleusRule.from_key(args.nucleus_rule)
        except ValueError as exc:
            raise DataError(str(exc)) from exc
    results: dict[str, Any] = {}
    for name, give in (("with scale", True), ("without scale", False)):
        learned = LearnedDetector(loaded) if loaded is not None else None
        detector = learned or classical_detector
        by_source, rows = evaluate_fields(fields, detector, lambda f: scales[f.source], give)
        results[name] = by_source
        if learned is not None and not give:
            errors = scale_errors(rows, learned.scales_used, scales)
            results["scale_estimate"] = errors
            print("scale estimate, |estimated / true - 1|: " + json.dumps(errors))
        if args.out:
            results.setdefault("_rows", {})[name] = rows
    table = markdown_table({k: results[k] for k in ("with scale", "without scale")})
    print(table)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        rule = getattr(loaded, "nucleus_rule", None)
        payload = {
            "detector": args.detector,
            "nucleus_rule": None if rule is None else rule.key(),
            "small_red": getattr(loaded, "small_red", None),
            "scales": scales,
            "splits": sorted(splits),
        }
        args.out.write_text(json.dumps({**payload, **results}, indent=1))
        args.out.with_suffix(".md").write_text(table + "\n")


def _cmd_train_detector(args: argparse.Namespace) -> None:
    from training.detector import load_detector_config, train_detector

    overrides = {
        "name": args.name,
        "out_dir": str(args.out_dir) if args.out_dir else None,
        "epochs": args.epochs,
        "leave_out": args.leave_out.split(",") if args.leave_out else None,
        "device": args.device,
        "threads": args.threads,
        "max_fields": args.max_fields,
        "workers": args.workers,
        "prepared": str(args.prepared) if args.prepared else None,
    }
    cfg = load_detector_config(args.config, overrides)
    if args.finish:
        from training.detector import finish_detector

        finish_detector(args.finish, cfg)
        print(f"detector card rewritten in {args.finish / 'detector'}")
        return
    if args.prepare_only:
        from training.detector import prepare_samples

        print(f"prepared fields written to {prepare_samples(cfg, args.prepare_only)}")
        return
    run_dir = train_detector(cfg)
    print(f"detector run written to {run_dir}")


def _cmd_export_detector(args: argparse.Namespace) -> None:
    from training.detector import export_detector

    notes = [Path(n[1:]).read_text().strip() if n.startswith("@") else n for n in args.note]
    dest = export_detector(args.run, args.models_dir, args.name, notes, args.overwrite)
    print(f"detector published to {dest}")


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


def _add_views_arg(p: argparse.ArgumentParser, help_text: str) -> None:
    p.add_argument("--tta-views", type=int, choices=[1, 2, 4, 8], help=help_text)


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
    _add_views_arg(
        p, "test-time views averaged per cell (default: the model card's, as the service)"
    )
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
    _add_views_arg(
        p,
        "serve with this many test-time views: re-measures valid and test with them on the "
        "run's own data (which must still be there) and puts those figures on the card",
    )
    p.set_defaults(func=_cmd_export)

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
        default=_default_detector(),
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

    p = sub.add_parser("evaluate-smears", help="smear pipeline against Chula's point labels")
    p.add_argument("--model", type=Path, default=Path("models/default"))
    p.add_argument("--data", type=Path, required=True, help="Chula layout: Dataset/ and Label/")
    p.add_argument(
        "--smears", default="test", help='"test" (the model card\'s), "all", or stems "1,2,3"'
    )
    p.add_argument("--out", type=Path, help="JSON file for the summary and per-smear rows")
    p.add_argument(
        "--detector",
        default=_default_detector(),
        help='a detector folder (default models/detector when shipped) or "classical"',
    )
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: one per core)")
    _add_views_arg(p, "test-time views averaged per cell (default: the model card's)")
    _add_small_red_arg(p)
    p.set_defaults(func=_cmd_evaluate_smears)

    p = sub.add_parser(
        "evaluate-detector",
        help="red cells, white cells and platelets found on labelled fields, per source",
    )
    p.add_argument("--yolo", type=Path, action="append", default=[], help="a YOLO-layout set")
    p.add_argument("--coco", type=Path, action="append", default=[], help="a COCO JSON file")
    p.add_argument("--coco-images", type=Path, help="images of the COCO files (default: beside)")
    p.add_argument("--chula", type=Path, help="Chula layout: Dataset/ and Label/ (points)")
    p.add_argument(
        "--chula-smears",
        choices=["test", "all"],
        default="test",
        help="the --model card's test smears, or all",
    )
    p.add_argument(
        "--model", type=Path, default=Path("models/default"), help="for --chula-smears test"
    )
    p.add_argument("--split", default="test", help="splits of the YOLO/COCO sets, comma-separated")
    p.add_argument(
        "--detector",
        default="classical",
        help='"classical" (the threshold segmentation) or a detector folder (models/detector)',
    )
    rule = p.add_mutually_exclusive_group()
    rule.add_argument(
        "--no-nucleus-rule",
        action="store_true",
        help="keep the network's red cells even where they hold a nucleus (core/detect/nucleus.py)",
    )
    rule.add_argument(
        "--nucleus-rule",
        help="another rule than the shipped one, by its key (research/nucleus_probe.py), e.g. "
        "T2.0-B0.7-F0.1",
    )
    p.add_argument("--out", type=Path, help="JSON file (and a .md table beside it)")
    _add_small_red_arg(p)
    p.set_defaults(func=_cmd_evaluate_detector)

    p = sub.add_parser("train-detector", help="train the cell detector from a YAML config")
    p.add_argument("--config", type=Path, required=True, help="e.g. configs/detector.yaml")
    p.add_argument("--name", help="run name (folder under --out-dir)")
    p.add_argument("--out-dir", type=Path, help="where run folders go (default runs/)")
    p.add_argument("--epochs", type=int)
    p.add_argument("--leave-out", help="sources left out of training, comma-separated")
    p.add_argument("--device", help="cpu or cuda")
    p.add_argument("--threads", type=int, help="torch threads (0: one per core)")
    p.add_argument("--max-fields", type=int, help="cap the training fields (quick runs)")
    p.add_argument("--workers", type=int, help="DataLoader worker processes")
    p.add_argument("--prepared", type=Path, help="read a prepared copy of the fields instead")
    p.add_argument(
        "--finish",
        type=Path,
        metavar="RUN",
        help="on a trained run: choose thresholds, calibrate sizes, measure, rewrite the card",
    )
    p.add_argument(
        "--prepare-only",
        type=Path,
        metavar="DIR",
        help="write the fields at the working scale (JPEG) and their labels to DIR, then stop",
    )
    p.set_defaults(func=_cmd_train_detector)

    p = sub.add_parser("export-detector", help="publish a detector run under models/NAME")
    p.add_argument("--run", type=Path, required=True, help="a train-detector run folder")
    p.add_argument("--name", default="detector")
    p.add_argument("--models-dir", type=Path, default=Path("models"))
    p.add_argument("--overwrite", action="store_true")
    p.add_argument("--note", action="append", default=[], help="a note for the card (@FILE)")
    p.set_defaults(func=_cmd_export_detector)

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
