"""Resident memory of the service (both shipped models loaded) under a realistic mix of requests,
for one or more Python environments in the same run: the target of issue #11 is <= 512 MiB with
the CPU build of torch, which is what the Docker image installs.

    bench/cpu_torch_venv.sh /tmp/rbc-cpu-venv          # a service-only venv on a CPU torch build
    .venv/bin/python bench/bench_service_memory.py \\
        --python .venv/bin/python --python /tmp/rbc-cpu-venv/bin/python \\
        --smears ../shared/datasets/chula-rbc-12/Dataset

Each environment starts the real server (`python -m app serve`, the default models: classifier
and cell detector) on a free loopback port; a thread samples its RSS (/proc, every 20 ms) while
the client sends, one after another: 20 single cells (/predict), 2 batches of 16 cells,
--fields smear fields with the scale given and the same fields without a scale (the detector's
scale search, the heaviest path). Prints RSS when ready, the peak, RSS at the end, and the torch
build of each environment; then one JSON line.
"""

from __future__ import annotations

import argparse
import io
import json
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import httpx
from PIL import Image

from bench.bench_service import ROOT, free_port, rss_mib, start_server

CHULA_MICRONS_PER_PIXEL = 0.19
TARGET_MIB = 512.0


class Sampler(threading.Thread):
    def __init__(self, pid: int) -> None:
        super().__init__(daemon=True)
        self.pid = pid
        self.peak = 0.0
        self.stopping = threading.Event()

    def run(self) -> None:
        while not self.stopping.is_set():
            try:
                self.peak = max(self.peak, rss_mib(self.pid))
            except (OSError, RuntimeError):
                return
            self.stopping.wait(0.02)


def torch_build(python: str) -> str:
    code = "import torch; print(torch.__version__, 'cuda' if torch.version.cuda else 'cpu')"
    done = subprocess.run([python, "-c", code], capture_output=True, text=True, check=True)
    return done.stdout.strip()


def cell_pngs(fields: list[Path], count: int) -> list[bytes]:
    """Crops of 80x80 px from the fields' centres and corners: cell-sized images."""
    out: list[bytes] = []
    for path in fields:
        with Image.open(path) as image:
            rgb = image.convert("RGB")
        w, h = rgb.size
        for x, y in ((w // 2, h // 2), (w // 4, h // 4), (3 * w // 4, 3 * h // 4)):
            buf = io.BytesIO()
            rgb.crop((x - 40, y - 40, x + 40, y + 40)).save(buf, format="PNG")
            out.append(buf.getvalue())
            if len(out) == count:
                return out
    return out


def measure(python: str, fields: list[Path], cells: list[bytes], threads: int) -> dict[str, Any]:
    port = free_port()
    process, ready_s = start_server(ROOT / "models" / "default", port, threads, python)
    row: dict[str, Any] = {"python": python, "torch": torch_build(python), "ready_s": ready_s}
    row["torch_threads"] = threads
    try:
        time.sleep(1.0)
        row["rss_ready_mib"] = rss_mib(process.pid)
        sampler = Sampler(process.pid)
        sampler.start()
        url = f"http://127.0.0.1:{port}"
        with httpx.Client(timeout=120) as client:
            for data in cells[:20]:
                client.post(f"{url}/predict", files={"file": ("c.png", data)}).raise_for_status()
            for _ in range(2):
                batch = [("files", (f"c{i}.png", d)) for i, d in enumerate(cells[:16])]
                client.post(f"{url}/predict/batch", files=batch).raise_for_status()
            for scale in (CHULA_MICRONS_PER_PIXEL, None):
                params = {} if scale is None else {"microns_per_pixel": scale}
                for path in fields:
                    answer = client.post(
                        f"{url}/analyze/smear",
                        params=params,
                        files={"file": (path.name, path.read_bytes())},
                    )
                    answer.raise_for_status()
                    row["detector"] = answer.json()["detector"]
        time.sleep(1.0)
        sampler.stopping.set()
        sampler.join()
        row["rss_peak_mib"] = sampler.peak
        row["rss_end_mib"] = rss_mib(process.pid)
    finally:
        process.terminate()
        process.wait(timeout=30)
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--python", action="append", required=True, help="an environment's python")
    ap.add_argument("--smears", type=Path, required=True, help="a folder of smear fields (JPEG)")
    ap.add_argument("--fields", type=int, default=10, help="fields sent, each twice")
    ap.add_argument("--threads", type=int, default=0, help="RBC_TORCH_THREADS (0: one per core)")
    args = ap.parse_args()
    fields = sorted(args.smears.glob("*.jpg"))[: args.fields]
    if not fields:
        raise SystemExit(f"no .jpg fields in {args.smears}")
    cells = cell_pngs(fields, 20)
    rows = [measure(python, fields, cells, args.threads) for python in args.python]
    print(f"{'torch':<22} {'ready s':>8} {'RSS ready':>10} {'peak':>8} {'end':>8}  detector")
    for r in rows:
        print(
            f"{r['torch']:<22} {r['ready_s']:>8.1f} {r['rss_ready_mib']:>9.0f}M "
            f"{r['rss_peak_mib']:>7.0f}M {r['rss_end_mib']:>7.0f}M  {r.get('detector')}"
            f"   peak {'<=' if r['rss_peak_mib'] <= TARGET_MIB else '>'} {TARGET_MIB:.0f} MiB"
        )
    print(json.dumps({"fields": len(fields), "rows": rows}))


if __name__ == "__main__":
    main()
