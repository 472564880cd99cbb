#!/usr/bin/env bash
# Install and start the web service on the shipped default model.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
if [ ! -f app/main.py ]; then
    echo "The web service (app/) is not built yet: see issue #4. The training CLI works:" >&2
    echo "  .venv/bin/python -m training --help" >&2
    exit 1
fi
exec .venv/bin/python -m app "$@"
