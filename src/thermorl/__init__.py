"""thermorl: RL from verifiable rewards where the language model learns its own sampling temperature.

The public Python API (these names are kept across releases; everything else may move)::

    import thermorl

    config = thermorl.make_config(temperature={"controller": "ead"}, train={"steps": 50})
    summary = thermorl.train(config, "runs/ead")
    print(thermorl.evaluate("runs/ead", k=8)["greedy_accuracy"])

- configure: :func:`load_config` (YAML + ``--set`` strings), :func:`make_config` (keyword arguments),
  :class:`Config`;
- run: :func:`train`, :func:`evaluate`, :func:`generate` (:class:`Generation`), :func:`compare`;
- extend: :func:`register_controller`, :func:`register_task`, :func:`register_engine`,
  :func:`register_policy_loss`, :func:`register_reward` (or an installed package's entry points, or
  :func:`load_plugins` for a module or ``.py`` file), and the types a plug-in implements:
  :class:`TemperatureController` and the sampling plan its ``sampling()`` returns (:class:`PerRequest`,
  :class:`PerPosition`, :class:`InModelHead`: what lets every engine run it), :class:`StepContext`,
  :class:`TemperatureActions`, :class:`ControllerEnv`,
  :class:`Task`, :class:`Problem`, :class:`RolloutEngine`, :class:`RolloutBatch`, :class:`PolicyLoss`, and
  :func:`doc` (a documented config field);
- errors: :class:`ThermoRLError` and its :class:`ConfigError`, :class:`PluginError`.

``import thermorl`` imports none of these (nor torch): each loads on first use.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_PUBLIC = {  # name -> the module that defines it
    "Config": "thermorl.config.schema",
    "load_config": "thermorl.config",
    "make_config": "thermorl.api",
    "train": "thermorl.api",
    "evaluate": "thermorl.api",
    "generate": "thermorl.api",
    "Generation": "thermorl.api",
    "compare": "thermorl.api",
    "register_controller": "thermorl.config.registry",
    "register_task": "thermorl.config.registry",
    "register_engine": "thermorl.config.registry",
    "register_policy_loss": "thermorl.config.registry",
    "register_reward": "thermorl.config.registry",
    "load_plugins": "thermorl.config.plugins",
    "TemperatureController": "thermorl.temperature.base",
    "PerRequest": "thermorl.temperature.base",
    "PerPosition": "thermorl.temperature.base",
    "InModelHead": "thermorl.temperature.base",
    "StepContext": "thermorl.temperature.base",
    "TemperatureActions": "thermorl.temperature.base",
    "ControllerEnv": "thermorl.temperature.base",
    "Task": "thermorl.tasks.base",
    "Problem": "thermorl.tasks.base",
    "RolloutEngine": "thermorl.engines.base",
    "RolloutBatch": "thermorl.engines.base",
    "PolicyLoss": "thermorl.algorithms.policy_loss",
    "doc": "thermorl.config.fields",
    "ThermoRLError": "thermorl.errors",
    "ConfigError": "thermorl.errors",
    "PluginError": "thermorl.config.plugins",
}

__all__ = ["__version__", *_PUBLIC]


def __getattr__(name: str) -> Any:
    """Load a public name from its module on first use (keeps ``import thermorl`` cheap)."""
    if name in _PUBLIC:
        value = getattr(importlib.import_module(_PUBLIC[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'thermorl' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)


if TYPE_CHECKING:  # for type checkers and IDEs; at run time __getattr__ loads these lazily
    from thermorl.algorithms.policy_loss import PolicyLoss
    from thermorl.api import Generation, compare, evaluate, generate, make_config, train
    from thermorl.config import load_config
    from thermorl.config.fields import doc
    from thermorl.config.plugins import PluginError, load_plugins
    from thermorl.config.registry import (
        register_controller,
        register_engine,
        register_policy_loss,
        register_reward,
        register_task,
    )
    from thermorl.config.schema import Config
    from thermorl.engines.base import RolloutBatch, RolloutEngine
    from thermorl.errors import ConfigError, ThermoRLError
    from thermorl.tasks.base import Problem, Task
    from thermorl.temperature.base import (
        ControllerEnv,
        InModelHead,
        PerPosition,
        PerRequest,
        StepContext,
        TemperatureActions,
        TemperatureController,
    )
