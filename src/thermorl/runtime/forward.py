"""The trainer's forward pass over a sampled batch: log-probs, entropies and hidden states with gradients.

Engines only sample; this is what the update (and its pi_old / rollout-correction pass) scores a batch
with, whichever engine sampled it.

The LM head can run fused with the log-softmax, chunk by chunk (``chunk_tokens``, Liger's fused linear
cross-entropy idea): generated tokens' hidden states -> a chunk of rows -> logits -> tempered log-softmax
-> the token's log-prob and the entropy, each chunk under ``torch.utils.checkpoint`` so its logits are
recomputed in backward instead of kept. The full (tokens x vocab) logits never exist at once (at 64 x 128
tokens and a 49k vocabulary they are 1.6 GB of float32 per forward, and autograd keeps several such
tensors), and padding positions are not scored at all (log-prob and entropy 0 there).

Columns that are padding in every row of the batch scored (a micro-batch's tail past its longest completion,
its prompts' common left padding) are cut before the pass (``trim_padding``) and the outputs padded back
with zeros. Causal attention makes the kept positions' values those of the uncut pass, so this costs
nothing in exactness and saves the padding's compute; ordering micro-batches by length leaves more of it to
cut (``runtime.update.micro_batches``; verl's dynamic batch size and TRL's padding-free batches save padding
on GPU).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
from torch import Tensor
from torch.nn.functional import pad
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

    Columns that are padding in every row are not run (``trim_padding``); their outputs are 0.
    """
    width = batch.completion_ids.shape[1]
    scored = _score(policy, trim_padding(batch), share_prompts, chunk_tokens)
    return pad_columns(scored, width)


def trim_padding(batch: RolloutBatch) -> RolloutBatch:
    """``batch`` without the columns that are padding in every row: the prompts' common left padding and the
    completions' columns past the longest one (at least one column is kept). Only the fields a forward
    pass reads are cut (ids, masks, temperatures); the others stay as they are."""
    prompt_used = batch.prompt_mask.bool().any(0).nonzero()
    start = int(prompt_used[0]) if len(prompt_used) else 0
    completion_used = batch.completion_mask.bool().any(0).nonzero()
    end = int(completion_used[-1]) + 1 if len(completion_used) else 1
    if start == 0 and end == batch.completion_ids.shape[1]:
        return batch
    return replace(
        batch, prompt_ids=batch.prompt_ids[:, start:], prompt_mask=batch.prompt_mask[:, start:],
        completion_ids=batch.completion_ids[:, :end], completion_mask=batch.completion_mask[:, :end],
        temperatures=batch.temperatures[:, :end],
    )


def pad_columns(scored: Scored, width: int) -> Scored:
    """``scored`` padded with zeros on the right to ``width`` completion columns."""
    missing = width - scored.logprobs.shape[1]
    if missing == 0:
        return scored
    return Scored(
        pad(scored.logprobs, (0, missing)), pad(scored.entropies, (0, missing)), pad(scored.hidden, (0, 0, 0, missing)),
        None if scored.logits is None else pad(scored.logits, (0, 0, 0, missing)),
    )


def _score(policy: Policy, batch: RolloutBatch, share_prompts: bool, chunk_tokens: int) -> Scored:
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
