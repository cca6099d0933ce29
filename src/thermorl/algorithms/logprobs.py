"""Tempered token log-probabilities, shared by the sampler and the trainer.

log pi_theta(y_t | s_t, tau_t) = log_softmax(z_t / tau_t)[y_t]

Sampling and training go through the same ``tempered_log_softmax`` with the same per-token
temperature tensor, so the ratio pi_new / pi_old compares like with like (the bug class where the
trainer scores at temperature 1 what was sampled at another temperature cannot happen here).
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
