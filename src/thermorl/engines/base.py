"""The rollout-engine seam: what every engine takes (prompts + a controller) and produces (:class:`RolloutBatch`).

An engine samples completions with the per-token temperatures a controller chooses, clamped to the
run's ``RolloutConfig.temperature_min/max``, and returns every per-token field the loss needs. Engines
are chosen with ``rollout.engine`` (``hf``: the in-process KV-cache sampler of ``engines/hf.py``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

import torch
from torch import Tensor

from thermorl.temperature.base import TemperatureActions, TemperatureController


@dataclass
class RolloutBatch:
    """N sampled completions; every (N, T) field is aligned with ``completion_ids``."""

    prompt_ids: Tensor  # (N, P) left-padded
    prompt_mask: Tensor  # (N, P) 1 for real prompt tokens
    completion_ids: Tensor  # (N, T) right-padded with the pad id
    completion_mask: Tensor  # (N, T) float, 1 for generated tokens (EOS included)
    temperatures: Tensor  # (N, T) temperature used for each token (1.0 at padding)
    logprobs: Tensor  # (N, T) tempered log-prob at sampling time
    entropies: Tensor  # (N, T) entropy of the tempered distribution
    group_ids: Tensor  # (N,) long: rows with the same id answer the same prompt (a GRPO group)
    actions: TemperatureActions = field(default_factory=TemperatureActions)  # the temperature policy's, (N, T)
    top_k: int = 0  # the truncation tokens were sampled under (0 = none); training scores the same distribution
    top_p: float = 1.0  # nucleus mass tokens were sampled under (1 = none)

    def __len__(self) -> int:
        return self.completion_ids.shape[0]

    def select(self, index: Tensor) -> "RolloutBatch":
        """The rows ``index`` (a minibatch)."""
        return RolloutBatch(
            *(getattr(self, name)[index] for name in _ROW_FIELDS), actions=self.actions.select(index),
            top_k=self.top_k, top_p=self.top_p,
        )

    def full_inputs(self) -> tuple[Tensor, Tensor, Tensor]:
        """input ids, attention mask and position ids of prompt + completion."""
        input_ids = torch.cat([self.prompt_ids, self.completion_ids], dim=1)
        mask = torch.cat([self.prompt_mask, self.completion_mask.to(self.prompt_mask.dtype)], dim=1)
        return input_ids, mask, positions_from_mask(mask)


_ROW_FIELDS = (
    "prompt_ids", "prompt_mask", "completion_ids", "completion_mask", "temperatures", "logprobs", "entropies",
    "group_ids",
)


class RolloutEngine(Protocol):
    """Samples completions for prompts with a controller's per-token temperatures."""

    # True: the engine holds its own copy of the weights, written by ``sync_weights`` (vLLM), so sampling reads
    # no policy parameter; False: it samples from the policy's live parameters (gathered under FSDP first)
    owns_weights: bool

    def generate(
        self,
        prompts: Sequence[str],
        controller: TemperatureController,
        generator: torch.Generator | None,
        *,
        group_ids: Tensor | None = None,
        training_step: int = 0,
        greedy: bool = False,
    ) -> RolloutBatch:
        """One completion per prompt (repeat a prompt G times for a group); ``group_ids`` (N,) names each
        row's group (default: every row its own). ``greedy`` takes the argmax. Temperatures are clamped to
        the engine's ``RolloutConfig`` range; NaN/inf logits or temperatures raise ``NonFiniteError``."""
        ...

    def decode(self, batch: RolloutBatch) -> list[str]:
        """The completion texts of ``batch`` without EOS and padding."""
        ...

    def sync_weights(self) -> None:
        """Make the next ``generate`` sample from the policy's current weights (after an optimizer step)."""
        ...

    def sleep(self) -> None:
        """Free what the engine holds while the update runs (vLLM on a GPU with rollout.vllm.sleep_between_steps;
        a no-op otherwise); ``sync_weights`` and ``generate`` wake it."""
        ...


def positions_from_mask(mask: Tensor) -> Tensor:
    """Position ids that skip left padding: 0 at each row's first real token."""
    return (mask.long().cumsum(-1) - 1).clamp_min(0)


def completion_id_lists(batch: RolloutBatch) -> list[list[int]]:
    """Each completion's token ids (EOS included, padding left out), as TRL's reward functions receive them."""
    lengths = batch.completion_mask.sum(-1).long().tolist()
    return [ids[:n] for ids, n in zip(batch.completion_ids.tolist(), lengths)]


def concat_batches(batches: Sequence[RolloutBatch], pad_id: int) -> RolloutBatch:
    """The rows of ``batches`` as one batch: prompts left-padded, completions right-padded to the longest
    (padding: pad id, mask 0, temperature 1, log-prob and entropy 0, actions 0). Group ids are kept as they are."""
    prompt_len = max(b.prompt_ids.shape[1] for b in batches)
    length = max(b.completion_ids.shape[1] for b in batches)

    def left(x: Tensor, value: float) -> Tensor:
        return torch.nn.functional.pad(x, (prompt_len - x.shape[1], 0), value=value)

    def right(x: Tensor, value: float) -> Tensor:
        return torch.nn.functional.pad(x, (0, length - x.shape[1]), value=value)

    def cat(name: str, pad, value: float) -> Tensor:
        return torch.cat([pad(getattr(b, name), value) for b in batches])

    names = set(batches[0].actions.present())
    if any(set(b.actions.present()) != names for b in batches) or len({(b.top_k, b.top_p) for b in batches}) > 1:
        raise ValueError("concat_batches: the batches were sampled with different controllers or truncations")
    actions = {n: torch.cat([right(b.actions.present()[n], 0) for b in batches]) for n in names}
    return RolloutBatch(
        cat("prompt_ids", left, pad_id), cat("prompt_mask", left, 0), cat("completion_ids", right, pad_id),
        cat("completion_mask", right, 0.0), cat("temperatures", right, 1.0), cat("logprobs", right, 0.0),
        cat("entropies", right, 0.0), torch.cat([b.group_ids for b in batches]), TemperatureActions(**actions),
        top_k=batches[0].top_k, top_p=batches[0].top_p,
    )
