"""What training and serving share: network modules, preprocessing facts, the model card, Grad-CAM.

Nothing here imports FastAPI or training code, and nothing heavy runs at import time.
"""
