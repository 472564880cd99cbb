#!/usr/bin/env bash
# Recipe search for the default model (issue #3): every config in CONFIGS (default
# research/configs/search) trained at once on one GPU, then each run's valid and test metrics printed as
# one JSON object, then research/tta_ensemble.py on every finished run (test-time views and the
# ensemble of all of them).
# Choose on "valid"; "test" is only reported. The CPU recipe (research/configs/default-lite0.yaml) came
# from research/configs/search; research/configs/ceiling asks what lies beyond the CPU hour. See docs/comparison.md.
# Usage: [CONFIGS=research/configs/ceiling] research/recipe_search.sh DATA_DIR [OUT_DIR] [SECONDS_PER_RUN]
set -uo pipefail
cd "$(dirname "$0")/.."
DATA="${1:?usage: research/recipe_search.sh DATA_DIR [OUT_DIR] [SECONDS_PER_RUN]}"
OUT="${2:-runs/search}"
LIMIT="${3:-3600}"
CONFIGS="${CONFIGS:-research/configs/search}"
PY="${PYTHON:-.venv/bin/python}"
mkdir -p "$OUT"
# Two threads and two loader processes each: the runs share the machine's cores.
export OMP_NUM_THREADS=2 PYTHONUNBUFFERED=1 MPLBACKEND=Agg
for config in "$CONFIGS"/*.yaml; do
  name=$(basename "$config" .yaml)
  timeout "$LIMIT" "$PY" -m training fine-tune --config "$config" --data "$DATA" \
    --device cuda --workers 2 --out-dir "$OUT" --name "$name" \
    >"$OUT/$name.log" 2>&1 &
done
wait
"$PY" - "$OUT" <<'PY'
import json, sys
from pathlib import Path

summary = {}
for metrics in sorted(Path(sys.argv[1]).glob("*/metrics.json")):
    summary[metrics.parent.name] = {
        r["split"]: {
            "accuracy": r["accuracy"],
            "macro_f1": r["macro_f1"],
            "recall": {k: v["recall"] for k, v in r["per_class"].items()},
        }
        for r in json.loads(metrics.read_text())
    }
print(json.dumps(summary, indent=1))
PY
models=$(ls -d "$OUT"/*/model 2>/dev/null)
if [ -n "$models" ]; then
  "$PY" research/tta_ensemble.py --data "$DATA" --save-probs "$OUT/probs" $models
fi
