"""Linear schedule over training: the TAMPO paper's baseline (0.9 -> 1.5 in its notation)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from thermorl.config.fields import doc, temperatures
from thermorl.config.registry import CONTROLLERS
from thermorl.temperature.base import ControllerEnv, PerRequest, TemperatureController


def linear_temperature(step: int, total_steps: int, start: float, end: float) -> float:
    """tau(step) = start + (end - start) * (step - 1) / (total_steps - 1) for training steps 1..total_steps.

    The first GRPO step samples at ``start`` and the last at ``end``; step 0 (the initial
    evaluation) is clamped to ``start``.
    """
    if total_steps <= 1:
        return start
    fraction = min(max((step - 1) / (total_steps - 1), 0.0), 1.0)
    return start + (end - start) * fraction


@dataclass
class LinearConfig:
    start: float = doc("Temperature of the first GRPO step (and of the initial evaluation).", 0.9)
    end: float = doc("Temperature at the last training step.", 1.5)

    def validate(self) -> None:
        temperatures(self, "start", "end", section="temperature.linear")

    def temperature_span(self) -> tuple[float, float]:
        """The lowest and highest temperature this controller samples at (checked against the rollout clamp)."""
        return min(self.start, self.end), max(self.start, self.end)


@CONTROLLERS.register("linear", LinearConfig)
class LinearController(TemperatureController):
    name = "linear"

    def __init__(self, config: LinearConfig, env: ControllerEnv) -> None:
        self.config = config
        self.total_steps = env.total_steps
        self.current = config.start

    def start(self, num_rows: int, training_step: int) -> None:
        self.current = linear_temperature(training_step, self.total_steps, self.config.start, self.config.end)

    def sampling(self) -> PerRequest:
        return PerRequest(torch.tensor([float(self.current)]))

    def metrics(self) -> dict[str, float]:
        return {"linear_temperature": self.current}
