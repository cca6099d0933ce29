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
from dataclasses import dataclass
from functools import partial
from typing import Literal

import torch
from torch import Tensor

from thermorl.config.fields import doc, positive, temperatures
from thermorl.config.registry import CONTROLLERS
from thermorl.errors import ConfigError
from thermorl.temperature.base import ControllerEnv, PerPosition, TemperatureController


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


def ead_rule(logits: Tensor, positions: Tensor, step: int, config: EADConfig) -> Tensor:
    """The per-position rule (``PerPosition``): ``ead_temperature`` at each row's completion position."""
    values = [ead_temperature(int(t), step, config) for t in positions.tolist()]
    return torch.tensor(values, dtype=torch.float32, device=logits.device)


@dataclass
class EADConfig:
    form: Literal["paper", "code"] = doc(
        "'paper': tau_t = max(1 + tau_max - exp(t / d_s), tau_min), d_s = min(d0 + a*step, d_max); "
        "'code': the authors' released script, tau_t = max(1 + tau_max - exp(t / (20 d_s)), tau_min), "
        "d_s = min(25 + 5*step, d_max).",
        "paper",
    )
    tau_max: float = doc("Peak temperature at the start of a completion.", 1.2)
    tau_min: float = doc("Floor temperature late in a completion.", 0.1)
    warmup_tokens: int = doc(
        "Tokens decoded at temperature 1.0 before annealing starts (c), in both forms (the authors' code keeps them "
        "in every mode).", 10
    )
    d0: float = doc("Initial decay scale d_0 ('paper' form).", 200.0)
    slope: float = doc("Growth of the decay scale per training step (a).", 5.0)
    d_max: float = doc("Cap of the decay scale.", 4e4)
    train_at: Literal["sampled", "one"] = doc(
        "'sampled': the training ratio scores every token at the annealed temperature it was sampled at (thermorl's "
        "exact-temperature rule); 'one': the authors' released code, which optimises the T = 1 policy from the "
        "annealed samples (old log-probs at T = 1) with truncated importance weights "
        "min(pi_1(y) / pi_annealed(y), is_cap).",
        "sampled",
    )
    is_cap: float = doc("train_at=one: cap C of the truncated importance weight min(exp(logp_T1 - logp_sample), C).", 2.0)

    def validate(self) -> None:
        temperatures(self, "tau_max", "tau_min", section="temperature.ead")
        if self.tau_min > self.tau_max:
            raise ConfigError("temperature.ead.tau_min must be <= temperature.ead.tau_max")
        positive(self, "d0", "d_max", "is_cap", section="temperature.ead")
        if self.warmup_tokens < 0:
            raise ConfigError(f"temperature.ead.warmup_tokens must be >= 0, got {self.warmup_tokens}")

    def temperature_span(self) -> tuple[float, float]:
        """The lowest and highest temperature this controller samples at (checked against the rollout clamp):
        the floor, and the peak or the warm-up's 1.0."""
        return min(self.tau_min, 1.0), max(self.tau_max, 1.0)


@CONTROLLERS.register("ead", EADConfig)
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

    def sampling(self) -> PerPosition:
        return PerPosition(partial(ead_rule, step=self.step, config=self.config))

    def metrics(self) -> dict[str, float]:
        return {"ead_decay_scale": ead_decay_scale(self.step, self.config)}
