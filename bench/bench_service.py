"""Benchmark the web service on loopback against the bare model, in one run.

    .venv/bin/python bench/bench_service.py --model models/default [--images data/chula]

Starts the real server (`python -m app`, uvicorn) as a subprocess and measures:
- time from process start to /readyz 200, and resident memory (RSS) then and after the requests;
- one-cell POST /predict latency p50 / p95 over --requests sequential requests (keep-alive),
  against the model's own forward time at batch 1 measured in this process (the network as the
  service loads it: `core.classify.nets.load_network`, from model_state.pt);
- POST /predict/batch throughput (cells/s) against the bare batched forward and against
  `learn.predict` called in a loop (the thesis's way);
and checks the targets of issue #4. Prints a table, then one JSON line with every figure.
Cells are real crops from --images (any folder of PNG/JPEG files, searched recursively) or, without
it, synthetic cells at the model's input size.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
MIB = 1 << 20


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q))


def load_cells(images: Path | None, count: int, size: int) -> list[tuple[str, bytes]]:
    if images is not None:
        paths = sorted(
            p for p in images.rglob("*") if p.suffix.lower() in {".png", ".jpg", ".jpeg"}
        )
        if not paths:
            raise SystemExit(f"no PNG or JPEG files under {images}")
        step = max(1, len(paths) // count)
        return [(p.name, p.read_bytes()) for p in paths[::step][:count]]
    rng = np.random.default_rng(0)
    cells = []
    for i in range(count):
        canvas = np.empty((size, size, 3), dtype=np.uint8)
        canvas[:] = (236, 204, 210)
        yy, xx = np.ogrid[:size, :size]
        r = size * rng.uniform(0.2, 0.4)
        canvas[(xx - size / 2) ** 2 + (yy - size / 2) ** 2 <= r**2] = (205, 95, 105)
        noise = rng.integers(-6, 7, size=canvas.shape)
        arr = np.clip(canvas.astype(np.int16) + noise, 0, 255).astype(np.uint8)
        buffer = io.BytesIO()
        Image.fromarray(arr).save(buffer, format="PNG")
        cells.append((f"cell{i}.png", buffer.getvalue()))
    return cells


def start_server(
    model: Path,
    port: int,
    threads: int,
    python: str,
    tta_views: int | None = None,
    env_overrides: dict[str, str | None] | None = None,
    cwd: Path = ROOT,
) -> tuple[subprocess.Popen[bytes], float]:
    """`python -m app` on loopback (in `cwd`: this checkout or another's), waited for until
    /readyz answers 200; `env_overrides` sets more RBC_* settings (None removes one from the
    environment)."""
    env = {
        **os.environ,
        "RBC_MODEL_DIR": str(model),
        "RBC_PORT": str(port),
        "RBC_HOST": "127.0.0.1",
        "RBC_LOG_LEVEL": "warning",
        "RBC_TORCH_THREADS": str(threads),
    }
    if tta_views is not None:
        env["RBC_TTA_VIEWS"] = str(tta_views)
    for name, value in (env_overrides or {}).items():
        if value is None:
            env.pop(name, None)
        else:
            env[name] = value
    started = time.perf_counter()
    process = subprocess.Popen([python, "-m", "app"], cwd=cwd, env=env)
    url = f"http://127.0.0.1:{port}/readyz"
    while True:
        if process.poll() is not None:
            raise SystemExit("the server exited before it was ready")
        try:
            if httpx.get(url, timeout=1).status_code == 200:
                return process, time.perf_counter() - started
        except httpx.TransportError:
            pass
        time.sleep(0.02)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, default=ROOT / "models" / "default")
    parser.add_argument("--images", type=Path, help="folder of cell crops (default: synthetic)")
    parser.add_argument("--requests", type=int, default=1000)
    parser.add_argument("--batch", type=int, default=64, help="cells per /predict/batch")
    parser.add_argument("--batch-rounds", type=int, default=5)
    parser.add_argument("--predict-loop", type=int, default=64, help="cells for learn.predict")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    parser.add_argument(
        "--server-python",
        default=sys.executable,
        help="interpreter that runs the server, e.g. a venv with the CPU torch wheel the Docker "
        "image installs (default: this one); the bare-model figures always use this one",
    )
    parser.add_argument(
        "--tta-views",
        type=int,
        choices=[1, 2, 4, 8],
        help="test-time views the server averages (default: the card's); the bare forward "
        "computes the same views",
    )
    args = parser.parse_args()
    if not (args.model / "model_card.json").is_file():
        raise SystemExit(f"no exported model at {args.model}: pass --model DIR")

    card = json.loads((args.model / "model_card.json").read_text())
    if not card.get("state_file"):
        raise SystemExit(
            f"{args.model} has no model_state.pt (exported before the service stopped "
            "unpickling): publish it with `python -m training export --run RUN --name NAME "
            "--models-dir DIR` and pass --model DIR/NAME"
        )
    server_torch = subprocess.run(
        [args.server_python, "-c", "import torch; print(torch.__version__)"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    views = args.tta_views or int(card.get("tta_views", 1))
    process, ready_s = start_server(args.model, port, args.threads, args.server_python, views)
    figures: dict[str, Any] = {
        "model": card["name"],
        "tta_views": views,
        "architecture": card["architecture"],
        "input_size": card["input_size"],
        "cpu": platform.processor() or platform.machine(),
        "cores": os.cpu_count(),
        "server_torch": server_torch,
        "time_to_ready_s": ready_s,
        "rss_after_start_mib": rss_mib(process.pid),
    }
    try:
        cells = load_cells(args.images, max(args.batch, 64), card["input_size"])
        with httpx.Client(base_url=base, timeout=120) as client:
            for name, data in cells[:20]:  # warm-up
                client.post("/predict", files={"file": (name, data)}).raise_for_status()
            latencies = []
            for i in range(args.requests):
                name, data = cells[i % len(cells)]
                t0 = time.perf_counter()
                client.post("/predict", files={"file": (name, data)}).raise_for_status()
                latencies.append(time.perf_counter() - t0)
            figures["http_p50_ms"] = 1000 * percentile(latencies, 50)
            figures["http_p95_ms"] = 1000 * percentile(latencies, 95)
            figures["rss_after_requests_mib"] = rss_mib(process.pid)
            heat = []
            for i in range(50):
                name, data = cells[i % len(cells)]
                t0 = time.perf_counter()
                client.post("/predict?heatmap=true", files={"file": (name, data)})
                heat.append(time.perf_counter() - t0)
            figures["http_heatmap_p50_ms"] = 1000 * percentile(heat, 50)
            batch = [("files", (n, d)) for n, d in cells[: args.batch]]
            client.post("/predict/batch", files=batch).raise_for_status()  # warm-up
            t0 = time.perf_counter()
            for _ in range(args.batch_rounds):
                client.post("/predict/batch", files=batch).raise_for_status()
            elapsed = time.perf_counter() - t0
            figures["http_batch_cells_per_s"] = args.batch * args.batch_rounds / elapsed
            figures["rss_end_mib"] = rss_mib(process.pid)
    finally:
        process.terminate()
        process.wait(10)

    # The bare model, in this process, with the server gone.
    import torch

    from core.classify.nets import load_network
    from core.classify.preprocess import Preprocessor
    from core.classify.tta import tta_probabilities
    from training.classify.learner import load_exported

    if args.threads:
        torch.set_num_threads(args.threads)
    model, model_card = load_network(args.model)
    pre = Preprocessor.from_card(model_card)
    images = [Image.open(io.BytesIO(d)).convert("RGB") for _, d in cells]

    def forward(batch: torch.Tensor) -> torch.Tensor:
        # The same computation as the server's: with several views, chunks of 8 // views cells
        # (the server's default RBC_INFERENCE_BATCH_SIZE), every view of a chunk in one pass.
        step = len(batch) if views == 1 else max(1, 8 // views)
        return torch.cat(
            [
                tta_probabilities(model, batch[i : i + step], views)
                for i in range(0, len(batch), step)
            ]
        )

    with torch.inference_mode():
        one = torch.from_numpy(pre.batch(images[:1]))
        for _ in range(20):
            forward(one)
        times = []
        for _ in range(200):
            t0 = time.perf_counter()
            forward(one)
            times.append(time.perf_counter() - t0)
        figures["bare_forward_b1_p50_ms"] = 1000 * percentile(times, 50)
        xb = torch.from_numpy(pre.batch(images[: args.batch]))
        forward(xb)
        t0 = time.perf_counter()
        for _ in range(args.batch_rounds):
            forward(xb)
        figures["bare_batched_forward_cells_per_s"] = (
            args.batch * args.batch_rounds / (time.perf_counter() - t0)
        )
    learn, _ = load_exported(args.model)  # only for the learn.predict comparison
    with tempfile.TemporaryDirectory() as tmp:
        paths = []
        for name, data in cells[: args.predict_loop]:
            path = Path(tmp) / name
            path.write_bytes(data)
            paths.append(path)
        with learn.no_bar():
            learn.predict(paths[0])
            t0 = time.perf_counter()
            for path in paths:
                learn.predict(path)
        figures["learn_predict_loop_cells_per_s"] = len(paths) / (time.perf_counter() - t0)

    f = figures
    targets = {
        "http_p50 <= 1.5 x bare forward + 5 ms": (
            f["http_p50_ms"],
            1.5 * f["bare_forward_b1_p50_ms"] + 5,
            f["http_p50_ms"] <= 1.5 * f["bare_forward_b1_p50_ms"] + 5,
        ),
        "batch >= 0.7 x bare batched forward": (
            f["http_batch_cells_per_s"],
            0.7 * f["bare_batched_forward_cells_per_s"],
            f["http_batch_cells_per_s"] >= 0.7 * f["bare_batched_forward_cells_per_s"],
        ),
        "batch >= 5 x learn.predict loop": (
            f["http_batch_cells_per_s"],
            5 * f["learn_predict_loop_cells_per_s"],
            f["http_batch_cells_per_s"] >= 5 * f["learn_predict_loop_cells_per_s"],
        ),
        "RSS after requests <= 512 MiB": (
            f["rss_after_requests_mib"],
            512,
            f["rss_after_requests_mib"] <= 512,
        ),
        "ready <= 10 s": (f["time_to_ready_s"], 10, f["time_to_ready_s"] <= 10),
    }
    print(f"model {f['model']} ({f['architecture']}, {f['input_size']} px), {f['cores']} cores")
    print(f"  server torch {f['server_torch']}")
    for key, value in figures.items():
        if isinstance(value, float):
            print(f"  {key:36s} {value:10.2f}")
    print("targets:")
    for name, (value, bound, ok) in targets.items():
        print(f"  {'PASS' if ok else 'FAIL'}  {name:40s} {value:9.2f} vs {bound:9.2f}")
    figures["targets"] = {k: bool(v[2]) for k, v in targets.items()}
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
