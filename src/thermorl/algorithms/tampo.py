"""TAMPO's outer loop as pure tensor functions (Dang et al., ICLR 2026, arXiv 2602.11779).

After each GRPO step the batch's own trajectories are re-scored at every candidate
temperature T_k (no extra rollouts), and the meta-policy pi(T) moves towards the
temperatures under which high-advantage trajectories are most likely:

  l_k(y_i)   = (1/|y_i|) sum_t log_softmax(z_t / T_k)[y_t]      length-normalised likelihood
  l_hat(y_i) = sparsemax_k(l(y_i))                                normalised over candidates
  A_B^k      = mean_i l_hat_k(y_i) * A_i                          temperature advantage
  A_bar      = (1 - alpha) A_bar + alpha A_B                      EMA
  pi(T_k)    = minmax(A_bar)_k / sum_j minmax(A_bar)_j
"""

from __future__ import annotations

import functools
from typing import Callable

import torch
from torch import Tensor


def sparsemax(x: Tensor, dim: int = -1) -> Tensor:
    """Euclidean projection of ``x`` onto the simplex along ``dim`` (Martins & Astudillo 2016, eq. 2-4).

    With z sorted decreasingly, k(z) = max{k : 1 + k z_(k) > sum_{j<=k} z_(j)},
    tau(z) = (sum_{j<=k(z)} z_(j) - 1) / k(z) and sparsemax(z)_i = max(z_i - tau(z), 0).
    Unlike softmax it is shift-invariant *and* gives exact zeros to low entries.
    """
    z = x.movedim(dim, -1)
    z_sorted = z.sort(dim=-1, descending=True).values
    cumulative = z_sorted.cumsum(dim=-1)
    k = torch.arange(1, z.shape[-1] + 1, dtype=z.dtype, device=z.device)
    support_size = (1 + k * z_sorted > cumulative).sum(dim=-1, keepdim=True)  # the support is a prefix
    tau = (cumulative.gather(-1, support_size - 1) - 1) / support_size.to(z.dtype)
    return (z - tau).clamp_min(0).movedim(-1, dim)


@torch.no_grad()
def candidate_loglikelihoods(
    logits: Tensor, tokens: Tensor, mask: Tensor, candidates: Tensor, chunk_tokens: int = 256, fused: bool = False
) -> Tensor:
    """l_k(y_i) = mean_{t in y_i} log_softmax(z_t / T_k)[y_t] for every row i and candidate k.

    logits (N, T, V) untempered, tokens (N, T), mask (N, T), candidates (K,) -> (N, K).
    Uses log_softmax(z / T)[y] = (z_y - m) / T - log sum_v exp((z_v - m) / T) with m = max_v z_v,
    so the shifted logits z - m are computed once per chunk and reused by every candidate.
    Only masked tokens are scored, ``chunk_tokens`` at a time: the extra memory is about
    2 x chunk_tokens x V floats, never K x (N, T, V). ``fused`` computes all K normalisers of
    a chunk in one ``torch.compile``'d kernel that reads the logits once (for CUDA: about 5x
    faster than the eager loop over candidates on an H100 at vocab 152k).
    """
    num_rows, length, vocab = logits.shape
    flat_logits = logits.reshape(num_rows * length, vocab)
    positions = mask.reshape(-1).nonzero().squeeze(-1)
    flat_tokens = tokens.reshape(-1)
    token_loglik = torch.empty(len(positions), len(candidates), device=logits.device)
    inverse = 1.0 / candidates.to(device=logits.device, dtype=torch.float32)  # (K,)
    for start in range(0, len(positions), chunk_tokens):
        index = positions[start : start + chunk_tokens]
        z = flat_logits[index].float()  # (c, V)
        z.sub_(z.max(dim=-1, keepdim=True).values)  # shifted logits: max 0, so every normaliser is >= 1
        chosen = z.gather(-1, flat_tokens[index].unsqueeze(-1))  # (c, 1)
        normalisers = _compiled_log_normalisers()(z, inverse) if fused else _log_normalisers(z, inverse)
        token_loglik[start : start + len(index)] = chosen * inverse - normalisers
    row_of_token = positions // length
    sums = torch.zeros(num_rows, len(candidates), device=logits.device)
    sums.index_add_(0, row_of_token, token_loglik)
    return sums / mask.sum(dim=-1, keepdim=True).clamp_min(1.0).to(sums.dtype)


def _log_normalisers(shifted: Tensor, inverse: Tensor) -> Tensor:
    """log sum_v exp(shifted_v / T_k) for each row of ``shifted`` (c, V) and each 1 / T_k in ``inverse`` (K,).

    One (c, V) temporary at a time, reused in place.
    """
    columns = [(shifted * inv_t).exp_().sum(dim=-1) for inv_t in inverse.unbind()]
    return torch.stack(columns, dim=-1).log_()


def _broadcast_log_normalisers(shifted: Tensor, inverse: Tensor) -> Tensor:
    """``_log_normalisers`` as one reduction over (c, V, K); only ever run compiled, which fuses it
    into a kernel that reads ``shifted`` once and never materialises (c, V, K)."""
    return (shifted.unsqueeze(-1) * inverse).exp().sum(dim=-2).log()


@functools.cache
def _compiled_log_normalisers() -> Callable[[Tensor, Tensor], Tensor]:
    return torch.compile(_broadcast_log_normalisers, dynamic=True)  # compiled on first use, not at import


def minmax_distribution(scores: Tensor) -> Tensor:
    """pi_k = minmax(s)_k / sum_j minmax(s)_j with minmax(s) = (s - min s) / (max s - min s).

    The worst candidate gets probability 0; when all scores are equal the result is uniform.
    """
    spread = scores.max() - scores.min()
    if spread <= 0:
        return torch.full_like(scores, 1.0 / scores.numel())
    normalised = (scores - scores.min()) / spread
    return normalised / normalised.sum()


def tampo_outer_update(
    abar: Tensor, loglik: Tensor, advantages: Tensor, alpha: float
) -> tuple[Tensor, Tensor, Tensor]:
    """One outer step: (new A_bar (K,), pi (K,), batch temperature advantage A_B (K,)).

    abar (K,) the EMA, loglik (N, K) from ``candidate_loglikelihoods``, advantages (N,) the
    GRPO advantages A_i of the same trajectories:
      A_B^k = mean_i sparsemax_k(l(y_i)) * A_i;  A_bar <- (1 - alpha) A_bar + alpha A_B;
      pi = minmax(A_bar) / sum(minmax(A_bar)).
    """
    weights = sparsemax(loglik.float(), dim=-1)  # (N, K)
    batch_advantage = (weights * advantages.float().unsqueeze(-1)).mean(dim=0)
    new_abar = (1.0 - alpha) * abar + alpha * batch_advantage
    return new_abar, minmax_distribution(new_abar), batch_advantage


def likelihood_optimal_temperatures(loglik: Tensor, advantages: Tensor, candidates: Tensor) -> tuple[float, float]:
    """TAMPO's diagnostic T* = argmax_k mean_i l_k(y_i), over the trajectories with A_i > 0 and with A_i < 0.

    loglik (N, K) from ``candidate_loglikelihoods``; NaN where the batch has no such trajectory. The paper
    reads a higher T* for negative than for positive trajectories as the meta-policy's signal.
    """
    result = []
    for rows in (advantages > 0, advantages < 0):
        if rows.any():
            result.append(round(float(candidates[loglik[rows].float().mean(dim=0).argmax()]), 6))  # float32 -> 0.6
        else:
            result.append(float("nan"))
    return result[0], result[1]


def top_p_candidates(probs: Tensor, top_p: float) -> Tensor:
    """pi restricted to its top-p nucleus and renormalised (Holtzman et al. 2020, over candidates).

    Keeps the most probable candidates until their mass reaches ``top_p``; candidates tied with
    the last one kept are kept too, so the nucleus never depends on the order of the candidates
    (a uniform pi keeps every candidate).
    """
    sorted_probs = probs.sort(descending=True).values
    cumulative = sorted_probs.cumsum(dim=0)
    last = int((cumulative < top_p - 1e-6).sum().clamp_max(len(probs) - 1))
    kept = torch.where(probs >= sorted_probs[last] - 1e-9, probs, torch.zeros_like(probs))
    return kept / kept.sum()
