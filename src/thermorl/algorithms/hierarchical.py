"""The Introspective LLM's temperature policy as pure tensor functions (arXiv 2602.13035).

A head reads the last hidden state h_t and outputs u_t. Two parametrisations:

* beta (the paper): u = (u_c, u_alpha, u_beta); gate c_t ~ Bernoulli(sigmoid(u_c)); when the
  gate fires, z_t ~ Beta(alpha, beta) with alpha = softplus(u_alpha) + eps,
  beta = softplus(u_beta) + eps, and tau_t = tau_min + z_t (tau_max - tau_min); otherwise
  tau_t = tau_{t-1}. Its log-probability is
      log pi_phi(tau_t | h_t) = log P(c_t) + c_t log Beta(z_t; alpha, beta).
* bins (ablation): u has K entries; b_t ~ Categorical(softmax(u)), tau_t = bins[b_t],
      log pi_phi(tau_t | h_t) = log_softmax(u)[b_t].

The temperature policy is trained with the token policy's group advantages A_i and its own
clipped ratio rho_t = pi_phi(tau_t | h_t) / pi_phi_old(tau_t | h_t) (``temperature_policy_loss``).
Shapes: any leading shape (...), e.g. (B,) at sampling time and (N, T) in training.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from thermorl.algorithms.grpo import aggregate, approx_kl, clipped_policy_loss

Z_EPS = 1e-6  # Beta draws are clamped to [Z_EPS, 1 - Z_EPS] so log z and log(1 - z) stay finite


def beta_head_parameters(u: Tensor, eps: float) -> tuple[Tensor, Tensor, Tensor]:
    """u (..., 3) -> gate probability sigmoid(u_c), alpha = softplus(u_alpha) + eps, beta = softplus(u_beta) + eps."""
    concentrations = F.softplus(u[..., 1:]) + eps
    return torch.sigmoid(u[..., 0]), concentrations[..., 0], concentrations[..., 1]


def clamp_unit(z: Tensor) -> Tensor:
    """z clamped to [Z_EPS, 1 - Z_EPS] (sampling and scoring use the same clamp, so log-probs match)."""
    return z.clamp(Z_EPS, 1.0 - Z_EPS)


def unit_to_temperature(z: Tensor, tau_min: float, tau_max: float) -> Tensor:
    """tau = tau_min + z (tau_max - tau_min)."""
    return tau_min + z * (tau_max - tau_min)


def beta_logprob(z: Tensor, alpha: Tensor, beta: Tensor) -> Tensor:
    """log Beta(z; a, b) = (a - 1) log z + (b - 1) log(1 - z) - [lgamma(a) + lgamma(b) - lgamma(a + b)]."""
    z = clamp_unit(z)
    log_norm = torch.lgamma(alpha) + torch.lgamma(beta) - torch.lgamma(alpha + beta)
    return (alpha - 1.0) * torch.log(z) + (beta - 1.0) * torch.log1p(-z) - log_norm


def hybrid_logprob(gate_logit: Tensor, alpha: Tensor, beta: Tensor, gate: Tensor, z: Tensor) -> Tensor:
    """log P(c) + c log Beta(z; alpha, beta), with log P(c) = c log sigmoid(u_c) + (1 - c) log sigmoid(-u_c).

    ``gate`` is a float 0/1 tensor; ``z`` is ignored where the gate is 0 (the temperature was
    carried over, not drawn); its clamp keeps that unused term finite, so no NaN gradient leaks.
    """
    gate_logprob = -F.binary_cross_entropy_with_logits(gate_logit, gate, reduction="none")
    return gate_logprob + gate * beta_logprob(z, alpha, beta)


def temperature_logprob(u: Tensor, gate: Tensor, z: Tensor, eps: float) -> Tensor:
    """log pi_phi(tau | h) = log P(c) + c log Beta(z; alpha, beta) from the beta head's outputs u (..., 3)."""
    _, alpha, beta = beta_head_parameters(u, eps)
    return hybrid_logprob(u[..., 0], alpha, beta, gate, z)


def bins_logprob(u: Tensor, bin_index: Tensor) -> Tensor:
    """log pi_phi(tau | h) = log_softmax(u)[b] for the categorical head; u (..., K), b (...)."""
    return torch.log_softmax(u, dim=-1).gather(-1, bin_index.long().unsqueeze(-1)).squeeze(-1)


def hybrid_entropy(u: Tensor, eps: float) -> Tensor:
    """Entropy of the gate + Beta action: H(c) + P(c = 1) H(Beta(alpha, beta)).

    H(c) = p softplus(-u_c) + (1 - p) softplus(u_c) with p = sigmoid(u_c); the carried-over
    temperature (c = 0) is deterministic and adds nothing. Beta differential entropy:
    H = log B(a, b) - (a - 1) psi(a) - (b - 1) psi(b) + (a + b - 2) psi(a + b).
    """
    p, alpha, beta = beta_head_parameters(u, eps)
    gate_entropy = p * F.softplus(-u[..., 0]) + (1.0 - p) * F.softplus(u[..., 0])
    total = alpha + beta
    beta_entropy = (
        torch.lgamma(alpha) + torch.lgamma(beta) - torch.lgamma(total)
        - (alpha - 1.0) * torch.digamma(alpha) - (beta - 1.0) * torch.digamma(beta)
        + (total - 2.0) * torch.digamma(total)
    )
    return gate_entropy + p * beta_entropy


def hybrid_kl(u: Tensor, u0: Tensor, eps: float) -> Tensor:
    """KL(pi_phi(. | h) || pi_phi0) of the gate + Beta action, from head outputs u and reference outputs u0 (..., 3).

        KL = KL(Bern(p) || Bern(p0)) + p KL(Beta(a, b) || Beta(a0, b0)),
        KL(Bern(p) || Bern(p0)) = p log(p / p0) + (1 - p) log((1 - p) / (1 - p0)),
        KL(Beta(a, b) || Beta(a0, b0)) = log B(a0, b0) - log B(a, b) + (a - a0) psi(a) + (b - b0) psi(b)
                                         + (a0 - a + b0 - b) psi(a + b).

    The carried-over temperature (c = 0) is the same point mass under both policies and adds nothing.
    """
    p, alpha, beta = beta_head_parameters(u, eps)
    p0, alpha0, beta0 = beta_head_parameters(u0, eps)
    log_p, log_not_p = F.logsigmoid(u[..., 0]), F.logsigmoid(-u[..., 0])
    gate_kl = p * (log_p - F.logsigmoid(u0[..., 0])) + (1.0 - p) * (log_not_p - F.logsigmoid(-u0[..., 0]))
    total, total0 = alpha + beta, alpha0 + beta0
    log_b = torch.lgamma(alpha) + torch.lgamma(beta) - torch.lgamma(total)
    log_b0 = torch.lgamma(alpha0) + torch.lgamma(beta0) - torch.lgamma(total0)
    beta_kl = (
        log_b0 - log_b + (alpha - alpha0) * torch.digamma(alpha) + (beta - beta0) * torch.digamma(beta)
        + (total0 - total) * torch.digamma(total)
    )
    return gate_kl + p * beta_kl


def bins_kl(u: Tensor, u0: Tensor) -> Tensor:
    """KL(pi_phi || pi_phi0) of the categorical head, sum_k p_k (log p_k - log p0_k)."""
    logp, logp0 = torch.log_softmax(u, dim=-1), torch.log_softmax(u0, dim=-1)
    return (logp.exp() * (logp - logp0)).sum(-1)


def bins_entropy(u: Tensor) -> Tensor:
    """Entropy of the categorical head, -sum_k p_k log p_k."""
    logp = torch.log_softmax(u, dim=-1)
    return -(logp.exp() * logp).sum(-1)


def temperature_policy_loss(
    logprobs: Tensor,
    old_logprobs: Tensor,
    advantages: Tensor,
    mask: Tensor,
    epsilon: float,
    entropy: Tensor | None = None,
    entropy_coef: float = 0.0,
    kl_to_initial: Tensor | None = None,
    kl_coef: float = 0.0,
    importance: Tensor | None = None,
) -> tuple[Tensor, dict[str, Tensor]]:
    """Clipped temperature-policy loss with the token policy's group advantages, token mean.

    rho_t = exp(log pi_phi(tau_t) - log pi_phi_old(tau_t));
    L = mean_t -w_t min(rho_t A_i, clip(rho_t, 1 - epsilon, 1 + epsilon) A_i) - entropy_coef * mean_t H_t
        + kl_coef * mean_t KL(pi_phi(. | h_t) || pi_phi0)
    (the last term a trust region to the initial temperature policy, ``hybrid_kl`` / ``bins_kl``).
    w_t = 1, or with ``importance`` the rollout correction of an engine that sampled the head's actions
    (vLLM): w_t = min(pi_phi_old(tau_t | h_t) / pi_phi_engine(tau_t | h_t), C)
    (``grpo.truncated_importance_weights``, detached), the LM's truncated importance sampling applied to the head.
    Returns the loss and detached diagnostics (pg loss, clip fraction, approx KL, entropy, KL to pi_phi0,
    and the mean weight ``is_weight_mean`` when weighted).
    """
    pg, clipped = clipped_policy_loss(logprobs, old_logprobs, advantages, epsilon, epsilon)
    if importance is not None:
        pg = pg * importance.detach()
    pg_loss = aggregate(pg, mask)
    loss = pg_loss
    diagnostics = {
        "pg_loss": pg_loss.detach(),
        "clip_fraction": aggregate(clipped, mask),
        "approx_kl": approx_kl(logprobs.detach(), old_logprobs, mask),
    }
    if importance is not None:
        diagnostics["is_weight_mean"] = aggregate(importance.detach(), mask)
    if entropy is not None:
        mean_entropy = aggregate(entropy, mask)
        loss = loss - entropy_coef * mean_entropy
        diagnostics["entropy"] = mean_entropy.detach()
    if kl_to_initial is not None:
        mean_kl = aggregate(kl_to_initial, mask)
        loss = loss + kl_coef * mean_kl
        diagnostics["kl_initial"] = mean_kl.detach()
    return loss, diagnostics


def group_signal_advantages(advantages: Tensor, group_ids: Tensor, tol: float = 1e-8) -> Tensor:
    """The head's credit for what helps the LM learn: whether its group gave GRPO a learning signal.

        s_g = 1[max_{i in g} |A_i| > 0]   (a group with reward variance; binary rewards: 0 < successes < G)
        A^head_i = s_{g(i)} - mean_g s_g   (the batch's signal rate as the baseline, one value per group)

    ``advantages`` (N,) are the LM's advantages (zero in every row of a zero-variance group), ``group_ids``
    (N,) name each row's group. Every row of a group gets its group's credit: the group's rows share it,
    as cooperating agents share a reward, so a head whose temperatures turn all-fail or all-pass groups
    into mixed ones is pushed towards them, whatever the in-group reward prefers.
    """
    _, group = torch.unique(group_ids, return_inverse=True)
    count = int(group.max().item()) + 1 if group.numel() else 0
    magnitude = torch.zeros(count, dtype=advantages.dtype, device=advantages.device)
    magnitude = magnitude.scatter_reduce(0, group, advantages.abs(), reduce="amax", include_self=True)
    signal = (magnitude > tol).to(advantages.dtype)
    return signal[group] - signal.mean()
