"""The cell detector's commands: evaluate-detector, train-detector and export-detector."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from training.commands.shared import Subparsers, add_small_red_arg, load_detector, read_notes
from training.errors import DataError


def register(sub: Subparsers) -> None:
    _add_evaluate_detector(sub)
    _add_train_detector(sub)
    _add_export_detector(sub)


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
    loaded = load_detector(args.detector, args.small_red)
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


def _add_evaluate_detector(sub: Subparsers) -> None:
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
    add_small_red_arg(p)
    p.set_defaults(func=_cmd_evaluate_detector)


def _cmd_train_detector(args: argparse.Namespace) -> None:
    from training.detect.config import load_detector_config
    from training.detect.engine import train_detector

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
        from training.detect.engine import finish_detector

        finish_detector(args.finish, cfg)
        print(f"detector card rewritten in {args.finish / 'detector'}")
        return
    if args.prepare_only:
        from training.detect.data import prepare_samples

        print(f"prepared fields written to {prepare_samples(cfg, args.prepare_only)}")
        return
    run_dir = train_detector(cfg)
    print(f"detector run written to {run_dir}")


def _add_train_detector(sub: Subparsers) -> None:
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


def _cmd_export_detector(args: argparse.Namespace) -> None:
    from training.detect.export import export_detector

    notes = read_notes(args.note)
    dest = export_detector(args.run, args.models_dir, args.name, notes, args.overwrite)
    print(f"detector published to {dest}")


def _add_export_detector(sub: Subparsers) -> None:
    p = sub.add_parser("export-detector", help="publish a detector run under models/NAME")
    p.add_argument("--run", type=Path, required=True, help="a train-detector run folder")
    p.add_argument("--name", default="detector")
    p.add_argument("--models-dir", type=Path, default=Path("models"))
    p.add_argument("--overwrite", action="store_true")
    p.add_argument("--note", action="append", default=[], help="a note for the card (@FILE)")
    p.set_defaults(func=_cmd_export_detector)
