"""The ``algorithm.rollout_correction`` section: how the update corrects for a rollout engine whose log-probs
differ from the trainer's (the equations: ``thermorl.algorithms.rollout_correction``)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from thermorl.config.fields import doc
from thermorl.errors import ConfigError

MODES = ("token_truncate", "token_mask", "sequence_truncate", "sequence_mask")

# keys of the first layout, and what replaced them (the loader names the replacement instead of "unknown key")
MOVED = {
    "algorithm.rollout_is": "algorithm.rollout_correction.mode (tis -> token_truncate, none -> none)",
    "algorithm.rollout_is_cap": "algorithm.rollout_correction.clip_max",
}


@dataclass
class RolloutCorrectionConfig:
    mode: Literal["auto", "none", "token_truncate", "token_mask", "sequence_truncate", "sequence_mask"] = doc(
        "Correction for the rollout engine's log-probs mu differing from the trainer's pi_old (TRL's "
        "vllm_importance_sampling_mode, verl's algorithm.rollout_correction): each policy-gradient term, the LM's "
        "tokens and the temperature head's actions alike, is weighted by rho = pi_old / mu per token (token_*) or "
        "per completion (sequence_*: the product over its tokens), clipped to [clip_min, clip_max] (*_truncate, "
        "TIS) or set to 0 outside it (*_mask, MIS). 'auto' = token_truncate with rollout.engine=vllm, none with "
        "hf (whose log-probs are the trainer's own). Applies when the trainer computes pi_old itself (another "
        "engine, or algorithm.recompute_old_logprobs); the mismatch metrics (rollout_*) are logged then too.",
        "auto",
    )
    clip_max: float | None = doc("Upper bound C_max of the ratio (null = none).", 2.0)
    clip_min: float | None = doc("Lower bound C_min of the ratio (null = none).", None)

    def validate(self) -> None:
        section = "algorithm.rollout_correction"
        for name in ("clip_min", "clip_max"):
            value = getattr(self, name)
            if value is not None and value <= 0:
                raise ConfigError(f"{section}.{name} must be > 0 or null, got {value}")
        if self.clip_min is not None and self.clip_max is not None and self.clip_min > self.clip_max:
            raise ConfigError(f"{section}.clip_min must be <= clip_max, got {self.clip_min} > {self.clip_max}")
        if self.mode in MODES and self.clip_min is None and self.clip_max is None:
            raise ConfigError(f"{section}.mode={self.mode} needs clip_max or clip_min (unbounded weights)")

    def resolved(self, engine: str) -> str:
        """The mode with 'auto' resolved for ``rollout.engine`` = ``engine``."""
        if self.mode != "auto":
            return self.mode
        return "token_truncate" if engine == "vllm" else "none"
