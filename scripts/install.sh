#!/usr/bin/env bash
# One install path for a fresh machine, CI and the Docker image:
# a virtual environment in .venv (or $VENV) with the pinned project installed.
# Usage: scripts/install.sh [--train | --dev]
#   (none)   the service alone: ONNX Runtime and numpy, no torch, no CUDA libraries
#   --train  + training, heatmaps and the torch engine (torch, fastai...)
#   --dev    + the tests and the checks (includes --train)
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${VENV:-.venv}"
PYTHON="${PYTHON:-python3.11}"
command -v "$PYTHON" >/dev/null || PYTHON=python3
"$PYTHON" -c 'import sys; assert sys.version_info[:2] == (3, 11), f"Python 3.11 needed, found {sys.version}"'
[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
"$VENV/bin/python" -m pip install --quiet --upgrade pip
case "${1:-}" in
    "") extra="" ;;
    --train) extra="[train]" ;;
    --dev) extra="[dev]" ;;
    *) echo "usage: scripts/install.sh [--train | --dev]" >&2; exit 2 ;;
esac
# pip (not uv) so that a local wheel cache of torch is used where one exists.
"$VENV/bin/python" -m pip install --quiet --progress-bar off -e ".${extra}"
echo "installed into $VENV"
