"""What training and serving share, in layers (each imports only those below it; checked in CI by
`lint-imports`, pyproject.toml):

- `smear`: a field end to end, the one place counting and grading live, and the framing of
  single-cell images (brought to the training scale around their cell);
- `detect` and `classify`, beside each other (neither imports the other): finding cells in a
  field (`learned` detector, `classical` fallback), and one red cell to a class (the thesis head,
  preprocessing, test-time views, Grad-CAM, calibration, the predictor);
- the ground: `imageio` (the one image-decoding path: header checks before pixels, caps, 16-bit,
  EXIF turn), `modelcard` (the model cards and the hash-checked, tensors-only loading both models
  go through), `backbones` (the architecture registry and the bodies both models stand on;
  `nets` is its alias for old pickles).

Nothing here imports FastAPI or training code, and nothing heavy runs at import time.
"""
