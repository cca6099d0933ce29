"""``multitemp``: Multi-Temperature RLVR (Zhuang et al. 2025, arXiv 2510.08892), token-level form.

High-entropy tokens ("reasoning" / forking tokens) are sampled hot, the rest ("knowledge" tokens) cold:

    tau_t = high  if H_t >= h*  else low,   H_t = entropy (nats) of the untempered next-token distribution

with the split h* either a fixed ``threshold`` (split=threshold) or, with split=quantile, the
``quantile``-th quantile of the untempered token entropies of the previous training batch (the first
rollout uses ``threshold``). quantile = 0.8 puts the top 20% of tokens in the hot class, the
proportion of forking tokens the entropy-minority papers report. The defaults (1.2 / 1.0) are thermorl's
choice: hot on high-entropy tokens, the base 1.0 elsewhere; the paper's own settings are not reproduced
here. Under data parallelism each process estimates the quantile from its own share of the batch.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from typing import Any, Literal

import torch
from torch import Tensor

from thermorl.config.fields import doc, temperatures
from thermorl.config.registry import CONTROLLERS
from thermorl.errors import ConfigError
from thermorl.temperature.base import ControllerEnv, PerPosition, TemperatureActions, TemperatureController
from thermorl.temperature.entropy import logits_entropy


def multitemp_temperature(entropy: Tensor, threshold: float, high: float, low: float) -> Tensor:
    """tau = high where H >= h*, else low, elementwise over H (nats)."""
    return torch.where(entropy >= threshold, torch.as_tensor(high), torch.as_tensor(low)).to(torch.float32)


def multitemp_rule(logits: Tensor, positions: Tensor, threshold: float, high: float, low: float) -> Tensor:
    """The per-position rule (``PerPosition``): ``multitemp_temperature`` of each row's untempered entropy."""
    return multitemp_temperature(logits_entropy(logits.float()), threshold, high, low).to(logits.device)


def entropy_quantile(entropies: Tensor, mask: Tensor, quantile: float) -> float:
    """h* = the ``quantile``-th quantile of the entropies of the masked (real) tokens."""
    values = entropies[mask.bool()].float()
    return float(torch.quantile(values, quantile)) if values.numel() else float("nan")


@dataclass
class MultiTempConfig:
    high: float = doc("Temperature of high-entropy tokens (H >= h*).", 1.2)
    low: float = doc("Temperature of the other tokens (H < h*).", 1.0)
    split: Literal["threshold", "quantile"] = doc(
        "'threshold': h* is `threshold`; 'quantile': h* is the `quantile`-th quantile of the previous training "
        "batch's untempered token entropies (the first rollout uses `threshold`).", "threshold"
    )
    threshold: float = doc("Entropy split h* in nats (split=threshold; the first rollout's with split=quantile).", 0.5)
    quantile: float = doc("split=quantile: the share of tokens below h* (0.8 = the top 20% run hot).", 0.8)

    def validate(self) -> None:
        temperatures(self, "high", "low", section="temperature.multitemp")
        if self.threshold < 0:
            raise ConfigError(f"temperature.multitemp.threshold must be >= 0 nats, got {self.threshold}")
        if not 0 < self.quantile < 1:
            raise ConfigError(f"temperature.multitemp.quantile must be in (0, 1), got {self.quantile}")

    def temperature_span(self) -> tuple[float, float]:
        """The lowest and highest temperature this controller samples at (checked against the rollout clamp)."""
        return min(self.high, self.low), max(self.high, self.low)


@CONTROLLERS.register("multitemp", MultiTempConfig)
class MultiTempController(TemperatureController):
    name = "multitemp"

    def __init__(self, config: MultiTempConfig, env: ControllerEnv) -> None:
        self.config = config
        self.threshold = config.threshold  # h*, moved after every update with split=quantile
        self.needs_logits_after_update = config.split == "quantile"
        self.hot_fraction = float("nan")

    def sampling(self) -> PerPosition:
        return PerPosition(partial(multitemp_rule, threshold=self.threshold, high=self.config.high, low=self.config.low))

    def after_update(
        self, actions: TemperatureActions, advantages: Tensor, mask: Tensor, tokens: Tensor, logits: Tensor | None
    ) -> None:
        if self.config.split != "quantile" or logits is None:
            return
        with torch.no_grad():
            entropies = logits_entropy(logits.detach().float())
            h = entropy_quantile(entropies, mask, self.config.quantile)
            if h == h:
                self.threshold = h
            self.hot_fraction = float((entropies[mask.bool()] >= self.threshold).float().mean())

    def metrics(self) -> dict[str, Any]:
        values: dict[str, Any] = {"multitemp_threshold": round(self.threshold, 6)}
        if self.hot_fraction == self.hot_fraction:
            values["multitemp_hot_fraction"] = round(self.hot_fraction, 6)
        return values

    def state_dict(self) -> dict[str, Any]:
        return {"threshold": self.threshold}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.threshold = float(state.get("threshold", self.config.threshold))
