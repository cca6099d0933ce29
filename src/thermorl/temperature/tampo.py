"""TAMPO: temperature as a meta-policy over candidate temperatures (arXiv 2602.11779).

Inner loop: at ``start`` draw T_s from the top-p nucleus of pi(T) (one per batch, or one per
prompt group) and sample every token of those rows at T_s; GRPO then trains at T_s.
Outer loop (``after_update``): re-score the batch's own trajectories at every candidate
with the logits of the training forward pass and move pi towards the temperatures that make
high-advantage trajectories likely (equations in ``thermorl.algorithms.tampo``).

The controller owns its random generator, so its draws are reproducible from the run seed
and resume exactly from ``state_dict``. Under several processes the outer update sees the
global batch (every process's re-scored likelihoods and advantages, gathered), and per-group
draws are made for the global batch, each process taking its own groups' share, so pi and
the temperatures equal one process's on the same batch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from thermorl.algorithms.tampo import (
    candidate_loglikelihoods,
    likelihood_optimal_temperatures,
    tampo_outer_update,
    top_p_candidates,
)
from thermorl.config.fields import doc, positive, unit_interval
from thermorl.config.registry import CONTROLLERS
from thermorl.errors import ConfigError
from thermorl.temperature.base import ControllerEnv, PerRequest, TemperatureActions, TemperatureController


@dataclass
class TampoConfig:
    candidates: list[float] = doc(
        "Candidate temperatures T_k.", [0.6, 0.7, 0.8, 0.9, 1.0, 1.1, 1.2, 1.3, 1.4, 1.5]
    )
    top_p: float = doc("Top-p mass kept when drawing a candidate from the meta-policy.", 0.7)
    ema_alpha: float = doc("EMA rate of the temperature advantages A_bar.", 0.05)
    per_group: bool = doc("Draw one temperature per prompt group instead of one per batch.", False)
    rescore_chunk_tokens: int = doc(
        "Tokens re-scored at once by the outer update; its extra memory is about 2 x this x vocab floats.", 256
    )
    rescore_fused: bool = doc(
        "On CUDA, re-score all candidates in one torch.compile'd kernel (about 5x faster than eager on an H100); "
        "CPU always runs eager.",
        True,
    )

    def validate(self) -> None:
        positive(self, "rescore_chunk_tokens", section="temperature.tampo")
        if len(self.candidates) < 2:
            raise ConfigError("temperature.tampo.candidates needs at least 2 temperatures")
        if any(t <= 0 for t in self.candidates):
            raise ConfigError("temperature.tampo.candidates must all be > 0")
        unit_interval(self, "top_p", "ema_alpha", section="temperature.tampo")

    def temperature_span(self) -> tuple[float, float]:
        """The lowest and highest temperature this controller samples at (checked against the rollout clamp)."""
        return min(self.candidates), max(self.candidates)


@CONTROLLERS.register("tampo", TampoConfig)
class TampoController(TemperatureController):
    name = "tampo"
    needs_logits_after_update = True

    def __init__(self, config: TampoConfig, env: ControllerEnv) -> None:
        self.config = config
        self.device = env.device
        self.group_size = env.group_size if config.per_group else None
        self.gather_rows, self.rank, self.world_size = env.gather_rows, env.rank, env.world_size
        self.candidates = torch.tensor(config.candidates, dtype=torch.float32)
        self.abar = torch.zeros(len(self.candidates))  # EMA of the temperature advantages A_bar
        self.pi = torch.full((len(self.candidates),), 1.0 / len(self.candidates))
        self.generator = torch.Generator().manual_seed(env.seed)
        self.row_temperatures = torch.ones(1, device=self.device)  # T_s of every row of the last rollout
        self.last_batch_advantage = torch.zeros(len(self.candidates))  # A_B of the last batch
        self.tstar = (float("nan"), float("nan"))  # T* of the last batch's positive / negative trajectories

    def start(self, num_rows: int, training_step: int) -> None:
        """Draw T_s ~ top_p(pi): once for the batch, or once per prompt group."""
        global_rows = num_rows * self.world_size  # every process holds an equal share of whole groups
        draws = 1 if self.group_size is None else math.ceil(global_rows / self.group_size)
        nucleus = top_p_candidates(self.pi, self.config.top_p)
        chosen = torch.multinomial(nucleus, draws, replacement=True, generator=self.generator)
        per_row = chosen.repeat_interleave(self.group_size or global_rows)[:global_rows]
        own = per_row[self.rank * num_rows : (self.rank + 1) * num_rows]
        self.row_temperatures = self.candidates[own].to(self.device)

    def sampling(self) -> PerRequest:
        """T_s of each row, drawn by ``start``."""
        return PerRequest(self.row_temperatures)

    @torch.no_grad()
    def after_update(
        self, actions: TemperatureActions, advantages: Tensor, mask: Tensor, tokens: Tensor, logits: Tensor | None
    ) -> None:
        """The outer update on this batch's trajectories, re-scored at every candidate."""
        if logits is None:
            raise RuntimeError("TAMPO's outer update needs the logits of the training forward pass")
        fused = self.config.rescore_fused and logits.is_cuda
        loglik = candidate_loglikelihoods(
            logits, tokens, mask, self.candidates, self.config.rescore_chunk_tokens, fused
        )
        # the global batch: (N, K) likelihoods and (N,) advantages of every process, gathered
        loglik, advantages = self.gather_rows(loglik).cpu(), self.gather_rows(advantages).cpu()
        self.abar, self.pi, self.last_batch_advantage = tampo_outer_update(
            self.abar, loglik, advantages, self.config.ema_alpha
        )
        self.tstar = likelihood_optimal_temperatures(loglik, advantages, self.candidates)

    def metrics(self) -> dict[str, Any]:
        """Chosen temperature of the last rollout and pi after the last outer update (used next step)."""
        values: dict[str, Any] = {
            "tampo_temperature": round(self.row_temperatures.mean().item(), 6),
            "tampo_distribution": [round(p, 6) for p in self.pi.tolist()],
            "tampo_abar": [round(a, 6) for a in self.abar.tolist()],
            "tampo_batch_advantage": [round(a, 6) for a in self.last_batch_advantage.tolist()],
        }
        for name, value in zip(("tampo_tstar_positive", "tampo_tstar_negative"), self.tstar):
            if value == value:  # NaN (no such trajectory) is not logged
                values[name] = value
        if self.group_size is not None:
            group_temperatures = self.row_temperatures[:: self.group_size].tolist()
            values["tampo_group_temperatures"] = [round(t, 6) for t in group_temperatures]
        return values

    def state_dict(self) -> dict[str, Any]:
        return {
            "tampo.abar": self.abar.clone(),
            "tampo.pi": self.pi.clone(),
            "tampo.generator": self.generator.get_state(),
            "candidates": list(self.config.candidates),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if list(state["candidates"]) != list(self.config.candidates):
            raise ConfigError(
                f"checkpoint TAMPO candidates {state['candidates']} differ from the config's {self.config.candidates}"
            )
        self.abar = state["tampo.abar"].float().cpu().clone()
        self.pi = state["tampo.pi"].float().cpu().clone()
        if "tampo.generator" in state:  # load_for_eval leaves random streams out: evaluation keeps the run seed's
            self.generator.set_state(state["tampo.generator"].cpu())
