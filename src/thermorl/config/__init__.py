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
from thermorl.config.fields import doc
from thermorl.config.loader import dump_config, from_dict, to_dict
from thermorl.config.registry import ADVANTAGES, AGGREGATIONS, CONTROLLERS, ENGINES, POLICY_LOSSES, TASKS
from thermorl.config.schema import (
    MAX_TASK_NUMBER,
    AlgorithmConfig,
    Config,
    LogConfig,
    ModelConfig,
    RolloutConfig,
    TaskConfig,
    TemperatureConfig,
    TrainConfig,
)

__all__ = [
    "ADVANTAGES", "AGGREGATIONS", "CONTROLLERS", "ENGINES", "MAX_TASK_NUMBER", "POLICY_LOSSES", "TASKS",
    "AlgorithmConfig", "Config", "LogConfig", "ModelConfig", "RolloutConfig", "TaskConfig",
    "TemperatureConfig", "TrainConfig", "VLLMConfig", "doc", "dump_config", "field_help", "from_dict", "load_config",
    "to_dict",
]


_CONTROLLER_SECTIONS = {  # the built-in controllers' sections, defined in their files (thermorl.temperature.*)
    "FixedConfig": "fixed", "LinearConfig": "linear", "EADConfig": "ead", "EntropyConfig": "entropy",
    "TampoConfig": "tampo", "IntrospectiveConfig": "introspective",
}


_ENGINE_SECTIONS = {"VLLMConfig": "vllm"}  # the built-in engines' sections, defined in their files (thermorl.engines.*)


def __getattr__(name: str) -> Any:
    """``from thermorl.config import FixedConfig`` etc.: the config class a built-in controller (or engine) registered."""
    if name in _CONTROLLER_SECTIONS:
        return CONTROLLERS[_CONTROLLER_SECTIONS[name]].config
    if name in _ENGINE_SECTIONS:
        return ENGINES[_ENGINE_SECTIONS[name]].config
    raise AttributeError(f"module 'thermorl.config' has no attribute {name!r}")


def load_config(path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """Build a validated Config from an optional YAML file and ``a.b=value`` overrides."""
    return from_dict(Config, loader.read_raw(path, overrides)).validate()


def field_help(cls: type = Config, prefix: str = "") -> list[tuple[str, str, Any]]:
    """(dotted name, help, default) for every leaf field: the source of ``thermorl config``."""
    return loader.field_help(cls, prefix)
