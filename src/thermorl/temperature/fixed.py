"""The baseline every RL library uses: one temperature for every token of every step."""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

from thermorl.config.fields import doc, temperatures
from thermorl.config.registry import CONTROLLERS
from thermorl.temperature.base import ControllerEnv, StepContext, TemperatureActions, TemperatureController, full


@dataclass
class FixedConfig:
    temperature: float = doc("Sampling temperature for every token.", 1.0)

    def validate(self) -> None:
        temperatures(self, "temperature", section="temperature.fixed")

    def temperature_span(self) -> tuple[float, float]:
        """The lowest and highest temperature this controller samples at (checked against the rollout clamp)."""
        return self.temperature, self.temperature


@CONTROLLERS.register("fixed", FixedConfig)
class FixedController(TemperatureController):
    name = "fixed"

    def __init__(self, config: FixedConfig, env: ControllerEnv) -> None:
        self.temperature = config.temperature

    def choose(self, ctx: StepContext) -> tuple[Tensor, TemperatureActions]:
        return full(ctx, self.temperature), TemperatureActions()
