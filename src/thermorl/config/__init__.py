"""Typed configuration: one dataclass per concern, every field documented.

A run is described by :class:`Config`. It loads from YAML, accepts dotted
``--set section.field=value`` overrides, and is validated on load: unknown
keys, wrong types and out-of-range values raise :class:`ConfigError` whose
message names the offending field (``rollout.group_size must be >= 2, got 1``).
The sections live in ``schema.py``, the YAML / type engine in ``loader.py``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from thermorl.config import loader
from thermorl.config.loader import dump_config, from_dict, to_dict
from thermorl.config.schema import (
    MAX_TASK_NUMBER,
    AlgorithmConfig,
    Config,
    EADConfig,
    EntropyConfig,
    FixedConfig,
    IntrospectiveConfig,
    LinearConfig,
    LogConfig,
    ModelConfig,
    RolloutConfig,
    TampoConfig,
    TaskConfig,
    TemperatureConfig,
    TrainConfig,
    VLLMConfig,
    doc,
)

__all__ = [
    "MAX_TASK_NUMBER", "AlgorithmConfig", "Config", "EADConfig", "EntropyConfig", "FixedConfig",
    "IntrospectiveConfig", "LinearConfig", "LogConfig", "ModelConfig", "RolloutConfig", "TampoConfig", "TaskConfig",
    "TemperatureConfig", "TrainConfig", "VLLMConfig", "doc", "dump_config", "field_help", "from_dict", "load_config", "to_dict",
]


def load_config(path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """Build a validated Config from an optional YAML file and ``a.b=value`` overrides."""
    return from_dict(Config, loader.read_raw(path, overrides)).validate()


def field_help(cls: type = Config, prefix: str = "") -> list[tuple[str, str, Any]]:
    """(dotted name, help, default) for every leaf field: the source of ``thermorl config``."""
    return loader.field_help(cls, prefix)
