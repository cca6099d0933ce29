"""Entropy-adaptive temperature, EDT (Zhang et al. 2024, arXiv 2403.14541).

EDT's rule is tau = tau0 * N ** (theta / H), with H the entropy of the untempered next-token
distribution and 0 < N < 1: confident steps (small H) get a temperature near 0, uncertain
steps approach tau0. Clamped to [tau_min, tau_max] so no step is ever greedy or unbounded.
"""

from __future__ import annotations

import torch
from torch import Tensor

from thermorl.config import EntropyConfig
from thermorl.temperature.base import ControllerEnv, StepContext, TemperatureActions, TemperatureController


def edt_temperature(entropy: Tensor, config: EntropyConfig) -> Tensor:
    """tau = clamp(tau0 * N ** (theta / H), tau_min, tau_max), elementwise over H (nats)."""
    exponent = config.theta / entropy.clamp_min(1e-6)
    tau = config.base * torch.pow(torch.as_tensor(config.n, dtype=entropy.dtype), exponent)
    return tau.clamp(config.tau_min, config.tau_max)


def logits_entropy(logits: Tensor) -> Tensor:
    """Entropy (nats) of softmax(logits) over the last dimension."""
    logp = torch.log_softmax(logits, dim=-1)
    return -(logp.exp() * logp).sum(-1)


class EntropyController(TemperatureController):
    name = "entropy"
    decodes_at_inference = True  # EDT is a decoding rule

    def __init__(self, config: EntropyConfig, env: ControllerEnv) -> None:
        self.config = config

    def choose(self, ctx: StepContext) -> tuple[Tensor, TemperatureActions]:
        return edt_temperature(logits_entropy(ctx.logits), self.config), TemperatureActions()
