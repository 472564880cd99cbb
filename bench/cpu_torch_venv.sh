#!/usr/bin/env bash
# A service-only virtual environment on a CPU build of torch, for bench/bench_service_memory.py:
# the project's own .venv holds the pinned torch 2.14.1 as PyPI ships it for Linux (a CUDA build,
# whose libraries weigh on resident memory), while the Docker image installs the CPU build.
# The CPU build here is torch 2.13.0 (a wheel this machine keeps on disk; the Docker image's
# 2.14.1+cpu comes from the PyTorch index, which this machine cannot reach). Training's
# dependencies (fastai, torchvision) are left out: the service imports neither.
# Usage: bench/cpu_torch_venv.sh [DIR]   (default /tmp/rbc-cpu-venv)
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${1:-/tmp/rbc-cpu-venv}"
python3.11 -m venv "$VENV"
"$VENV/bin/pip" install --quiet --progress-bar off torch==2.13.0
# Every pinned dependency of pyproject.toml but torch, torchvision and fastai.
deps=$("$VENV/bin/python" - <<'PY'
import tomllib
pins = tomllib.load(open("pyproject.toml", "rb"))["project"]["dependencies"]
skip = ("torch==", "torchvision==", "fastai==")
print(" ".join(p for p in pins if not p.startswith(skip)))
PY
)
"$VENV/bin/pip" install --quiet --progress-bar off $deps
"$VENV/bin/pip" install --quiet --progress-bar off --no-deps -e .
"$VENV/bin/python" -c "import torch; assert not torch.version.cuda; print('torch', torch.__version__, 'CPU build in $VENV')"
