"""The trainer's forward pass over a sampled batch: log-probs, entropies and hidden states with gradients.

Engines only sample; this is what the update (and its pi_old / rollout-correction pass) scores a batch
with, whichever engine sampled it.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

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
    logits: Tensor  # (N, T, V) untempered


def score(policy: Policy, batch: RolloutBatch, share_prompts: bool = True) -> Scored:
    """Recompute tempered log-probs of ``batch`` with gradients, at the temperatures sampling used (and of the
    distribution truncated by the batch's top-k / top-p, the sampled token always kept).

    Rows with the same prompt (a GRPO group) share one pass over that prompt: its keys and values
    are computed once and indexed per row, and the completions attend to them. Indexing is
    differentiable, so the gradient is that of one full pass over every row (the tests compare
    both), at a fraction of the prompt compute. Gradient checkpointing keeps the full pass (it
    runs without a KV cache).
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
    logits = policy.logits(hidden)
    logprobs, entropies = sampled_logprobs(logits, batch.completion_ids, batch.temperatures, batch.top_k, batch.top_p)
    return Scored(logprobs, entropies, hidden, logits)
