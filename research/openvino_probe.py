"""Is there a faster CPU runtime than ONNX Runtime for the classifier, within 1e-4?

    VENV=/tmp/ovenv; python3 -m venv $VENV && $VENV/bin/pip install openvino==2026.4.1 \
        numpy==2.4.6 onnxruntime==1.32.0
    $VENV/bin/python research/openvino_probe.py --model models/default \
        --out research/results/serving/openvino-probe.json

Issue 28 asks for classification near the compute floor on 2 cores, choosing the runtime by
measurement. ONNX Runtime is the one served (core/onnxsession.py). OpenVINO reads the same
`model.onnx`; this probe runs both on the same normalised random batches in one process, in
chunks of 8 (the service's RBC_INFERENCE_BATCH_SIZE) and of 64, each runtime timed in a process
of its own (beside another runtime's thread pools ONNX Runtime ran 30 % slower). OpenVINO runs
with f32 inference precision (its default on a CPU with bfloat16 support would round the
answers) and, for the record, with its default precision. Figures: cells per second (median
over rounds), the largest gap in logits and in softmax probabilities against ONNX Runtime. Not
a project dependency: the probe runs in a scratch venv.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent


def softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def speed(run: Any, x: np.ndarray, rounds: int) -> dict[str, int]:
    """Median cells/s over `rounds` of the whole batch, in chunks of 8 and of 64."""
    found: dict[str, int] = {}
    for size in (8, 64):
        per_round = []
        for _ in range(rounds):
            run(x[:size])
            started = time.perf_counter()
            for s in range(0, len(x), size):
                run(x[s : s + size])
            per_round.append(len(x) / (time.perf_counter() - started))
        found[f"chunks_of_{size}"] = round(statistics.median(per_round))
    return found


def main() -> int:
    import onnxruntime as ort
    import openvino as ov

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, default=ROOT / "models" / "default")
    parser.add_argument("--cells", type=int, default=640)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path)
    parser.add_argument("--only", help="time this runtime alone (the probe runs each so)")
    args = parser.parse_args()
    path = args.model / "model.onnx"
    x = np.random.default_rng(0).normal(size=(args.cells, 3, 96, 96)).astype(np.float32)

    options = ort.SessionOptions()
    options.intra_op_num_threads = args.threads
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.enable_mem_pattern = False
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name

    core = ov.Core()
    compiled = {
        "openvino f32": core.compile_model(
            core.read_model(str(path)),
            "CPU",
            {
                "INFERENCE_PRECISION_HINT": "f32",
                "INFERENCE_NUM_THREADS": str(args.threads),
                "PERFORMANCE_HINT": "LATENCY",
            },
        ),
        "openvino default precision": core.compile_model(
            core.read_model(str(path)),
            "CPU",
            {"INFERENCE_NUM_THREADS": str(args.threads), "PERFORMANCE_HINT": "LATENCY"},
        ),
    }
    requests = {key: c.create_infer_request() for key, c in compiled.items()}

    def run_ort(batch: np.ndarray) -> np.ndarray:
        logits: np.ndarray = session.run(["logits"], {name: batch})[0]
        return logits

    def run_ov(key: str) -> Any:
        request, output = requests[key], compiled[key].outputs[0]

        def run(batch: np.ndarray) -> np.ndarray:
            return np.asarray(request.infer({0: batch})[output])

        return run

    runners = {"onnxruntime": run_ort, **{key: run_ov(key) for key in compiled}}
    if args.only:
        print(json.dumps(speed(runners[args.only], x, args.rounds)))
        return 0
    reference = np.concatenate([run_ort(x[s : s + 64]) for s in range(0, len(x), 64)])
    gaps = {}
    for key, run in runners.items():
        logits = np.concatenate([run(x[s : s + 64]) for s in range(0, len(x), 64)])
        gaps[key] = {
            "max_logit_gap": float(np.abs(logits - reference).max()),
            "max_probability_gap": float(np.abs(softmax(logits) - softmax(reference)).max()),
            "same_label_share": float((logits.argmax(1) == reference.argmax(1)).mean()),
        }
    speeds = {}
    for key in runners:  # each in a process of its own: the others' thread pools stay out
        command = [sys.executable, __file__, "--model", str(args.model), "--only", key]
        command += ["--cells", str(args.cells), "--rounds", str(args.rounds)]
        command += ["--threads", str(args.threads)]
        done = subprocess.run(command, check=True, capture_output=True, text=True)
        speeds[key] = json.loads(done.stdout.strip().splitlines()[-1])
    result = {
        "command": " ".join(sys.argv),
        "versions": {"onnxruntime": ort.__version__, "openvino": ov.__version__},
        "cpu": platform.processor() or platform.machine(),
        "threads": args.threads,
        "answers_against_onnxruntime": gaps,
        "cells_per_s_median": speeds,
    }
    print(json.dumps(result, indent=2))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
