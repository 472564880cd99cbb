"""Train the cell detector (core/detect/learned.py) on labelled fields from several laboratories.

`python -m training train-detector --config configs/detector.yaml` reads the fields (YOLO sets
with boxes around every red cell, white cell and platelet; Chula's red-cell points on its fully
labelled smears), brings each to the detector's working scale (a red cell ~20 px across), and
trains on random crops with strong augmentation: scale 0.7-1.4x, flips and quarter turns, stain
jitter in haematoxylin-eosin-DAB space, hue, saturation, brightness, contrast and gamma, blur and
JPEG. Losses: CenterNet's focal loss on the centre heatmaps (on Chula fields only the red-cell
map: its white cells and platelets are not labelled) and an L1 loss on log box sizes at the
centres of boxed objects. The per-kind thresholds are chosen on the validation fields. The run
folder gets the detector (detector_state.pt + detector_card.json, sha256 inside), its history
and validation figures; `export-detector` publishes it under models/.

One stage a module: `config`, `data` (the labelled fields, as samples at the working scale),
`transforms`, `engine` (network, losses, loop), `evaluate` (matching and figures, as
`evaluate-detector` reports them; thresholds, size calibration) and `export`.
"""
