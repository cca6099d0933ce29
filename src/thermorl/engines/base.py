"""What every rollout engine produces: :class:`RolloutBatch`, the sampled completions with their per-token fields."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor

TEMPERATURE_RANGE = (0.05, 5.0)  # the defaults of RolloutConfig.temperature_min / temperature_max


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
    records: dict[str, Tensor] = field(default_factory=dict)  # controller actions, (N, T) each

    def __len__(self) -> int:
        return self.completion_ids.shape[0]

    def select(self, index: Tensor) -> "RolloutBatch":
        """The rows ``index`` (a minibatch)."""
        return RolloutBatch(
            *(getattr(self, name)[index] for name in _TENSOR_FIELDS),
            records={k: v[index] for k, v in self.records.items()},
        )

    def full_inputs(self) -> tuple[Tensor, Tensor, Tensor]:
        """input ids, attention mask and position ids of prompt + completion."""
        input_ids = torch.cat([self.prompt_ids, self.completion_ids], dim=1)
        mask = torch.cat([self.prompt_mask, self.completion_mask.to(self.prompt_mask.dtype)], dim=1)
        return input_ids, mask, positions_from_mask(mask)


_TENSOR_FIELDS = (
    "prompt_ids", "prompt_mask", "completion_ids", "completion_mask", "temperatures", "logprobs", "entropies"
)


def positions_from_mask(mask: Tensor) -> Tensor:
    """Position ids that skip left padding: 0 at each row's first real token."""
    return (mask.long().cumsum(-1) - 1).clamp_min(0)
