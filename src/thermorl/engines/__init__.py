"""Rollout engines: sample completions with per-token temperatures (``hf``: the KV-cache sampler;
``vllm``: a colocated vLLM engine, ``engines/vllm.py``, importable without vLLM installed).

Each engine registers itself in ``thermorl.config.registry.ENGINES`` with its config section
(``rollout.<name>``, e.g. ``VLLMConfig`` as ``rollout.vllm``). ``build_engine`` returns the engine
``rollout.engine`` names; every caller (training, evaluation,
``generate``, the end-of-run report, ``eval --benchmarks``) samples through one, so the run's
``RolloutConfig`` (its clamp range and ``max_new_tokens``) reaches every rollout.
"""

from __future__ import annotations

from thermorl.config import RolloutConfig
from thermorl.config.registry import ENGINES
from thermorl.engines.base import RolloutBatch, RolloutEngine
from thermorl.engines.hf import HFEngine
from thermorl.engines.vllm import VLLMEngine
from thermorl.errors import ConfigError
from thermorl.models.policy import Policy
from thermorl.temperature.base import TemperatureController


def build_engine(
    config: RolloutConfig, policy: Policy, controller: TemperatureController | None = None
) -> RolloutEngine:
    """The engine registered as ``config.engine``, built as ``build(policy, config, controller)``.

    ``controller``: the run's controller, for an engine that builds its temperature policy in (vLLM
    runs the introspective head inside its model); thermorl's own sampler needs none.
    """
    if config.engine not in ENGINES:
        raise ConfigError(f"rollout.engine {config.engine!r} is not available (have: {', '.join(ENGINES)})")
    return ENGINES[config.engine].build(policy, config, controller)


__all__ = ["ENGINES", "HFEngine", "RolloutBatch", "RolloutEngine", "VLLMEngine", "build_engine"]
