"""Two checkouts of the service, side by side on loopback, requests alternating between them: the
fair way to compare an old and a new version on a noisy 2-core machine (one after the other,
each run sees different background load).

    git worktree add /tmp/old <commit>
    .venv/bin/python bench/bench_ab_service.py --old /tmp/old [--new .] [--rounds 15] \
        [--smear ../shared/datasets/chula-rbc-12/Dataset/1.jpg]

Both servers run `python -m app` from their own tree with this interpreter and the same model
(--model). Each round sends, to each server in turn (the order flips every round): one
/predict/batch of 64 synthetic cells, ten one-cell /predict, and one /analyze/smear of a
640x480 field when --smear is given. Prints the medians per server and the new/old ratios,
then one JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import httpx

from bench.bench_service import free_port, load_cells

ROOT = Path(__file__).resolve().parent.parent


def start(tree: Path, model: Path) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    env = {
        **os.environ,
        "RBC_MODEL_DIR": str(model.resolve()),
        "RBC_PORT": str(port),
        "RBC_HOST": "127.0.0.1",
        "RBC_LOG_LEVEL": "warning",
    }
    process = subprocess.Popen([sys.executable, "-m", "app"], cwd=tree, env=env)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"the server in {tree} exited")
        try:
            if httpx.get(url + "/readyz", timeout=1).status_code == 200:
                return process, url
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    raise SystemExit(f"the server in {tree} was not ready in 120 s")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--old", type=Path, required=True, help="the other checkout")
    parser.add_argument("--new", type=Path, default=ROOT)
    parser.add_argument("--model", type=Path, default=ROOT / "models" / "default")
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--smear", type=Path, help="a 640x480 field for /analyze/smear")
    args = parser.parse_args()
    cells = load_cells(None, 64, 96)
    batch = [("files", (name, data)) for name, data in cells]
    smear = args.smear.read_bytes() if args.smear else None
    servers = {"old": start(args.old, args.model), "new": start(args.new, args.model)}
    times: dict[str, dict[str, list[float]]] = {
        k: {"batch": [], "single": [], "smear": []} for k in servers
    }
    try:
        with httpx.Client(timeout=120) as client:

            def timed(kind: str, name: str, url: str, **kwargs: object) -> None:
                started = time.perf_counter()
                client.post(url, **kwargs).raise_for_status()  # type: ignore[arg-type]
                times[name][kind].append(time.perf_counter() - started)

            for _, url in servers.values():  # warm-up
                for _ in range(3):
                    client.post(url + "/predict/batch", files=batch).raise_for_status()
            for round_ in range(args.rounds):
                order = list(servers.items())
                if round_ % 2:
                    order.reverse()
                for name, (_, url) in order:
                    timed("batch", name, url + "/predict/batch", files=batch)
                    for n, d in cells[:10]:
                        timed("single", name, url + "/predict", files={"file": (n, d)})
                    if smear is not None:
                        timed("smear", name, url + "/analyze/smear", files={"file": ("f", smear)})
    finally:
        for process, _ in servers.values():
            process.terminate()
            process.wait(10)
    figures: dict[str, float] = {}
    for name in servers:
        figures[f"{name}_batch_cells_per_s"] = 64 / statistics.median(times[name]["batch"])
        figures[f"{name}_predict_p50_ms"] = 1000 * statistics.median(times[name]["single"])
        if smear is not None:
            figures[f"{name}_smear_p50_s"] = statistics.median(times[name]["smear"])
    figures["ratio_predict_p50_new_over_old"] = (
        figures["new_predict_p50_ms"] / figures["old_predict_p50_ms"]
    )
    figures["ratio_batch_time_new_over_old"] = (
        figures["old_batch_cells_per_s"] / figures["new_batch_cells_per_s"]
    )
    if smear is not None:
        figures["ratio_smear_new_over_old"] = (
            figures["new_smear_p50_s"] / figures["old_smear_p50_s"]
        )
    for key, value in figures.items():
        print(f"  {key:36s} {value:10.3f}")
    print(json.dumps({"rounds": args.rounds, **figures}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
