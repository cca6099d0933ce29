"""Rollout engines: sample completions with per-token temperatures (``hf``: the KV-cache sampler).

``build_engine`` returns the engine ``rollout.engine`` names; every caller (training, evaluation,
``generate``, the end-of-run report, ``eval --benchmarks``) samples through one, so the run's
``RolloutConfig`` (its clamp range and ``max_new_tokens``) reaches every rollout.
"""

from __future__ import annotations

from thermorl.config import RolloutConfig
from thermorl.engines.base import RolloutBatch, RolloutEngine
from thermorl.engines.hf import HFEngine
from thermorl.errors import ConfigError
from thermorl.models.policy import Policy

ENGINES = {"hf": HFEngine}


def build_engine(config: RolloutConfig, policy: Policy) -> RolloutEngine:
    """The engine named by ``config.engine``, sampling from ``policy`` with ``config``'s settings."""
    if config.engine not in ENGINES:
        raise ConfigError(f"rollout.engine {config.engine!r} is not available (have: {', '.join(ENGINES)})")
    return ENGINES[config.engine](policy, config)


__all__ = ["ENGINES", "HFEngine", "RolloutBatch", "RolloutEngine", "build_engine"]
