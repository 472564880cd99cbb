"""What training and serving share, in the order a field goes through it:

- `imageio`: the one image-decoding path (header checks before pixels, caps, 16-bit, EXIF turn);
- `detect`: finding cells in a field (`learned` detector, `classical` fallback);
- `classify`: one red cell to a class (networks, preprocessing, test-time views, Grad-CAM,
  the predictor);
- `smear`: a field end to end, and the one place counting and grading live;
- `modelcard`: the model cards and the hash-checked, tensors-only loading both models go through.

Nothing here imports FastAPI or training code, and nothing heavy runs at import time.
"""
