"""The cell detector's training pipeline, one stage a module (training/detector.py is its
import point)."""
