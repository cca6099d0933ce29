"""Policy losses by name (``algorithm.policy_loss``): the per-token policy-gradient term of the token objective.

A policy loss maps a minibatch's log-probs at the sampled temperatures to per-token losses and a per-token
clip indicator; :func:`thermorl.algorithms.objective.token_objective` then masks, weights (rollout
correction), adds the KL and entropy terms and aggregates. Registered the way verl registers its
``register_policy_loss`` functions, so a new loss is one registered function::

    @POLICY_LOSSES.register("mine")
    def mine(logprobs, old_logprobs, advantages, mask, *, epsilon_low, epsilon_high): ...

Every loss takes ``logprobs`` (N, T, with gradients), ``old_logprobs`` (N, T), ``advantages`` (N,) or (N, T),
``mask`` (N, T) 1 on generated tokens, and the clip range; it returns (loss (N, T), clipped (N, T) float).
"""

from __future__ import annotations

from typing import Protocol

import torch
from torch import Tensor

from thermorl.algorithms.grpo import clipped_policy_loss
from thermorl.config.registry import POLICY_LOSSES


class PolicyLoss(Protocol):
    """The signature of a registered policy loss (module docstring)."""

    def __call__(
        self, logprobs: Tensor, old_logprobs: Tensor, advantages: Tensor, mask: Tensor, *,
        epsilon_low: float, epsilon_high: float,
    ) -> tuple[Tensor, Tensor]: ...


def _per_token(advantages: Tensor) -> Tensor:
    return advantages.unsqueeze(-1) if advantages.dim() == 1 else advantages


@POLICY_LOSSES.register("clip")
def clip_loss(
    logprobs: Tensor, old_logprobs: Tensor, advantages: Tensor, mask: Tensor, *, epsilon_low: float,
    epsilon_high: float,
) -> tuple[Tensor, Tensor]:
    """PPO/GRPO's clipped token ratio (the default; DAPO's clip-higher when epsilon_high > epsilon_low):

    rho_t = pi(y_t) / pi_old(y_t);  l_t = -min(rho_t A, clip(rho_t, 1 - eps_low, 1 + eps_high) A).
    """
    return clipped_policy_loss(logprobs, old_logprobs, advantages, epsilon_low, epsilon_high)


@POLICY_LOSSES.register("gspo")
def gspo_loss(
    logprobs: Tensor, old_logprobs: Tensor, advantages: Tensor, mask: Tensor, *, epsilon_low: float,
    epsilon_high: float,
) -> tuple[Tensor, Tensor]:
    """GSPO's sequence-level ratio (Zheng et al. 2025, arXiv 2507.18071), in its GSPO-token form (eq. 13-14):

    s_i     = exp( (1 / |y_i|) sum_t m_t (log pi(y_t) - log pi_old(y_t)) )       (length-normalised)
    s_i,t   = sg[s_i] * pi(y_t) / sg[pi(y_t)]                                    (value s_i, gradient s_i grad log pi)
    l_i,t   = -min(s_i,t A_i, clip(s_i,t, 1 - eps_low, 1 + eps_high) A_i)

    Every token of a sequence is clipped together (by its sequence's ratio). With one advantage per sequence
    and ``algorithm.loss_aggregation=seq_mean`` this is GSPO's sequence objective; the paper clips at
    eps_low = 3e-4, eps_high = 4e-4 (set ``algorithm.epsilon`` / ``epsilon_high``), far below the token
    ratio's 0.2.
    """
    log_ratio = (logprobs - old_logprobs) * mask
    sequence_log_ratio = log_ratio.sum(-1, keepdim=True) / mask.sum(-1, keepdim=True).clamp_min(1.0)
    ratio = torch.exp(sequence_log_ratio.detach() + logprobs - logprobs.detach())
    advantages = _per_token(advantages)
    unclipped = ratio * advantages
    clipped = torch.clamp(ratio, 1.0 - epsilon_low, 1.0 + epsilon_high) * advantages
    return -torch.minimum(unclipped, clipped), (clipped < unclipped).float()


@POLICY_LOSSES.register("cispo")
def cispo_loss(
    logprobs: Tensor, old_logprobs: Tensor, advantages: Tensor, mask: Tensor, *, epsilon_low: float,
    epsilon_high: float,
) -> tuple[Tensor, Tensor]:
    """CISPO's clipped importance-sampling weight (MiniMax-M1, arXiv 2506.13585, eq. 4-5):

    r_t  = pi(y_t) / pi_old(y_t);  r^_t = clip(r_t, 1 - eps_low, 1 + eps_high)
    grad l_t = -sg[r^_t] A grad log pi(y_t)

    Unlike the clipped ratio, no token's gradient is dropped: the weight is clipped, the gradient kept. The
    value returned is -sg[r^_t / r_t] r_t A (= -r^_t A, the clipped surrogate's scale), whose gradient is the
    paper's -sg[r^_t] A grad log pi. The clip indicator marks tokens whose weight was clipped. MiniMax-M1
    clips only from above (eps_low large enough that 1 - eps_low <= 0, e.g. ``algorithm.epsilon=1``).
    """
    ratio = torch.exp(logprobs - old_logprobs)
    weight = torch.clamp(ratio, 1.0 - epsilon_low, 1.0 + epsilon_high).detach()
    loss = -(weight / ratio.detach()) * ratio * _per_token(advantages)
    return loss, (weight != ratio.detach()).float()


def policy_loss(name: str) -> PolicyLoss:
    """The registered policy loss ``name`` (``algorithm.policy_loss``)."""
    return POLICY_LOSSES[name].build
