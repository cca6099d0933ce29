"""EAD, Exploratory Annealed Decoding (arXiv 2510.05251): hot early tokens, cool later ones.

Two forms are selectable; ``paper`` is the default because it is the one the paper states:

* paper: tau_t = 1.0 for t < c, else max(1 + tau_max - exp(t / d_s), tau_min),
  d_s = min(d_0 + a * step, d_max).
* code (the authors' run script): tau_t = max(1 + tau_max - exp(t / (20 d_s)), tau_min),
  d_s = min(25 + 5 * step, d_max), i.e. an effective d_0 of 500 growing 100 per step.

Both keep the first ``warmup_tokens`` (c = 10) at T = 1, as the released code does in every mode.

Training (``train_at``): ``sampled`` (default) scores each token at the temperature it was sampled
at, thermorl's exact-temperature rule, so the ratio is that of the policy that sampled; ``one`` is
the released code's choice: it optimises the T = 1 policy from the annealed samples, old log-probs
at T = 1, each token's loss weighted by min(pi_1(y_t) / pi_annealed(y_t), is_cap).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from thermorl.config import EADConfig
from thermorl.temperature.base import ControllerEnv, StepContext, TemperatureActions, TemperatureController, full


def ead_decay_scale(step: int, config: EADConfig) -> float:
    """d_s = min(d_0 + a * step, d_max) (paper) or min(25 + 5 * step, d_max) (code)."""
    if config.form == "code":
        return min(25.0 + 5.0 * step, config.d_max)
    return min(config.d0 + config.slope * step, config.d_max)


def ead_temperature(t: int, step: int, config: EADConfig) -> float:
    """Temperature of the t-th completion token at training step ``step`` (equations above)."""
    if t < config.warmup_tokens:
        return 1.0
    d_s = ead_decay_scale(step, config)
    if config.form == "code":
        return max(1.0 + config.tau_max - math.exp(t / (20.0 * d_s)), config.tau_min)
    return max(1.0 + config.tau_max - math.exp(t / d_s), config.tau_min)


class EADController(TemperatureController):
    name = "ead"
    decodes_at_inference = True

    def __init__(self, config: EADConfig, env: ControllerEnv) -> None:
        self.config = config
        self.step = 0
        self.is_cap = config.is_cap if config.train_at == "one" else None

    def training_temperatures(self, sampled: Tensor) -> Tensor:
        """T = 1 for every token with train_at=one, else the sampled temperatures."""
        return torch.ones_like(sampled) if self.config.train_at == "one" else sampled

    def start(self, num_rows: int, training_step: int) -> None:
        self.step = training_step

    def choose(self, ctx: StepContext) -> tuple[Tensor, TemperatureActions]:
        return full(ctx, ead_temperature(ctx.position, self.step, self.config)), TemperatureActions()

    def metrics(self) -> dict[str, float]:
        return {"ead_decay_scale": ead_decay_scale(self.step, self.config)}
