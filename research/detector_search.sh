#!/usr/bin/env bash
# Detector recipe search (issue #11): each config in CONFIGS (default research/configs/detector-search)
# overrides configs/detector.yaml; all are trained at once (on a GPU, or slowly on a CPU) from
# a prepared copy of the fields (`python -m training train-detector --config
# configs/detector.yaml --prepare-only DIR`), then each run's validation figures and its test
# figures per source (scale given) are printed as one JSON object. Leave-one-source-out runs
# (`leave_out:`) measure how the detector does on a laboratory it never saw.
# Usage: research/detector_search.sh PREPARED_DIR [OUT_DIR] [SECONDS_PER_RUN] [DEVICE] [WEIGHTS]
set -uo pipefail
cd "$(dirname "$0")/.."
PREPARED="${1:?usage: research/detector_search.sh PREPARED_DIR [OUT_DIR] [SECONDS] [DEVICE] [WEIGHTS]}"
OUT="${2:-runs/detector-search}"
LIMIT="${3:-3600}"
DEVICE="${4:-cuda}"
WEIGHTS="${5:-imagenet}"
CONFIGS="${CONFIGS:-research/configs/detector-search}"
PY="${PYTHON:-.venv/bin/python}"
mkdir -p "$OUT"
export OMP_NUM_THREADS=2 PYTHONUNBUFFERED=1
for config in "$CONFIGS"/*.yaml; do
  name=$(basename "$config" .yaml)
  merged="$OUT/$name.config.yaml"
  "$PY" - configs/detector.yaml "$config" "$WEIGHTS" >"$merged" <<'PY'
import sys, yaml
base = yaml.safe_load(open(sys.argv[1]))
base.update(yaml.safe_load(open(sys.argv[2])) or {})
base["weights"] = sys.argv[3]
print(yaml.safe_dump(base))
PY
  timeout "$LIMIT" "$PY" -m training train-detector --config "$merged" --prepared "$PREPARED" \
    --device "$DEVICE" --workers 2 --threads 2 --out-dir "$OUT" --name "$name" \
    >"$OUT/$name.log" 2>&1 &
done
wait
"$PY" - "$OUT" <<'PY'
import json, sys
from pathlib import Path

summary = {}
for card in sorted(Path(sys.argv[1]).glob("*/detector/detector_card.json")):
    c = json.loads(card.read_text())
    summary[card.parent.parent.name] = {
        "left_out": c["dataset"]["left_out"],
        "thresholds": c["thresholds"],
        "valid": c["metrics"]["valid"],
        "test_with_scale": c["metrics"]["test_with_scale"],
    }
print(json.dumps(summary, indent=1))
PY
