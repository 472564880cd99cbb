"""Domain errors of the training pipeline; the CLI prints them as one line and exits with 2."""


class TrainingError(Exception):
    """Base class: something the user can fix (bad data, bad config, missing weights)."""


class DataError(TrainingError):
    """A data folder or label file is unusable, or nothing usable is left after skipping."""


class WeightsUnavailableError(TrainingError):
    """Pretrained weights were asked for but cannot be had; the message says how to provide them."""


class ConfigError(TrainingError):
    """A configuration value is missing or invalid."""
