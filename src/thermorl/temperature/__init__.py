"""Temperature controllers, one module each; each registers itself with its config section.

``CONTROLLERS`` (``thermorl.config.registry``) maps a name to its controller class and config
dataclass; ``build_controller`` builds the selected one from its own section only.
"""

from __future__ import annotations

from thermorl.config import TemperatureConfig
from thermorl.config.registry import CONTROLLERS
from thermorl.errors import ConfigError

from thermorl.temperature import fixed, linear, ead, entropy, tampo, introspective, by_class, multitemp  # noqa: F401,E501  # isort: skip  (they register, in this order)
from thermorl.temperature.base import ControllerEnv, StepContext, TemperatureActions, TemperatureController


def build_controller(config: TemperatureConfig, env: ControllerEnv) -> TemperatureController:
    """The controller named by ``config.controller``, built from its own section."""
    if config.controller not in CONTROLLERS:
        raise ConfigError(
            f"temperature.controller {config.controller!r} is not available (have: {', '.join(CONTROLLERS)})"
        )
    return CONTROLLERS[config.controller].build(config.active(), env)


__all__ = [
    "CONTROLLERS", "ControllerEnv", "StepContext", "TemperatureActions", "TemperatureController", "build_controller",
]
