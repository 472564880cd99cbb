#!/usr/bin/env bash
# Install and start the web service on the shipped default model (or on RBC_MODEL_DIR).
# Then open http://127.0.0.1:8000/ (RBC_HOST, RBC_PORT and the other settings: docs/service.md).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
model="${RBC_MODEL_DIR:-models/default}"
if [ ! -f "$model/model_card.json" ]; then
    if [ -z "${RBC_MODEL_DIR:-}" ]; then
        echo "The default model (models/default/) is not shipped yet: see issue #3." >&2
        echo "Serve a model you trained instead, e.g.:" >&2
        echo "  RBC_MODEL_DIR=runs/<run>/model scripts/serve.sh" >&2
    else
        echo "RBC_MODEL_DIR=$model is not an exported model folder (no model_card.json)." >&2
    fi
    exit 1
fi
export RBC_MODEL_DIR="$model"
exec .venv/bin/python -m app serve "$@"
