#!/usr/bin/env bash
# Measure a detector as the shipped one is measured before it may replace it (issue #11): every
# source's test fields with and without a scale, with and without the nucleus check; the nucleus
# probe (does the shipped rule stay the one chosen?); the scale search against the shipped
# detector's; the shifts that a candidate recipe is meant to survive; Chula's test smears; speed.
# About 15 min on 2 cores, nothing else running. Results: research/results/detection/NAME-*.json (+ .md).
# Usage: scripts/measure_detector.sh DETECTOR_DIR NAME   (e.g. runs/detector-x/detector candidate-x)
set -euo pipefail
cd "$(dirname "$0")/.."
if [ $# -ne 2 ]; then
  echo "usage: $0 DETECTOR_DIR NAME" >&2
  exit 2
fi
DETECTOR=$1
NAME=$2
if [ ! -f "$DETECTOR/detector_card.json" ]; then
  echo "no exported detector at $DETECTOR (detector_card.json missing)" >&2
  exit 2
fi
PY=.venv/bin/python
YOLO=../shared/datasets/txl-pbc
CHULA=../shared/datasets/chula-rbc-12
OUT=docs/detection
step() { echo "== $NAME: $* ($(date +%T))" >&2; }

step "test fields, shipped nucleus rule"
$PY -m training evaluate-detector --yolo $YOLO --chula $CHULA --detector "$DETECTOR" \
  --out "$OUT/$NAME-test.json"
step "test fields, nucleus check off"
$PY -m training evaluate-detector --yolo $YOLO --chula $CHULA --detector "$DETECTOR" \
  --no-nucleus-rule --out "$OUT/$NAME-no-nucleus-test.json"
step "nucleus probe"
$PY research/nucleus_probe.py --detector "$DETECTOR" --out "$OUT/$NAME-nucleus-probe.json"
step "scale search, against the shipped detector"
$PY research/scale_search.py --detector "$DETECTOR" --compare models/detector \
  --out "$OUT/$NAME-scale-search.json"
step "shifts: defocus and compression"
$PY research/detector_shift.py --detector "$DETECTOR" --shifts clean,blur-1um,jpeg-5 \
  --without-scale clean,blur-1um --out "$OUT/$NAME-shift.json"
step "Chula's test smears"
$PY -m training evaluate-smears --data $CHULA --detector "$DETECTOR" \
  --out "$OUT/$NAME-smears.json"
step "speed: 640x480 fields end to end, against the classical segmentation"
$PY bench/bench_smear.py --chula $CHULA --detector "$DETECTOR" | tail -n 1 \
  > "$OUT/$NAME-bench-smear.json"
step done
