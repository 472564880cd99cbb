"""Resident memory of the service (both shipped models loaded, slides on) under a realistic mix of
requests, for several installs or checkouts in the same run. Issue 28's target: <= 300 MiB at
the peak with default settings, after 100 fields and 600 single cells.

    VENV=/tmp/rbc-serve bash scripts/install.sh           # the serving install (no torch)
    git worktree add /tmp/rbc-before <commit>             # optional: the code before, to compare
    .venv/bin/python bench/bench_service_memory.py \\
        --run serving=/tmp/rbc-serve/bin/python \\
        --run training-install=.venv/bin/python \\
        --run before=.venv/bin/python@/tmp/rbc-before \\
        --smears ../shared/datasets/chula-rbc-12/Dataset

Each run (LABEL=PYTHON, or LABEL=PYTHON@CHECKOUT to serve another checkout's code) starts the
real server (`python -m app`, default settings, the shipped classifier and cell detector, slides
on a fresh SQLite file) on a free loopback port; a thread samples its RSS (/proc, every 20 ms)
while the client sends, one after another: --cells single cells (/predict; crops of the fields),
2 batches of 64 cells (/predict/batch), --fields fields with the scale given and the same fields
without a scale (the detector's scale search, the heaviest path), and --slide-fields of them
added to a slide. Prints RSS when ready, the peak, RSS at the end and whether torch was
imported by the server; then one JSON line. (The older --python PYTHON still works: a run
labelled by its path.)
"""

from __future__ import annotations

import argparse
import io
import json
import subprocess
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx
from PIL import Image

from bench.bench_service import ROOT, free_port, rss_mib, start_server

CHULA_MICRONS_PER_PIXEL = 0.19
TARGET_MIB = 300.0


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
    """The environment's torch ("2.14.1 cuda", "2.14.1 cpu") or "none" (a serving install)."""
    code = (
        "import importlib.util as u\n"
        "if u.find_spec('torch') is None: print('none')\n"
        "else:\n"
        "    import torch; print(torch.__version__, 'cuda' if torch.version.cuda else 'cpu')"
    )
    done = subprocess.run([python, "-c", code], capture_output=True, text=True, check=True)
    return done.stdout.strip()


def torch_loaded(pid: int) -> bool:
    """Whether the process has torch's library mapped (it imported torch)."""
    try:
        return "libtorch" in Path(f"/proc/{pid}/maps").read_text()
    except OSError:
        return False


def cell_pngs(fields: list[Path], count: int) -> list[bytes]:
    """Crops of 80x80 px on a grid over the fields: cell-sized images, all different."""
    out: list[bytes] = []
    while len(out) < count:
        for path in fields:
            with Image.open(path) as image:
                rgb = image.convert("RGB")
            w, h = rgb.size
            for i in range(1, 5):
                for j in range(1, 4):
                    x, y = i * w // 5 + len(out) % 7, j * h // 4
                    buf = io.BytesIO()
                    rgb.crop((x - 40, y - 40, x + 40, y + 40)).save(buf, format="PNG")
                    out.append(buf.getvalue())
                    if len(out) == count:
                        return out
    return out


def parse_run(value: str) -> tuple[str, str, Path]:
    """LABEL=PYTHON[@CHECKOUT] -> (label, python, checkout)."""
    label, _, rest = value.partition("=")
    if not rest:
        raise argparse.ArgumentTypeError(f"--run takes LABEL=PYTHON[@CHECKOUT], not {value!r}")
    python, _, checkout = rest.partition("@")
    # A relative path is this folder's: the server runs in the checkout's.
    python = str(Path(python).absolute()) if "/" in python else python
    return label, python, Path(checkout).absolute() if checkout else ROOT


def measure(
    label: str, python: str, checkout: Path, fields: list[Path], cells: list[bytes], args: Any
) -> dict[str, Any]:
    port = free_port()
    with tempfile.TemporaryDirectory() as scratch:
        env = {
            "RBC_DATABASE_URL": f"sqlite:///{scratch}/records.sqlite3",
            "RBC_MODEL_DIR": str(checkout / "models" / "default"),
            "RBC_DETECTOR_DIR": str(checkout / "models" / "detector"),
            # Default settings: no thread count or batch size of ours.
            "RBC_TORCH_THREADS": None,
        }
        process, ready_s = start_server(
            checkout / "models" / "default", port, 0, python, env_overrides=env, cwd=checkout
        )
        row: dict[str, Any] = {"label": label, "python": python, "checkout": str(checkout)}
        row |= {"torch": torch_build(python), "ready_s": ready_s}
        try:
            time.sleep(1.0)
            row["rss_ready_mib"] = rss_mib(process.pid)
            sampler = Sampler(process.pid)
            sampler.start()
            row |= send(f"http://127.0.0.1:{port}", fields, cells, args.slide_fields)
            time.sleep(1.0)
            sampler.stopping.set()
            sampler.join()
            row["rss_peak_mib"] = sampler.peak
            row["rss_end_mib"] = rss_mib(process.pid)
            row["torch_imported"] = torch_loaded(process.pid)
        finally:
            process.terminate()
            process.wait(timeout=30)
    return row


def send(url: str, fields: list[Path], cells: list[bytes], slide_fields: int) -> dict[str, Any]:
    sent = {"cells": 0, "fields": 0}
    with httpx.Client(base_url=url, timeout=120) as client:
        for data in cells:
            client.post("/predict", files={"file": ("c.png", data)}).raise_for_status()
            sent["cells"] += 1
        for _ in range(2):
            batch = [("files", (f"c{i}.png", d)) for i, d in enumerate(cells[:64])]
            client.post("/predict/batch", files=batch).raise_for_status()
        for scale in (CHULA_MICRONS_PER_PIXEL, None):
            params = {} if scale is None else {"microns_per_pixel": scale}
            for path in fields:
                answer = client.post(
                    "/analyze/smear", params=params, files={"file": (path.name, path.read_bytes())}
                )
                answer.raise_for_status()
                sent["fields"] += 1
        slide = client.post(
            "/slides", json={"sample_id": "MEMORY", "microns_per_pixel": CHULA_MICRONS_PER_PIXEL}
        )
        slide.raise_for_status()
        for path in fields[:slide_fields]:
            added = client.post(
                f"/slides/{slide.json()['id']}/fields",
                files={"file": (path.name, path.read_bytes(), "image/jpeg")},
            )
            added.raise_for_status()
            sent["fields"] += 1
    return {"sent": sent}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--run", action="append", default=[], type=parse_run, help=parse_run.__doc__)
    ap.add_argument("--python", action="append", default=[], help="an environment's python")
    ap.add_argument("--smears", type=Path, required=True, help="a folder of smear fields (JPEG)")
    ap.add_argument("--fields", type=int, default=45, help="fields sent, each twice")
    ap.add_argument("--slide-fields", type=int, default=10, help="of them, added to a slide")
    ap.add_argument("--cells", type=int, default=600, help="single cells sent (/predict)")
    args = ap.parse_args()
    runs = args.run + [parse_run(f"{python}={python}") for python in args.python]
    if not runs:
        raise SystemExit("give at least one --run LABEL=PYTHON[@CHECKOUT]")
    fields = sorted(args.smears.glob("*.jpg"))[: args.fields]
    if not fields:
        raise SystemExit(f"no .jpg fields in {args.smears}")
    cells = cell_pngs(fields, args.cells)
    rows = [measure(label, py, checkout, fields, cells, args) for label, py, checkout in runs]
    print(
        f"{'run':<18} {'torch':<14} {'imported':>8} {'ready s':>8} {'RSS ready':>10} "
        f"{'peak':>8} {'end':>8}  sent"
    )
    for r in rows:
        print(
            f"{r['label']:<18} {r['torch']:<14} {'yes' if r['torch_imported'] else 'no':>8} "
            f"{r['ready_s']:>8.1f} {r['rss_ready_mib']:>9.0f}M {r['rss_peak_mib']:>7.0f}M "
            f"{r['rss_end_mib']:>7.0f}M  {r['sent']}"
            f"   peak {'<=' if r['rss_peak_mib'] <= TARGET_MIB else '>'} {TARGET_MIB:.0f} MiB"
        )
    print(json.dumps({"fields": len(fields), "cells": len(cells), "rows": rows}))


if __name__ == "__main__":
    main()
