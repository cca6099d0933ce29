"""Rollout correction: weights for tokens a rollout engine sampled from a distribution mu slightly unlike the
trainer's pi_old (vLLM's kernels, bf16, another numerics), and the mismatch metrics.

With delta_t = log pi_old(y_t) - log mu(y_t) on the generated tokens (m_t = 1) of a completion i:

  token level:     rho_t = exp(delta_t)
  sequence level:  rho_i = exp(sum_t m_t delta_t), the same for every token of completion i
  truncate (TIS):  w = min(max(rho, C_min), C_max)                 (Yao et al. 2025; TRL ``*_truncate``)
  mask (MIS):      w = rho * 1[C_min <= rho <= C_max]              (verl's MIS; TRL ``*_mask``)

Each token's policy-gradient term is multiplied by w (detached). The same functions weight the LM's tokens
and the temperature head's actions (delta_t from the head's log-probs), so both follow one convention.
These are the modes of TRL's ``vllm_importance_sampling_mode`` (token/sequence x truncate/mask, with
``vllm_importance_sampling_clip_min/max``) and verl's ``algorithm.rollout_correction`` (token TIS,
sequence-level IS, rejection masks); a bound of None is no bound.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
from torch import Tensor

Level = Literal["token", "sequence"]
Mode = Literal["truncate", "mask"]


def log_ratios(target_logprobs: Tensor, behaviour_logprobs: Tensor, mask: Tensor, level: Level) -> Tensor:
    """log rho, (N, T): delta_t = (log pi(y_t) - log mu(y_t)) m_t at token level; at sequence level
    sum_t delta_t of each row, broadcast over its tokens. Padding (m_t = 0) contributes 0."""
    delta = (target_logprobs.float() - behaviour_logprobs.float()) * mask
    if level == "token":
        return delta
    if level == "sequence":
        return delta.sum(-1, keepdim=True).expand_as(delta)
    raise ValueError(f"unknown rollout-correction level {level!r}")


def outside_bounds(log_rho: Tensor, lower: float | None, upper: float | None) -> Tensor:
    """1[rho < C_min or rho > C_max] as a float tensor, compared in log space (rho may overflow)."""
    outside = torch.zeros_like(log_rho, dtype=torch.bool)
    if upper is not None:
        outside |= log_rho > math.log(upper)
    if lower is not None:
        outside |= log_rho < (math.log(lower) if lower > 0 else -math.inf)
    return outside.float()


def truncated_weights(log_rho: Tensor, lower: float | None, upper: float | None) -> Tensor:
    """Truncated importance sampling (TIS): w = min(max(rho, C_min), C_max), detached."""
    return torch.exp(log_rho).clamp(min=lower, max=upper).detach()


def masked_weights(log_rho: Tensor, lower: float | None, upper: float | None) -> Tensor:
    """Masked importance sampling (MIS): w = rho * 1[C_min <= rho <= C_max], detached (0 where masked)."""
    return (torch.exp(log_rho) * (1.0 - outside_bounds(log_rho, lower, upper))).detach()


def correction_weights(
    target_logprobs: Tensor, behaviour_logprobs: Tensor, mask: Tensor, level: Level, mode: Mode,
    lower: float | None, upper: float | None,
) -> tuple[Tensor, Tensor]:
    """The weights w (N, T) of one mode (module docstring), 0 at padding, and the indicator (N, T) of the
    tokens whose ratio fell outside [C_min, C_max] (capped by truncate, zeroed by mask)."""
    log_rho = log_ratios(target_logprobs, behaviour_logprobs, mask, level)
    weigh = truncated_weights if mode == "truncate" else masked_weights
    if mode not in ("truncate", "mask"):
        raise ValueError(f"unknown rollout-correction mode {mode!r}")
    return weigh(log_rho, lower, upper) * mask, outside_bounds(log_rho, lower, upper) * mask


def mismatch_metrics(target_logprobs: Tensor, behaviour_logprobs: Tensor, mask: Tensor) -> dict[str, float]:
    """How far the engine's log-probs mu are from the trainer's pi over the generated tokens (m_t = 1):

      logprob_diff_mean / _max = mean / max |delta_t|;   log_ratio_mean = mean delta_t;
      ratio_max / _min = max / min exp(delta_t);
      kl_k3 = mean (exp(delta_t) - 1 - delta_t), the k3 estimate of KL(mu || pi) from mu's samples
      (Schulman 2020; verl's rollout-correction KL).
    Empty when no token is generated. Computed through ``mismatch_totals``, the form that adds up over
    micro-batches and processes (what the runtime logs).
    """
    return mismatch_from_totals(mismatch_totals(target_logprobs, behaviour_logprobs, mask))


# how each of mismatch_totals' values combines over parts of a batch (micro-batches, processes)
MISMATCH_TOTALS = {"tokens": "sum", "abs_sum": "sum", "sum": "sum", "k3_sum": "sum",
                   "abs_max": "max", "max": "max", "min": "min"}


def mismatch_totals(target_logprobs: Tensor, behaviour_logprobs: Tensor, mask: Tensor) -> dict[str, float]:
    """The sums and extremes behind ``mismatch_metrics`` over the generated tokens: the token count,
    sum |delta_t|, sum delta_t, sum (exp(delta_t) - 1 - delta_t), max |delta_t|, max delta_t, min delta_t.
    Over any split of a batch's tokens (micro-batches, processes), adding the sums and taking the max / min
    of the extremes (``MISMATCH_TOTALS``) and then ``mismatch_from_totals`` gives the whole batch's
    ``mismatch_metrics``. No token: zero sums, max -inf, min +inf."""
    delta = (target_logprobs.float() - behaviour_logprobs.float())[mask > 0].double()
    empty = delta.numel() == 0
    return {
        "tokens": float(delta.numel()),
        "abs_sum": delta.abs().sum().item(),
        "sum": delta.sum().item(),
        "k3_sum": (torch.expm1(delta) - delta).sum().item(),
        "abs_max": -math.inf if empty else delta.abs().max().item(),
        "max": -math.inf if empty else delta.max().item(),
        "min": math.inf if empty else delta.min().item(),
    }


def mismatch_from_totals(totals: dict[str, float]) -> dict[str, float]:
    """``mismatch_metrics`` (as floats) from combined ``mismatch_totals``; empty when no token was generated."""
    n = totals["tokens"]
    if n == 0:
        return {}
    return {
        "logprob_diff_mean": totals["abs_sum"] / n,
        "logprob_diff_max": totals["abs_max"],
        "log_ratio_mean": totals["sum"] / n,
        "ratio_max": math.exp(min(totals["max"], 709.0)),  # 709: the largest float64 exponent, not inf
        "ratio_min": math.exp(totals["min"]),
        "kl_k3": totals["k3_sum"] / n,
    }
