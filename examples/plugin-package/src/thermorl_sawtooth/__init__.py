"""A sawtooth temperature: within each completion the temperature climbs from ``low`` to ``high`` over
``period`` tokens, then drops back to ``low`` (a toy schedule, here to show a controller living outside
thermorl). Registered as ``sawtooth`` with its config section ``temperature.sawtooth``."""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial

from torch import Tensor

from thermorl import (
    ConfigError,
    ControllerEnv,
    PerPosition,
    TemperatureController,
    doc,
    register_controller,
)


@dataclass
class SawtoothConfig:
    low: float = doc("Temperature at the start of each period.", 0.7)
    high: float = doc("Temperature reached at the end of each period.", 1.3)
    period: int = doc("Tokens per period.", 4)

    def validate(self) -> None:
        if not 0 < self.low <= self.high:
            raise ConfigError(f"temperature.sawtooth needs 0 < low <= high, got {self.low} and {self.high}")
        if self.period < 1:
            raise ConfigError(f"temperature.sawtooth.period must be >= 1, got {self.period}")

    def temperature_span(self) -> tuple[float, float]:
        """The lowest and highest temperature it samples at (thermorl checks them against the rollout clamp)."""
        return self.low, self.high


@register_controller("sawtooth", SawtoothConfig)
class SawtoothController(TemperatureController):
    """tau_t = low + (high - low) * (t mod period) / max(period - 1, 1)."""

    name = "sawtooth"

    def __init__(self, config: SawtoothConfig, env: ControllerEnv) -> None:
        self.config = config

    def sampling(self) -> PerPosition:
        """A per-position rule, which both engines run (vLLM in thermorl's logits processor)."""
        return PerPosition(partial(sawtooth, config=self.config))


def sawtooth(logits: Tensor, positions: Tensor, config: SawtoothConfig) -> Tensor:
    """tau_t of each row (B,) from its completion position t (B,); the logits (B, V) are not read."""
    phase = (positions % config.period).float() / max(config.period - 1, 1)
    return config.low + (config.high - config.low) * phase
