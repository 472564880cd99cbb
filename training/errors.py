"""Domain errors of the training pipeline. The CLI turns them into one clear line and exit code 2."""


class TrainingError(Exception):
    """Base class: something the user can fix (bad data, bad config, missing weights)."""


class DataError(TrainingError):
    """A data folder or label file is unusable, or nothing usable is left after skipping bad parts."""


class WeightsUnavailableError(TrainingError):
    """Pretrained weights were asked for but cannot be had; the message says how to provide them."""


class ConfigError(TrainingError):
    """A configuration value is missing or invalid."""
