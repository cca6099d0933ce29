"""Entropy-adaptive temperature, EDT (Zhang et al. 2024, arXiv 2403.14541).

EDT's rule is tau = tau0 * N ** (theta / H), with H the entropy of the untempered next-token
distribution and 0 < N < 1: confident steps (small H) get a temperature near 0, uncertain
steps approach tau0. Clamped to [tau_min, tau_max] so no step is ever greedy or unbounded.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial

import torch
from torch import Tensor

from thermorl.config.fields import doc, temperatures
from thermorl.config.registry import CONTROLLERS
from thermorl.errors import ConfigError
from thermorl.temperature.base import ControllerEnv, PerPosition, TemperatureController


def edt_temperature(entropy: Tensor, config: EntropyConfig) -> Tensor:
    """tau = clamp(tau0 * N ** (theta / H), tau_min, tau_max), elementwise over H (nats)."""
    exponent = config.theta / entropy.clamp_min(1e-6)
    tau = config.base * torch.pow(torch.as_tensor(config.n, dtype=entropy.dtype), exponent)
    return tau.clamp(config.tau_min, config.tau_max)


def logits_entropy(logits: Tensor) -> Tensor:
    """Entropy (nats) of softmax(logits) over the last dimension."""
    logp = torch.log_softmax(logits, dim=-1)
    return -(logp.exp() * logp).sum(-1)


def edt_rule(logits: Tensor, positions: Tensor, config: EntropyConfig) -> Tensor:
    """The per-position rule (``PerPosition``): EDT's temperature from each row's untempered logits."""
    return edt_temperature(logits_entropy(logits), config)


@dataclass
class EntropyConfig:
    base: float = doc("tau0 in EDT's rule tau = tau0 * N ** (theta / H).", 1.0)
    theta: float = doc("theta in EDT's rule; larger means cooler at a given entropy H.", 0.8)
    n: float = doc("Base N of EDT's rule (the paper uses 0.8).", 0.8)
    tau_min: float = doc("Lower clamp of the temperature.", 0.3)
    tau_max: float = doc("Upper clamp of the temperature.", 1.5)

    def validate(self) -> None:
        temperatures(self, "base", "tau_min", "tau_max", section="temperature.entropy")
        if not 0 < self.n < 1:
            raise ConfigError(f"temperature.entropy.n must be in (0, 1), got {self.n}")

    def temperature_span(self) -> tuple[float, float]:
        """The lowest and highest temperature this controller samples at (checked against the rollout clamp)."""
        return self.tau_min, self.tau_max


@CONTROLLERS.register("entropy", EntropyConfig)
class EntropyController(TemperatureController):
    name = "entropy"
    decodes_at_inference = True  # EDT is a decoding rule

    def __init__(self, config: EntropyConfig, env: ControllerEnv) -> None:
        self.config = config

    def sampling(self) -> PerPosition:
        return PerPosition(partial(edt_rule, config=self.config))
