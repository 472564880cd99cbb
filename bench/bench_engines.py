"""The classifier's two engines, ONNX Runtime and torch, in one run (issue 28).

    .venv/bin/python bench/bench_engines.py --model models/default --crops data/chula [--split test]

`--crops` is a folder-per-class set from `python -m training import-chula` (its manifest.csv
names each crop's split). Measures, on the same machine in the same run:
- the same answers: every crop of the split through `Predictor` with each engine (the card's
  test-time views): the largest probability gap, the share of identical labels, the largest
  familiarity gap;
- in-process speed: `Predictor.predict` on batches of --batch crops, cells/s per engine;
- the compute floor: ONNX Runtime's session alone on already-normalised crops, in chunks of 8
  (the service's RBC_INFERENCE_BATCH_SIZE) and of 64;
- as a client sees it: POST /predict/batch with --batch crops (decoding included) against the
  real server (`python -m app`) started once per engine (RBC_ENGINE), cells/s over --rounds;
- with `--fields` (txl-pbc: its sources.csv) and `--detector`: the detector's two engines on
  every test field, the scale estimated as the service does: the share of fields whose objects
  (kind, box) are identical, the largest centre gap, and milliseconds per field.
Prints a table, then one JSON line with every figure.
"""

from __future__ import annotations

import argparse
import csv
import json
import platform
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from PIL import Image

from bench.bench_service import free_port, start_server

ENGINES = ("torch", "onnx")


def split_crops(crops: Path, split: str) -> list[Path]:
    with open(crops / "manifest.csv", newline="") as f:
        rows = [r for r in csv.DictReader(f) if r["split"] == split]
    if not rows:
        raise SystemExit(f"no {split} crops in {crops}/manifest.csv")
    return [crops / r["path"] for r in rows]


def answers(model: Path, paths: list[Path], threads: int) -> dict[str, Any]:
    from core.classify.predictor import Predictor

    images = []
    for p in paths:
        with Image.open(p) as opened:
            images.append(opened.convert("RGB"))
    found = {}
    for engine in ENGINES:
        predictor = Predictor.load(model, device="cpu", engine=engine, threads=threads)
        found[engine] = (predictor.engine.name, predictor.predict(images))
    (torch_name, a), (onnx_name, b) = found["torch"], found["onnx"]
    gaps = [
        abs(p.probabilities[c] - q.probabilities[c])
        for p, q in zip(a, b, strict=True)
        for c in p.probabilities
    ]
    familiarity = [
        abs(p.familiarity - q.familiarity)
        for p, q in zip(a, b, strict=True)
        if p.familiarity is not None and q.familiarity is not None
    ]
    return {
        "engines": {"torch": torch_name, "onnx": onnx_name},
        "cells": len(paths),
        "max_probability_gap": max(gaps),
        "same_label_share": float(np.mean([p.label == q.label for p, q in zip(a, b, strict=True)])),
        "max_familiarity_gap": max(familiarity) if familiarity else None,
        "images": images,
    }


def in_process(
    model: Path, images: list[Image.Image], batch: int, threads: int
) -> dict[str, float]:
    from core.classify.predictor import Predictor

    speeds = {}
    chunks = [images[i : i + batch] for i in range(0, len(images) - batch + 1, batch)][:20]
    for engine in ENGINES:
        predictor = Predictor.load(model, device="cpu", engine=engine, threads=threads)
        predictor.predict(chunks[0])  # warm-up
        started = time.perf_counter()
        for chunk in chunks:
            predictor.predict(chunk)
        speeds[engine] = len(chunks) * batch / (time.perf_counter() - started)
    return speeds


def network_alone(model: Path, images: list[Image.Image], threads: int) -> dict[str, float]:
    """The compute floor: ONNX Runtime's session alone on already-normalised crops, in chunks
    of the service's RBC_INFERENCE_BATCH_SIZE (8) and of 64, cells/s."""
    from core.classify.predictor import Predictor

    predictor = Predictor.load(model, device="cpu", engine="onnx", threads=threads)
    batch = predictor.preprocess.batch(images[:640])
    speeds = {}
    for size in (8, 64):
        predictor.engine(batch[:size])  # warm-up
        started = time.perf_counter()
        for start in range(0, len(batch), size):
            predictor.engine(batch[start : start + size])
        speeds[f"chunks_of_{size}"] = len(batch) / (time.perf_counter() - started)
    return speeds


def as_a_client(
    model: Path, paths: list[Path], batch: int, rounds: int, threads: int
) -> dict[str, float]:
    files = [("files", (p.name, p.read_bytes(), "image/png")) for p in paths[:batch]]
    speeds = {}
    for engine in ENGINES:
        port = free_port()
        process, _ = start_server(
            model, port, threads, sys.executable, env_overrides={"RBC_ENGINE": engine}
        )
        try:
            url = f"http://127.0.0.1:{port}/predict/batch"
            with httpx.Client(timeout=120) as client:
                client.post(url, files=files).raise_for_status()  # warm-up
                started = time.perf_counter()
                for _ in range(rounds):
                    client.post(url, files=files).raise_for_status()
                speeds[engine] = rounds * batch / (time.perf_counter() - started)
        finally:
            process.terminate()
            process.wait(30)
    return speeds


def detector_answers(detector: Path, fields: Path, limit: int) -> dict[str, Any]:
    from core.detect.learned import CellDetector

    with open(fields / "sources.csv", newline="") as f:
        paths = [fields / r["image"] for r in csv.DictReader(f) if r["split"] == "test"][:limit]
    rgbs = []
    for p in paths:
        with Image.open(p) as opened:
            rgbs.append(np.asarray(opened.convert("RGB")))
    found, ms = {}, {}
    for engine in ENGINES:
        loaded = CellDetector.load(detector, engine=engine)
        loaded.detect(rgbs[0])  # warm-up
        started = time.perf_counter()
        found[engine] = [loaded.detect(rgb) for rgb in rgbs]
        ms[engine] = 1000 * (time.perf_counter() - started) / len(rgbs)
    same, gap = 0, 0.0
    for a, b in zip(found["torch"], found["onnx"], strict=True):
        kinds_a, kinds_b = [o.kind for o in a.objects], [o.kind for o in b.objects]
        if kinds_a == kinds_b:
            same += 1
            for o, q in zip(a.objects, b.objects, strict=True):
                gap = max(gap, abs(o.x - q.x), abs(o.y - q.y))
    return {
        "fields": len(rgbs),
        "same_objects_share": same / len(rgbs),
        "max_centre_gap_px": gap,
        "ms_per_field": ms,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, default=Path("models/default"))
    parser.add_argument("--crops", type=Path, required=True, help="import-chula output folder")
    parser.add_argument("--split", default="test")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--threads", type=int, default=0, help="0: one per core")
    parser.add_argument("--detector", type=Path, help="a detector folder (models/detector)")
    parser.add_argument("--fields", type=Path, help="txl-pbc folder, for the detector")
    parser.add_argument("--field-limit", type=int, default=1000)
    args = parser.parse_args()
    paths = split_crops(args.crops, args.split)
    same = answers(args.model, paths, args.threads)
    images = same.pop("images")
    local = in_process(args.model, images, args.batch, args.threads)
    floor = network_alone(args.model, images, args.threads)
    client = as_a_client(args.model, paths, args.batch, args.rounds, args.threads)
    detection = (
        detector_answers(args.detector, args.fields, args.field_limit)
        if args.detector and args.fields
        else None
    )
    figures = {
        **same,
        "detector": detection,
        "predict_cells_per_s": local,
        "onnx_network_alone_cells_per_s": floor,
        "predict_batch_http_cells_per_s": client,
        "onnx_over_torch_in_process": local["onnx"] / local["torch"],
        "onnx_over_torch_http": client["onnx"] / client["torch"],
        "batch": args.batch,
        "cpu": platform.processor() or platform.machine(),
    }
    print(
        f"{same['cells']} {args.split} crops: labels identical for {same['same_label_share']:.4%}, "
        f"largest probability gap {same['max_probability_gap']:.2e}, familiarity gap "
        f"{same['max_familiarity_gap']}"
    )
    print("| engine | Predictor.predict cells/s | POST /predict/batch cells/s |")
    print("|---|---|---|")
    for engine in ENGINES:
        print(f"| {same['engines'][engine]} | {local[engine]:.0f} | {client[engine]:.0f} |")
    print(
        "ONNX Runtime's session alone (normalised crops): "
        + ", ".join(f"{k.replace('_', ' ')} {v:.0f} cells/s" for k, v in floor.items())
    )
    if detection is not None:
        ms = detection["ms_per_field"]
        print(
            f"detector, {detection['fields']} test fields, scale estimated: objects identical on "
            f"{detection['same_objects_share']:.1%} of fields, largest centre gap "
            f"{detection['max_centre_gap_px']:.2g} px; ms per field: torch "
            f"{ms['torch']:.0f}, onnx {ms['onnx']:.0f}"
        )
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
