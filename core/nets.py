"""Kept so that learners pickled before the networks moved to core.classify.nets still unpickle:
export.pkl stores class paths (`core.nets.EfficientNetLiteBody`).
New code imports core.classify.nets."""

from core.classify.nets import AdaptiveConcatPool2d, EfficientNetLiteBody, Flatten

__all__ = ["AdaptiveConcatPool2d", "EfficientNetLiteBody", "Flatten"]
