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


class CheckpointError(ThermoRLError):
    """A checkpoint that cannot be written (e.g. disk full) or no valid checkpoint to resume from."""


class EngineError(ThermoRLError):
    """The rollout engine failed (e.g. vLLM raised while starting, sampling or loading weights): the run
    stops at its newest checkpoint, and a new run without one leaves no run directory behind."""


class TrainingDivergedError(ThermoRLError):
    """Too many consecutive steps with non-finite logits, loss or gradients."""


class NonFiniteError(ArithmeticError):
    """NaN or inf in logits, temperatures, loss or gradients; the trainer skips the step."""
