"""User-facing errors: the CLI prints their message on one line and exits with code 2."""


class ThermoRLError(Exception):
    """A problem with the user's input (config, data, model path, reward function, output dir)."""


class ConfigError(ThermoRLError):
    """An invalid configuration value; the message names the field."""


class DataError(ThermoRLError):
    """Unreadable or malformed task data."""


class ModelLoadError(ThermoRLError):
    """A model or tokenizer that cannot be loaded."""


class RewardError(ThermoRLError):
    """A reward function that raised, hung, or returned invalid values."""
