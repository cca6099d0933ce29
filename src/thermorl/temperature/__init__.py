"""Temperature controllers by name; each receives only its own config section."""

from __future__ import annotations

from thermorl.config import TemperatureConfig
from thermorl.temperature.base import ControllerEnv, StepContext, TemperatureController
from thermorl.temperature.ead import EADController
from thermorl.temperature.entropy import EntropyController
from thermorl.temperature.fixed import FixedController
from thermorl.temperature.introspective import IntrospectiveController
from thermorl.temperature.linear import LinearController
from thermorl.temperature.tampo import TampoController

CONTROLLERS: dict[str, type[TemperatureController]] = {
    "fixed": FixedController,
    "linear": LinearController,
    "ead": EADController,
    "entropy": EntropyController,
    "tampo": TampoController,
    "introspective": IntrospectiveController,
}


def build_controller(config: TemperatureConfig, env: ControllerEnv) -> TemperatureController:
    """The controller named by ``config.controller``, built from its own section."""
    if config.controller not in CONTROLLERS:
        from thermorl.errors import ConfigError

        raise ConfigError(
            f"temperature.controller {config.controller!r} is not available (have: {', '.join(CONTROLLERS)})"
        )
    return CONTROLLERS[config.controller](getattr(config, config.controller), env)


__all__ = ["CONTROLLERS", "ControllerEnv", "StepContext", "TemperatureController", "build_controller"]
