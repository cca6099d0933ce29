"""The trainer's forward pass over a sampled batch: log-probs, entropies and hidden states with gradients.

Engines only sample; this is what the update (and its pi_old / rollout-correction pass) scores a batch
with, whichever engine sampled it.

The LM head can run fused with the log-softmax, chunk by chunk (``chunk_tokens``, Liger's fused linear
cross-entropy idea): generated tokens' hidden states -> a chunk of rows -> logits -> tempered log-softmax
-> the token's log-prob and the entropy, each chunk under ``torch.utils.checkpoint`` so its logits are
recomputed in backward instead of kept. The full (tokens x vocab) logits never exist at once (at 64 x 128
tokens and a 49k vocabulary they are 1.6 GB of float32 per forward, and autograd keeps several such
tensors), and padding positions are not scored at all (log-prob and entropy 0 there).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor
from torch.utils.checkpoint import checkpoint

from thermorl.algorithms.logprobs import sampled_logprobs
from thermorl.engines.base import RolloutBatch
from thermorl.engines.hf import prompt_pass
from thermorl.models.policy import Policy


@dataclass
class Scored:
    """A training forward pass over a batch, aligned with its completion tokens."""

    logprobs: Tensor  # (N, T) at the sampled per-token temperatures
    entropies: Tensor  # (N, T)
    hidden: Tensor  # (N, T, d) hidden state that chose each completion token
    logits: Tensor | None  # (N, T, V) untempered; None when computed in chunks (``chunk_tokens``)


def score(policy: Policy, batch: RolloutBatch, share_prompts: bool = True, chunk_tokens: int = 0) -> Scored:
    """Recompute tempered log-probs of ``batch`` with gradients, at the temperatures sampling used (and of the
    distribution truncated by the batch's top-k / top-p, the sampled token always kept).

    Rows with the same prompt (a GRPO group) share one pass over that prompt: its keys and values
    are computed once and indexed per row, and the completions attend to them. Indexing is
    differentiable, so the gradient is that of one full pass over every row (the tests compare
    both), at a fraction of the prompt compute. Gradient checkpointing keeps the full pass (it
    runs without a KV cache).

    ``chunk_tokens`` > 0 applies the LM head to that many generated tokens at a time, fused with the
    log-softmax (``chunked_logprobs``; equal values and gradients, tested); 0 computes the full logits.
    """
    prompt_len = batch.prompt_ids.shape[1]
    if share_prompts and not policy.activation_checkpointing:
        last_prompt_hidden, cache = prompt_pass(policy, batch.prompt_ids, batch.prompt_mask)
        _, mask, positions = batch.full_inputs()
        completion_hidden, _ = policy.hidden(batch.completion_ids, mask, positions[:, prompt_len:], cache)
        hidden = torch.cat([last_prompt_hidden.unsqueeze(1), completion_hidden[:, :-1]], dim=1)
    else:
        input_ids, mask, positions = batch.full_inputs()
        hidden, _ = policy.hidden(input_ids, mask, positions)
        hidden = hidden[:, prompt_len - 1 : -1]
    if chunk_tokens > 0:
        logprobs, entropies = chunked_logprobs(policy, hidden, batch, chunk_tokens)
        return Scored(logprobs, entropies, hidden, None)
    logits = policy.logits(hidden)
    logprobs, entropies = sampled_logprobs(logits, batch.completion_ids, batch.temperatures, batch.top_k, batch.top_p)
    return Scored(logprobs, entropies, hidden, logits)


def chunked_logprobs(policy: Policy, hidden: Tensor, batch: RolloutBatch, chunk_tokens: int) -> tuple[Tensor, Tensor]:
    """log pi(y_t | s_t, tau_t) and H_t (N, T) of the generated tokens, the LM head applied ``chunk_tokens``
    rows at a time (module docstring); 0 at padding.

    With gradients each chunk runs under ``torch.utils.checkpoint`` (non-reentrant): forward keeps only the
    chunk's hidden states, backward recomputes its logits, so the peak is one chunk's (chunk x vocab) tensors.
    """
    rows, length = batch.completion_mask.shape
    generated = batch.completion_mask.reshape(-1).nonzero().squeeze(-1)
    flat_hidden = hidden.reshape(rows * length, -1)[generated]
    tokens = batch.completion_ids.reshape(-1)[generated]
    temperatures = batch.temperatures.reshape(-1)[generated]

    def piece(h: Tensor, y: Tensor, tau: Tensor) -> tuple[Tensor, Tensor]:
        return sampled_logprobs(policy.logits(h), y, tau, batch.top_k, batch.top_p)

    recompute = torch.is_grad_enabled()
    parts = []
    for start in range(0, len(generated), chunk_tokens):
        span = slice(start, start + chunk_tokens)
        args = (flat_hidden[span], tokens[span], temperatures[span])
        parts.append(checkpoint(piece, *args, use_reentrant=False) if recompute else piece(*args))
    logprobs = flat_hidden.new_zeros(rows * length, dtype=torch.float32)
    entropies = flat_hidden.new_zeros(rows * length, dtype=torch.float32)
    if parts:
        logprobs = logprobs.index_copy(0, generated, torch.cat([p[0] for p in parts]))
        entropies = entropies.index_copy(0, generated, torch.cat([p[1] for p in parts]))
    return logprobs.view(rows, length), entropies.view(rows, length)
