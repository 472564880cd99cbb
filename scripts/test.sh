#!/usr/bin/env bash
# Install (with dev tools) and run the default test suite. Slow tests: add `-m slow`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh --dev
exec .venv/bin/python -m pytest -m "not slow" "$@"
