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
from thermorl.config.plugins import PluginError, load_plugins
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
from thermorl.errors import ConfigError

__all__ = [
    "ADVANTAGES", "AGGREGATIONS", "CONTROLLERS", "ENGINES", "MAX_TASK_NUMBER", "POLICY_LOSSES", "TASKS",
    "AlgorithmConfig", "Config", "LogConfig", "ModelConfig", "RolloutConfig", "TaskConfig",
    "PluginError", "TemperatureConfig", "TrainConfig", "VLLMConfig", "build_config", "doc", "dump_config", "field_help",
    "from_dict", "load_config", "load_plugins", "to_dict",
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


def load_config(
    path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = (), plugins: list[str] | tuple[str, ...] = ()
) -> Config:
    """A validated :class:`Config` from an optional YAML file, ``section.field=value`` overrides and plug-ins.

    The plug-ins (the file's ``plugins`` list, then ``plugins``: module names or ``.py`` files) are imported
    first, so the controllers, tasks, engines or losses they register can be named and configured.
    Raises :class:`~thermorl.errors.ConfigError` naming the bad field (``PluginError`` naming a broken plug-in).
    """
    return build_config(loader.read_raw(path, overrides), plugins)


def build_config(raw: dict[str, Any], plugins: list[str] | tuple[str, ...] = ()) -> Config:
    """A validated :class:`Config` from a nested dict (YAML's layout), after importing its and ``plugins``' modules."""
    raw = dict(raw)
    listed = raw.get("plugins") or []
    if not isinstance(listed, list):
        raise ConfigError(f"plugins must be a list of module names or .py files, got {listed!r}")
    raw["plugins"] = list(dict.fromkeys(  # a file by its absolute path: a resumed run finds it from anywhere
        str(Path(spec).expanduser().resolve()) if isinstance(spec, str) and spec.endswith(".py") else spec
        for spec in [*listed, *plugins]
    ))
    load_plugins(raw["plugins"])
    return from_dict(Config, raw).validate()


def field_help(cls: type = Config, prefix: str = "") -> list[tuple[str, str, Any]]:
    """(dotted name, help, default) for every leaf field: the source of ``thermorl config``."""
    return loader.field_help(cls, prefix)
