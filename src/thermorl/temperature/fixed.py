"""The baseline every RL library uses: one temperature for every token of every step."""

from __future__ import annotations

from torch import Tensor

from thermorl.config import FixedConfig
from thermorl.temperature.base import ControllerEnv, StepContext, TemperatureActions, TemperatureController, full


class FixedController(TemperatureController):
    name = "fixed"

    def __init__(self, config: FixedConfig, env: ControllerEnv) -> None:
        self.temperature = config.temperature

    def choose(self, ctx: StepContext) -> tuple[Tensor, TemperatureActions]:
        return full(ctx, self.temperature), TemperatureActions()
