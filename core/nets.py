"""Kept so that learners pickled before the networks moved to core.classify.nets (and then to
core.backbones) still unpickle: export.pkl stores class paths (`core.nets.EfficientNetLiteBody`).
New code imports core.backbones."""

from core.backbones import AdaptiveConcatPool2d, EfficientNetLiteBody, Flatten

__all__ = ["AdaptiveConcatPool2d", "EfficientNetLiteBody", "Flatten"]
