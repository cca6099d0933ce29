"""The token objective of one GRPO minibatch as one pure function, with its variants registered by name.

Advantage estimators (``algorithm.advantage``), policy losses (``algorithm.policy_loss``, in
``policy_loss.py``) and loss aggregations (``algorithm.loss_aggregation``) are looked up in registries (the
style of verl's ``core_algos.py``): a new variant is one registered function, not a branch in the trainer.

    rho_t  = exp(log pi(y_t | tau_t) - log pi_old(y_t | tau_t))                      (tau_t: the sampled temperature)
    l_t    = PL(rho, A)_t * m_t * w_t                                                 (m: top-entropy mask, w: TIS)
    PL     = -min(rho_t A, clip(rho_t, 1 - eps_low, 1 + eps_high) A) by default ('clip'; 'gspo', 'cispo')
    L      = agg_t(l_t + beta KL_t(pi || pi_ref) - c_H H_t) * s                       (s: data-parallel token share,
                                                                                       H_t: entropy of pi(. | tau_t))
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from torch import Tensor

from thermorl.algorithms.grpo import aggregate, approx_kl, group_advantages_by_id, kl_penalty
from thermorl.algorithms.policy_loss import policy_loss
from thermorl.config.registry import ADVANTAGES, AGGREGATIONS


@ADVANTAGES.register("grpo")
def grpo_advantages(rewards: Tensor, group_ids: Tensor) -> Tensor:
    """A_i = (r_i - mean(r_group)) / (std(r_group) + eps) (DeepSeekMath)."""
    return group_advantages_by_id(rewards, group_ids, scale=True)


@ADVANTAGES.register("drgrpo")
def drgrpo_advantages(rewards: Tensor, group_ids: Tensor) -> Tensor:
    """A_i = r_i - mean(r_group) (Dr. GRPO, arXiv 2503.20783: no std division)."""
    return group_advantages_by_id(rewards, group_ids, scale=False)


@dataclass(frozen=True)
class Aggregation:
    """A reduction of per-token values to the loss, and whether a data-parallel process scales it by its
    share of the global batch's tokens (token means do; sequence means weigh every sequence alike)."""

    reduce: Callable[[Tensor, Tensor], Tensor]
    scaled_by_token_share: bool


AGGREGATIONS.register("token_mean")(Aggregation(lambda values, mask: aggregate(values, mask, "token_mean"), True))
AGGREGATIONS.register("seq_mean")(Aggregation(lambda values, mask: aggregate(values, mask, "seq_mean"), False))


def advantages(name: str, rewards: Tensor, group_ids: Tensor) -> Tensor:
    """The registered advantage estimator ``name`` (``algorithm.advantage``) on one batch's rewards."""
    return ADVANTAGES[name].build(rewards, group_ids)


def token_objective(
    logprobs: Tensor,
    old_logprobs: Tensor,
    advantages: Tensor,
    mask: Tensor,
    *,
    epsilon: float,
    epsilon_high: float,
    aggregation: str = "token_mean",
    loss: str = "clip",
    pg_mask: Tensor | None = None,
    importance: tuple[Tensor, Tensor] | None = None,
    ref_logprobs: Tensor | None = None,
    beta: float = 0.0,
    kl_estimator: str = "k3",
    token_share: float = 1.0,
    entropies: Tensor | None = None,
    entropy_coef: float = 0.0,
) -> tuple[Tensor, dict[str, Tensor]]:
    """The GRPO loss of a minibatch (module docstring) with policy loss ``loss`` and its diagnostics.

    ``logprobs`` / ``old_logprobs`` / ``ref_logprobs`` (N, T) are at the sampled per-token temperatures;
    ``advantages`` (N,); ``mask`` (N, T) 1 on generated tokens; ``pg_mask`` the top-entropy token mask;
    ``importance`` the truncated importance weights and their clip indicator when training another policy
    than the sampling one; ``entropies`` (N, T, with gradients) the entropy of the tempered (truncated)
    distribution each token was sampled from, for the bonus l_t -= entropy_coef * H_t. Diagnostics: pg_loss,
    clip_fraction, approx_kl (and kl_ref, is_weight_mean, is_clipped_fraction, lm_entropy when those terms
    are on), as 0-d tensors.
    """
    agg = AGGREGATIONS[aggregation].build
    diagnostics: dict[str, Tensor] = {}
    pg, clipped = policy_loss(loss)(
        logprobs, old_logprobs, advantages, mask, epsilon_low=epsilon, epsilon_high=epsilon_high
    )
    if pg_mask is not None:
        pg = pg * pg_mask  # every token unless algorithm.top_entropy_fraction < 1
    if importance is not None:
        weights, weight_clipped = importance
        pg = pg * weights
        diagnostics["is_weight_mean"] = aggregate(weights, mask)
        diagnostics["is_clipped_fraction"] = aggregate(weight_clipped, mask)
    token_loss = pg
    if ref_logprobs is not None:
        kl = kl_penalty(logprobs, ref_logprobs, kl_estimator)
        token_loss = token_loss + beta * kl
        diagnostics["kl_ref"] = aggregate(kl, mask)
    if entropy_coef > 0 and entropies is not None:  # l_t -= c_H * H(pi(. | s_t, tau_t))
        token_loss = token_loss - entropy_coef * entropies
        diagnostics["lm_entropy"] = aggregate(entropies.detach(), mask)
    total = agg.reduce(token_loss, mask)
    if agg.scaled_by_token_share:
        total = total * token_share
    diagnostics["pg_loss"] = agg.reduce(pg, mask)
    diagnostics["clip_fraction"] = aggregate(clipped, mask)
    diagnostics["approx_kl"] = approx_kl(logprobs.detach(), old_logprobs, mask)
    return total, diagnostics
