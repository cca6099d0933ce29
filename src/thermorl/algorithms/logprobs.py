"""Tempered token log-probabilities, shared by the sampler and the trainer.

log pi_theta(y_t | s_t, tau_t) = log_softmax(z_t / tau_t)[y_t]

Sampling and training go through the same ``tempered_log_softmax`` with the same per-token
temperature tensor, so the ratio pi_new / pi_old compares like with like (the bug class where the
trainer scores at temperature 1 what was sampled at another temperature cannot happen here).
With ``rollout.top_k`` / ``rollout.top_p`` both go through ``sampling_log_softmax``, the log-probs of the
truncated distribution that was actually sampled.
"""

from __future__ import annotations

import torch
from torch import Tensor


def tempered_log_softmax(logits: Tensor, temperatures: Tensor) -> Tensor:
    """log_softmax(logits / temperature) over the vocabulary: logits (..., V), temperatures (...)."""
    return torch.log_softmax(logits.float() / temperatures.unsqueeze(-1), dim=-1)


def gather_logprobs(logp: Tensor, tokens: Tensor) -> tuple[Tensor, Tensor]:
    """Log-prob of ``tokens`` and entropy -sum p log p of a log-distribution (..., V)."""
    token_logp = logp.gather(-1, tokens.unsqueeze(-1)).squeeze(-1)
    entropy = -(logp.exp() * logp).sum(-1)
    return token_logp, entropy


def tempered_logprobs(logits: Tensor, tokens: Tensor, temperatures: Tensor) -> tuple[Tensor, Tensor]:
    """Log-prob of ``tokens`` and entropy under softmax(logits / temperature).

    logits (..., V), tokens (...), temperatures (...) -> log-probs (...), entropies (...).
    """
    return gather_logprobs(tempered_log_softmax(logits, temperatures), tokens)


def truncation_mask(scaled: Tensor, top_k: int = 0, top_p: float = 1.0) -> Tensor:
    """Boolean (..., V): the tokens kept by top-k, then top-p (nucleus), of tempered logits ``scaled``.

    top-k keeps every token whose logit reaches the k-th largest (ties kept); top-p then keeps, of the
    top-k distribution renormalised, the most likely tokens until their mass reaches p: token v stays
    when the mass of the tokens ranked above it is < p (so the most likely token always stays).
    The order and tie rules are those of transformers' TopK/TopP warpers and vLLM's sampler.
    """
    keep = torch.ones_like(scaled, dtype=torch.bool)
    if top_k > 0 and top_k < scaled.shape[-1]:
        kth = torch.topk(scaled, top_k, dim=-1).values[..., -1:]
        keep = scaled >= kth
    if top_p < 1.0:
        probs = torch.softmax(scaled.masked_fill(~keep, float("-inf")), dim=-1)
        sorted_probs, order = torch.sort(probs, dim=-1, descending=True, stable=True)
        mass_above = sorted_probs.cumsum(-1) - sorted_probs
        keep = keep & torch.zeros_like(keep).scatter(-1, order, mass_above < top_p)
    return keep


def sampling_log_softmax(
    logits: Tensor, temperatures: Tensor, top_k: int = 0, top_p: float = 1.0, tokens: Tensor | None = None
) -> Tensor:
    """Log-distribution (..., V) that tokens are sampled from: temperature, then top-k, then top-p.

    z_t = logits_t / tau_t;   S_t = truncation_mask(z_t) (top-k, then nucleus p)  [ u {y_t} if ``tokens`` ];
    log pi(v | s_t, tau_t) = z_tv - logsumexp_{u in S_t} z_tu  for v in S_t,  -inf otherwise.

    The sampler draws y_t from S_t, so adding y_t (``tokens``, as the trainer does) changes nothing when the
    logits are those of sampling; after an update it keeps the sampled token's log-prob finite. With top_k = 0
    and top_p = 1 this is ``tempered_log_softmax`` exactly.
    """
    if top_k <= 0 and top_p >= 1.0:
        return tempered_log_softmax(logits, temperatures)
    scaled = logits.float() / temperatures.unsqueeze(-1)
    with torch.no_grad():
        keep = truncation_mask(scaled, top_k, top_p)
        if tokens is not None:
            keep = keep.scatter(-1, tokens.unsqueeze(-1), True)
    return torch.log_softmax(scaled.masked_fill(~keep, float("-inf")), dim=-1)


def sampled_logprobs(
    logits: Tensor, tokens: Tensor, temperatures: Tensor, top_k: int = 0, top_p: float = 1.0
) -> tuple[Tensor, Tensor]:
    """Log-prob of ``tokens`` and entropy of the distribution they were sampled from (``sampling_log_softmax``).

    The entropy sums over the kept tokens only (-p log p = 0 for p = 0). Equals ``tempered_logprobs`` when
    nothing is truncated.
    """
    if top_k <= 0 and top_p >= 1.0:
        return tempered_logprobs(logits, tokens, temperatures)
    return gather_truncated_logprobs(sampling_log_softmax(logits, temperatures, top_k, top_p, tokens), tokens)


def gather_truncated_logprobs(logp: Tensor, tokens: Tensor) -> tuple[Tensor, Tensor]:
    """``gather_logprobs`` for a log-distribution with -inf entries (truncated): -p log p counts 0 there."""
    token_logp = logp.gather(-1, tokens.unsqueeze(-1)).squeeze(-1)
    entropy = -(logp.exp() * logp.masked_fill(torch.isinf(logp), 0.0)).sum(-1)
    return token_logp, entropy
