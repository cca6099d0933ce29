"""``by_class``: a fixed temperature per token class, the class of the next token read from the prefix.

The task supplies the rule (``Task.token_class_rule``; countdown: 'result' inside a step's result, after
its '=' up to the ',' or end that closes it, 'choice' everywhere else). Nothing is learned: this is the
positive control for a learned per-token policy. A grid over its temperatures is the oracle a learned
head should find (docs/RESULTS.md, the headroom map).

    tau_t = temperatures[c(y_<t)]   (default for a class not listed),  c = the task's class rule
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

import torch
from torch import Tensor

from thermorl.config.fields import doc, temperatures
from thermorl.config.registry import CONTROLLERS
from thermorl.errors import ConfigError
from thermorl.temperature.base import ControllerEnv, PerPosition, TemperatureController


def class_temperature(token_class: str, config: ByClassConfig) -> float:
    """tau = temperatures[token_class], or ``default`` for a class the config does not list."""
    return float(config.temperatures.get(token_class, config.default))


def by_class_rule(
    logits: Tensor, positions: Tensor, prefixes: list[list[int]], classify: Callable[[list[int]], str],
    config: ByClassConfig,
) -> Tensor:
    """The per-position rule (``PerPosition`` reading the prefix): each row's next-token class's temperature."""
    values = [class_temperature(classify(prefix), config) for prefix in prefixes]
    return torch.tensor(values, dtype=torch.float32, device=logits.device)


@dataclass
class ByClassConfig:
    temperatures: dict[str, float] = doc(
        "Temperature of each token class of the task (countdown: choice, result), e.g. "
        "--set temperature.by_class.temperatures.result=0.5.", {}
    )
    default: float = doc("Temperature of the classes `temperatures` does not list.", 1.0)

    def validate(self) -> None:
        temperatures(self, "default", section="temperature.by_class")
        for name, value in self.temperatures.items():
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
                raise ConfigError(f"temperature.by_class.temperatures.{name} must be a temperature > 0, got {value!r}")

    def temperature_span(self) -> tuple[float, float]:
        """The lowest and highest temperature this controller samples at (checked against the rollout clamp)."""
        values = [self.default, *map(float, self.temperatures.values())]
        return min(values), max(values)


@CONTROLLERS.register("by_class", ByClassConfig)
class ByClassController(TemperatureController):
    name = "by_class"

    def __init__(self, config: ByClassConfig, env: ControllerEnv) -> None:
        if env.next_token_class is None:
            raise ConfigError("temperature.controller=by_class needs a task with token classes (task.name=countdown)")
        unknown = sorted(set(config.temperatures) - set(env.token_classes))
        if unknown:
            raise ConfigError(
                f"temperature.by_class.temperatures.{unknown[0]}: the task has no token class {unknown[0]!r} "
                f"(it has: {', '.join(env.token_classes)})"
            )
        self.config = config
        self.classify = env.next_token_class

    def sampling(self) -> PerPosition:
        return PerPosition(partial(by_class_rule, classify=self.classify, config=self.config), reads_prefix=True)
