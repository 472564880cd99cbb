#!/usr/bin/env bash
# Reproduce models/detector (issue #11): train configs/detector.yaml on 2 CPU cores (the fields of
# ../shared/datasets: txl-pbc and Chula RBC-12), publish it, and measure it per source with and
# without a scale (research/results/detection/learned-test.*). RUN=runs/<name> publishes an existing run.
# Usage: [RUN=runs/detector] scripts/ship_detector.sh
set -euo pipefail
cd "$(dirname "$0")/.."
PY=.venv/bin/python
if [ -z "${RUN:-}" ]; then
  /usr/bin/time -v $PY -m training train-detector --config configs/detector.yaml --name detector
  RUN=runs/detector
fi
$PY -m training export-detector --run "$RUN" --name detector --overwrite \
  --note "Trained on a 2-core CPU with configs/detector.yaml (22 min wall for 40 epochs of 160-px crops at 0.38 um per pixel) on txl-pbc's bccd, bcd and raabin training fields (boxes) and Chula RBC-12's fully labelled training smears (red-cell points, sized by the classical segmentation where a point is alone in its region). Scales of txl-pbc derived from each source's median red-cell box (7.5 um). The service runs it with the nucleus check of core/detect/nucleus.py (a red detection darker and bluer than the field's red cells is a white cell). Figures per source, with and without a scale: docs/detection.md." \
  --note "Data: txl-pbc (github lugan113/TXL-PBC_Dataset, MIT licence) and Chula RBC-12 (Naruenatthanaset et al., arXiv:2012.01321, MIT licence)."
$PY -m training evaluate-detector --yolo ../shared/datasets/txl-pbc \
  --chula ../shared/datasets/chula-rbc-12 --detector models/detector \
  --out research/results/detection/learned-test.json
