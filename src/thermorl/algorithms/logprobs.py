"""Tempered token log-probabilities, shared by the sampler and the trainer.

log pi_theta(y_t | s_t, tau_t) = log_softmax(z_t / tau_t)[y_t]

Sampling and training call the same function with the same per-token temperature tensor,
so the ratio pi_new / pi_old compares like with like (the bug class where the trainer
scores at temperature 1 what was sampled at another temperature cannot happen here).
"""

from __future__ import annotations

import torch
from torch import Tensor


def tempered_logprobs(logits: Tensor, tokens: Tensor, temperatures: Tensor) -> tuple[Tensor, Tensor]:
    """Log-prob of ``tokens`` and entropy under softmax(logits / temperature).

    logits (..., V), tokens (...), temperatures (...) -> log-probs (...), entropies (...).
    """
    logp = torch.log_softmax(logits.float() / temperatures.unsqueeze(-1), dim=-1)
    token_logp = logp.gather(-1, tokens.unsqueeze(-1)).squeeze(-1)
    entropy = -(logp.exp() * logp).sum(-1)
    return token_logp, entropy


def chunked_tempered_logprobs(
    logits: Tensor, tokens: Tensor, temperatures: Tensor, chunk_rows: int = 32
) -> tuple[Tensor, Tensor]:
    """``tempered_logprobs`` over the first dimension in chunks, bounding the (rows, T, V) temporaries."""
    pieces = [
        tempered_logprobs(logits[i : i + chunk_rows], tokens[i : i + chunk_rows], temperatures[i : i + chunk_rows])
        for i in range(0, logits.shape[0], chunk_rows)
    ]
    return torch.cat([p[0] for p in pieces]), torch.cat([p[1] for p in pieces])
