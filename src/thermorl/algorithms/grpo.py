"""GRPO as pure tensor functions: advantages, clipped policy loss, KL penalty, aggregation.

Shapes: N sequences, T completion tokens; ``mask`` (N, T) is 1 on generated tokens.
References: DeepSeekMath (GRPO, arXiv 2402.03300), DAPO (clip-higher, token-mean,
arXiv 2503.14476), Dr. GRPO (no std scaling, arXiv 2503.20783), Schulman's KL estimators
(http://joschu.net/blog/kl-approx.html).
"""

from __future__ import annotations

import torch
from torch import Tensor


def group_advantages(rewards: Tensor, group_size: int, scale: bool = True, eps: float = 1e-4) -> Tensor:
    """A_i = (r_i - mean(r_group)) / (std(r_group) + eps), or r_i - mean(r_group) when not ``scale`` (Dr. GRPO).

    ``rewards`` (N,) holds consecutive groups of ``group_size``; std is the unbiased sample
    standard deviation (as in TRL). Groups whose rewards are all equal get advantage 0.
    A NaN reward (no reward function rewarded the sample, see ``thermorl.rewards.guard``) is left out: mean and
    std are over the group's other samples, and its own advantage is 0 (TRL's NaN-aware baseline).
    """
    if torch.isnan(rewards).any():
        return _advantages_without_missing(rewards, group_size, scale, eps)
    grouped = rewards.view(-1, group_size)
    centered = grouped - grouped.mean(dim=1, keepdim=True)
    if scale:
        std = grouped.std(dim=1, keepdim=True)
        centered = torch.where(std > 0, centered / (std + eps), torch.zeros_like(centered))
    return centered.reshape(-1)


def _advantages_without_missing(rewards: Tensor, group_size: int, scale: bool, eps: float) -> Tensor:
    """``group_advantages`` over the non-NaN rewards of each group: with n_g of them,
    mean_g = sum r / n_g, std_g = sqrt(sum (r - mean_g)^2 / (n_g - 1)) (0 when n_g < 2), A = 0 where r is NaN."""
    grouped = rewards.view(-1, group_size)
    present = ~torch.isnan(grouped)
    count = present.sum(dim=1, keepdim=True)
    values = torch.where(present, grouped, torch.zeros_like(grouped))
    mean = values.sum(dim=1, keepdim=True) / count.clamp_min(1)
    centered = torch.where(present, grouped - mean, torch.zeros_like(grouped))
    if scale:
        std = ((centered**2).sum(dim=1, keepdim=True) / (count - 1).clamp_min(1)).sqrt()
        std = torch.where(count > 1, std, torch.zeros_like(std))
        centered = torch.where(std > 0, centered / (std + eps), torch.zeros_like(centered))
    return centered.reshape(-1)


def rows_by_group(group_ids: Tensor) -> tuple[Tensor, int]:
    """(the row order that puts each group's rows side by side, the group size); groups must be equally large."""
    order = torch.argsort(group_ids, stable=True)
    sizes = torch.unique_consecutive(group_ids[order], return_counts=True)[1]
    if (sizes != sizes[0]).any():
        raise ValueError(f"every group needs as many rows, got group sizes {sorted(set(sizes.tolist()))}")
    return order, int(sizes[0])


def group_advantages_by_id(rewards: Tensor, group_ids: Tensor, scale: bool = True, eps: float = 1e-4) -> Tensor:
    """``group_advantages`` with each row's group named by ``group_ids`` (N,) instead of by row order."""
    order, group_size = rows_by_group(group_ids.to(rewards.device))
    advantages = torch.empty_like(rewards)
    advantages[order] = group_advantages(rewards[order], group_size, scale, eps)
    return advantages


def groups_with_spread(rewards: Tensor, group_ids: Tensor) -> Tensor:
    """(N,) bool: the rows of groups whose rewards are not all equal, DAPO's dynamic-sampling filter
    (Yu et al. 2025, eq. 11: keep a group when 0 < |{correct o_i}| < G). NaN rewards (no reward) are ignored;
    a group with fewer than two rewards has no spread."""
    keep = torch.zeros(group_ids.shape, dtype=torch.bool, device=group_ids.device)
    for group in group_ids.unique():
        rows = group_ids == group
        values = rewards[rows]
        values = values[~torch.isnan(values)]
        keep[rows] = len(values) > 1 and bool(values.max() > values.min())
    return keep


def clipped_policy_loss(
    logprobs: Tensor, old_logprobs: Tensor, advantages: Tensor, epsilon_low: float, epsilon_high: float
) -> tuple[Tensor, Tensor]:
    """Per-token PPO/GRPO loss and clip indicator.

    rho_t = exp(log pi(y_t) - log pi_old(y_t));
    loss_t = -min(rho_t A, clip(rho_t, 1 - epsilon_low, 1 + epsilon_high) A).
    ``advantages`` is (N,) (one per sequence) or (N, T).
    """
    if advantages.dim() == 1:
        advantages = advantages.unsqueeze(-1)
    ratio = torch.exp(logprobs - old_logprobs)
    unclipped = ratio * advantages
    clipped = torch.clamp(ratio, 1.0 - epsilon_low, 1.0 + epsilon_high) * advantages
    loss = -torch.minimum(unclipped, clipped)
    return loss, (clipped < unclipped).float()


def high_entropy_mask(entropies: Tensor, mask: Tensor, fraction: float) -> Tensor:
    """Keep the policy gradient only on the batch's highest-entropy ("forking") tokens.

    m_t = 1[H_t >= Q_{1 - fraction}(H over all generated tokens of the batch)] * mask_t
    (Wang et al. 2025, "Beyond the 80/20 Rule", arXiv 2506.01939; TRL's ``top_entropy_quantile``).
    ``entropies`` are those of the distributions the tokens were sampled from (their own temperatures);
    in a data-parallel run the quantile is this process's shard's. ``fraction`` = 1 keeps every
    generated token. Ties at the threshold are kept.
    """
    if fraction >= 1.0:
        return mask
    valid = entropies[mask > 0]
    if valid.numel() == 0:
        return mask
    threshold = torch.quantile(valid.float(), 1.0 - fraction)
    return mask * (entropies >= threshold).to(mask.dtype)


def kl_penalty(logprobs: Tensor, ref_logprobs: Tensor, estimator: str = "k3") -> Tensor:
    """Per-token estimate of KL(pi || pi_ref) from samples of pi.

    k1 = log pi - log pi_ref;  k3 = exp(log pi_ref - log pi) - (log pi_ref - log pi) - 1 (>= 0).
    """
    log_ratio = ref_logprobs - logprobs
    if estimator == "k1":
        return -log_ratio
    if estimator == "k3":
        return torch.exp(log_ratio) - log_ratio - 1.0
    raise ValueError(f"unknown KL estimator {estimator!r}")


def aggregate(values: Tensor, mask: Tensor, mode: str = "token_mean") -> Tensor:
    """Reduce per-token values to a scalar.

    token_mean: sum(values * mask) / sum(mask)  (every token weighs the same; DAPO).
    seq_mean:   mean_i [ sum_t values_it mask_it / sum_t mask_it ]  (every sequence weighs the same; GRPO).
    """
    if mode == "token_mean":
        return (values * mask).sum() / mask.sum().clamp_min(1.0)
    if mode == "seq_mean":
        per_sequence = (values * mask).sum(-1) / mask.sum(-1).clamp_min(1.0)
        return per_sequence.mean()
    raise ValueError(f"unknown aggregation {mode!r}")


def approx_kl(logprobs: Tensor, old_logprobs: Tensor, mask: Tensor) -> Tensor:
    """Diagnostic KL(pi_old || pi) with the k3 estimator, token mean (as logged by CleanRL/TRL)."""
    log_ratio = logprobs - old_logprobs
    return aggregate(torch.exp(log_ratio) - 1.0 - log_ratio, mask)


def truncated_importance_weights(target_logprobs: Tensor, behaviour_logprobs: Tensor, cap: float) -> Tensor:
    """Truncated importance sampling (TIS) weights, detached:

        w_t = min(exp(log pi_target(y_t) - log mu(y_t)), C)

    where mu is the distribution the token was sampled from (e.g. EAD's annealed temperature, or an
    inference engine) and pi_target the policy being optimised (Ionides 2008; Yao et al. 2025 use it for
    rollout/trainer mismatch; EAD's released code for training the T = 1 policy from annealed samples).
    """
    return torch.exp(target_logprobs - behaviour_logprobs).clamp(max=cap).detach()
