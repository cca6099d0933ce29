"""The baseline every RL library uses: one temperature for every token of every step."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from thermorl.config.fields import doc, temperatures
from thermorl.config.registry import CONTROLLERS
from thermorl.temperature.base import ControllerEnv, PerRequest, TemperatureController


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

    def sampling(self) -> PerRequest:
        return PerRequest(torch.tensor([float(self.temperature)]))
