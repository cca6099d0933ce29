"""``rollout.engine: vllm``: a colocated vLLM engine (TRL's "colocate" pattern) for every controller.

The engine is built once in the training process from the policy's own weights (so any model
thermorl loads, a GGUF file or a LoRA adapter included, is what vLLM serves) and runs in-process
(``VLLM_ENABLE_V1_MULTIPROCESSING=0``) on vLLM's V1 model runner (``VLLM_USE_V2_MODEL_RUNNER=0``,
the runner whose logits-processor interface thermorl implements; see the README). Any controller
runs here through the sampling plan it declares (``TemperatureController.sampling``), never by name:

* ``PerRequest`` (fixed, linear, tampo): vLLM's own ``SamplingParams.temperature``;
* ``PerPosition`` (ead, entropy): the plan's rule in thermorl's logits processor (``vllm_plugin``);
* ``InModelHead`` (introspective): a copy of the head runs inside vLLM, in the model's logits
  computation, on the final normalised hidden state of every step; the processor calls the plan's
  ``draw`` with a generator per request and divides the logits by the drawn temperature.

Sampling log-probs are vLLM's ``processed_logprobs`` (of the tempered distribution, what was
sampled from). Each request gets a seed drawn from the run's seeded stream (and the head one from
the controller's), so the same run state samples the same completions. ``sync`` writes the
policy's weights (LoRA merged) and the head's into the engine after every optimizer step and
resets the prefix cache. The trainer scores the log-probs at the recorded temperatures itself and
measures the mismatch and corrects for it (``runtime.correction``, ``algorithm.rollout_correction``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import random
import tempfile
from collections.abc import Iterator, Sequence
from typing import Any

import torch
from torch import Tensor

from thermorl.config import RolloutConfig
from thermorl.config.registry import ENGINES
from thermorl.engines.base import RolloutBatch
from thermorl.engines.hf import decode_completions, encode_prompts, stop_token_ids
from thermorl.engines.vllm_config import (  # noqa: F401  (check_supported, vllm_available: this module's names too)
    INSTALL_HINT,
    VLLMConfig,
    can_sleep,
    check_supported,
    vllm_available,
    world_size,
)
from thermorl.engines.vllm_requests import assemble_batch, build_requests
from thermorl.engines.vllm_weights import engine_weights, save_config
from thermorl.errors import ConfigError, EngineError, NonFiniteError, ThermoRLError
from thermorl.models.policy import Policy
from thermorl.temperature.base import InModelHead, SamplingPlan, TemperatureController

ARCHITECTURES = ("LlamaForCausalLM", "Qwen2ForCausalLM", "Qwen3ForCausalLM")  # vLLM model classes thermorl wraps


def _vllm_model_class(architecture: str) -> type:
    """vLLM's own class for ``architecture`` (imported by name, statically: no dynamic imports)."""
    if architecture == "LlamaForCausalLM":
        from vllm.model_executor.models.llama import LlamaForCausalLM

        return LlamaForCausalLM
    if architecture == "Qwen2ForCausalLM":
        from vllm.model_executor.models.qwen2 import Qwen2ForCausalLM

        return Qwen2ForCausalLM
    from vllm.model_executor.models.qwen3 import Qwen3ForCausalLM

    return Qwen3ForCausalLM


@contextlib.contextmanager
def engine_failure(doing: str) -> Iterator[None]:
    """Turn an unexpected exception inside vLLM into one line (:class:`EngineError`): the trainer then ends
    the run at its newest checkpoint (a new run without one is removed) and the CLI prints the line."""
    try:
        yield
    except (ThermoRLError, NonFiniteError, KeyboardInterrupt):
        raise
    except Exception as err:  # noqa: BLE001  (anything vLLM raises; its own log above has the traceback)
        message = str(err).strip().splitlines()[0] if str(err).strip() else ""
        raise EngineError(f"the vLLM engine failed while {doing}: {type(err).__name__}: {message}") from err


@contextlib.contextmanager
def _kept_random_state() -> Iterator[None]:
    """vLLM seeds the global torch / random / numpy generators when it starts in-process; keep the run's."""
    import numpy

    python_state, numpy_state = random.getstate(), numpy.random.get_state()
    with torch.random.fork_rng(devices=[]):
        yield
    random.setstate(python_state)
    numpy.random.set_state(numpy_state)


@ENGINES.register("vllm", VLLMConfig)
class VLLMEngine:
    """Samples ``RolloutBatch`` es with vLLM; ``sync`` after each optimizer step."""

    name = "vllm"
    owns_weights = True  # its own copy, written by sync_weights: sampling needs no gathered (FSDP) policy
    _live = 0  # engines of this process not yet closed (they share vLLM's process-wide distributed state)
    exact_logprobs = False  # the trainer recomputes log-probs and measures the mismatch

    def __init__(
        self, policy: Policy, config: RolloutConfig, controller: TemperatureController | None = None
    ) -> None:
        """An engine serving ``policy`` with ``config`` (the run's RolloutConfig; vLLM settings in
        ``config.vllm``). The head of a ``controller`` whose plan is an ``InModelHead`` is built into the vLLM
        model (and synced with it); a controller with another plan runs on any engine."""
        if not vllm_available():
            raise ConfigError(f"rollout.engine=vllm needs vLLM, which is not installed: {INSTALL_HINT}")
        self.policy, self.rollout, self.config = policy, config, config.vllm
        self.stop_ids, self.pad_id = stop_token_ids(policy), policy.tokenizer.pad_token_id
        plan = sampling_plan(controller) if controller is not None else None
        self.head = plan.module if isinstance(plan, InModelHead) else None  # built into the vLLM model
        self.sleeps, self.asleep = self.config.sleep_between_steps and can_sleep(), False
        max_model_len = self.config.max_model_len
        self.directory = tempfile.TemporaryDirectory(prefix="thermorl-vllm-")
        self._set_environment(torch.get_num_threads())
        hf_config = save_config(policy, self.directory.name)
        from vllm import LLM

        architecture = self._register_model(hf_config)
        dtype = self.config.dtype if self.config.dtype != "auto" else str(next(policy.model.parameters()).dtype).split(".")[-1]
        limit = getattr(hf_config, "max_position_embeddings", max_model_len)
        from thermorl.engines.vllm_plugin import ThermoRLTemperature

        max_model_len = min(max_model_len, limit)
        arguments = {
            "dtype": dtype, "enforce_eager": self.config.enforce_eager, "max_model_len": max_model_len,
            "enable_prefix_caching": self.config.prefix_caching, "max_num_seqs": self.config.max_num_seqs,
            "gpu_memory_utilization": self.config.gpu_memory_utilization,
            # whole prefills only (see VLLMConfig.max_num_batched_tokens): the budget must hold the longest one
            "enable_chunked_prefill": False,
            "max_num_batched_tokens": max(self.config.max_num_batched_tokens, max_model_len),
            # one engine in every process of a data-parallel or FSDP job (TRL's colocate mode): vLLM takes its
            # rank and device from the launcher's environment and treats the processes as external data parallel
            **({"distributed_executor_backend": "external_launcher"} if world_size() > 1 else {}),
            **self.config.engine_kwargs,
        }
        original_set_num_threads = torch.set_num_threads
        with _kept_random_state(), engine_failure("starting"):
            self.llm = LLM(
                # random weights at start ("dummy"): sync_weights below writes the policy's, one tensor at a time,
                # so no process writes or holds a second full copy (under FSDP each parameter is gathered alone)
                model=self.directory.name, load_format="dummy", skip_tokenizer_init=True, seed=0,
                logprobs_mode="processed_logprobs",
                generation_config="vllm", enable_sleep_mode=self.sleeps,
                logits_processors=[ThermoRLTemperature], hf_overrides={"architectures": [architecture]}, **arguments,
            )
        torch.set_num_threads = original_set_num_threads  # vLLM's CPU worker replaces it in-process
        VLLMEngine._live += 1
        self.sync_weights()

    # ------------------------------------------------------------------ start

    def _set_environment(self, threads: int) -> None:
        os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"  # in-process: weights and records by reference
        os.environ["VLLM_USE_V2_MODEL_RUNNER"] = "0"  # the runner whose logits processors thermorl implements
        os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", str(self.config.kv_cache_gib))
        os.environ.setdefault("VLLM_LOGGING_STREAM", "ext://sys.stderr")  # stdout carries eval's JSON, generate's text
        first = int(os.environ.get("LOCAL_RANK", "0")) * max(threads, 1)  # processes on one host: their own cores
        cores = self.config.cpu_cores or (f"{first}-{first + threads - 1}" if threads > 1 else str(first)
                                          if threads == 1 else "auto")
        os.environ.setdefault("VLLM_CPU_OMP_THREADS_BIND", cores)

    def _register_model(self, hf_config: Any) -> str:
        """Register thermorl's wrapper of the policy's vLLM model class (with the head if there is one)."""
        from vllm import ModelRegistry

        from thermorl.engines.vllm_plugin import head_model

        architecture = (getattr(hf_config, "architectures", None) or [""])[0]
        if architecture not in ARCHITECTURES:
            raise ConfigError(
                f"rollout.engine=vllm serves {', '.join(ARCHITECTURES)} models, not {architecture or 'this model'} "
                "(use rollout.engine=hf)"
            )
        base = _vllm_model_class(architecture)
        name = f"ThermoRL{architecture}" + ("WithHead" if self.head is not None else "")
        ModelRegistry.register_model(name, head_model(base, self.head))
        return name

    # ------------------------------------------------------------------ weights

    @torch.no_grad()
    def sync_weights(self) -> None:
        """Write the policy's current (LoRA-merged) weights and the head's into the engine in place and
        reset its prefix cache (cached prompt keys/values were computed with the old weights)."""
        from thermorl.engines.vllm_plugin import refresh_cpu_kernels

        weights = engine_weights(self.policy, self.head)  # lazy: one (gathered) tensor at a time
        if self.asleep:  # weights first, then the KV cache (TRL's order): no peak with both and the update's memory
            self._wake(["weights"])
        with engine_failure("loading the policy's weights"):
            self.llm.collective_rpc("reload_weights", kwargs={"weights_iterator": weights, "is_checkpoint_format": True})
            self.llm.collective_rpc(refresh_cpu_kernels)
        if self.asleep:
            self._wake(["kv_cache"])
        with engine_failure("loading the policy's weights"):
            self._reset_prefix_cache()

    def _reset_prefix_cache(self) -> None:
        if not self.llm.reset_prefix_cache():
            raise RuntimeError("vLLM did not reset its prefix cache")

    def sleep(self) -> None:
        """Free the engine's GPU memory for the update (``rollout.vllm.sleep_between_steps`` on a GPU): level 1,
        weights offloaded to host memory (every buffer kept: a weight reload rewrites parameters only), KV cache
        freed. ``sync_weights`` or the next rollout wakes it."""
        if self.sleeps and not self.asleep:
            with engine_failure("going to sleep"):
                self.llm.sleep(level=1)
            self.asleep = True

    def _wake(self, tags: list[str] | None = None) -> None:
        with engine_failure("waking up"):
            self.llm.wake_up(tags)
        self.asleep = tags == ["weights"]  # the KV cache still to come

    def close(self) -> None:
        """Shut the engine down. vLLM's in-process engine core tears down the process-wide distributed state
        when it shuts down (``EngineCore.shutdown`` calls ``cleanup_dist_env_and_memory``), which every other
        engine of this process still samples through; while another one is alive only the rest of that
        cleanup runs (vLLM's environment cache and the garbage collector), not the teardown."""
        VLLMEngine._live -= 1
        if VLLMEngine._live > 0:
            import gc

            import vllm.envs
            import vllm.v1.engine.core as engine_core

            def cleanup_keeping_distributed_state(*args, **kwargs) -> None:
                vllm.envs.disable_envs_cache()
                gc.unfreeze()
                gc.collect()

            cleanup = engine_core.cleanup_dist_env_and_memory
            engine_core.cleanup_dist_env_and_memory = cleanup_keeping_distributed_state
            try:
                self.llm.llm_engine.engine_core.shutdown()
            finally:
                engine_core.cleanup_dist_env_and_memory = cleanup
        del self.llm
        self.directory.cleanup()

    # ------------------------------------------------------------------ sampling

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
        """The RolloutEngine protocol: encode ``prompts`` as thermorl's sampler does, then :meth:`sample`."""
        prompt_ids, prompt_mask = encode_prompts(self.policy, list(prompts))
        rollout = self.rollout
        batch = self.sample(
            controller, prompt_ids, prompt_mask, rollout.max_new_tokens, generator, greedy, training_step,
            (rollout.temperature_min, rollout.temperature_max), rollout.top_k, rollout.top_p,
        )
        if group_ids is not None:
            batch = dataclasses.replace(batch, group_ids=group_ids.to(batch.group_ids.device))
        return batch

    def decode(self, batch: RolloutBatch) -> list[str]:
        return decode_completions(self.policy, batch)

    @torch.no_grad()
    def sample(
        self,
        controller: TemperatureController,
        prompt_ids: Tensor,
        prompt_mask: Tensor,
        max_new_tokens: int,
        generator: torch.Generator | None = None,
        greedy: bool = False,
        training_step: int = 0,
        temperature_range: tuple[float, float] = (0.05, 5.0),
        top_k: int = 0,
        top_p: float = 1.0,
    ) -> RolloutBatch:
        """One completion per (left-padded) prompt row, as ``thermorl.engines.hf.sample`` returns it;
        entropies are left at zero (vLLM returns none; the trainer's recomputation fills them).

        ``top_k`` / ``top_p`` go to vLLM's sampler, which truncates after the temperature (ours from the
        logits processor, which runs before it, or vLLM's own) with the rules of ``sampling_log_softmax``;
        its ``processed_logprobs`` are those of the truncated, renormalised distribution. Greedy rows
        ignore them (their log-probs are of the untempered, untruncated distribution)."""
        from vllm import SamplingParams

        num_rows = prompt_ids.shape[0]
        seeds = [None] * num_rows if greedy else torch.randint(
            0, 2**62, (num_rows,), generator=generator, device=generator.device if generator is not None else None
        ).tolist()
        if self.asleep:  # e.g. an update skipped on NaN: the weights it offloaded are still the policy's
            self._wake()
        controller.start(num_rows, training_step)
        plan = None if greedy else self._plan(controller)
        if greedy:
            top_k, top_p = 0, 1.0
        base = {"max_tokens": max_new_tokens, "logprobs": 0, "stop_token_ids": self.stop_ids, "detokenize": False,
                "top_k": top_k, "top_p": top_p}
        requests = build_requests(plan, num_rows, seeds, temperature_range, base)
        params = [SamplingParams(**kwargs) for kwargs in requests.params]
        prompts = [{"prompt_token_ids": ids[m.bool()].tolist()} for ids, m in zip(prompt_ids.cpu(), prompt_mask.cpu())]
        # each call starts from an empty prefix cache: the group's shared prompt is still computed once,
        # and a call's result does not depend on what earlier calls left (so a resumed run samples the same)
        with engine_failure("sampling"):
            self._reset_prefix_cache()
            outputs = self.llm.generate(prompts, params, use_tqdm=False)
        completions = [list(o.outputs[0].token_ids) for o in outputs]
        logprobs = [[step[t].logprob for step, t in zip(o.outputs[0].logprobs, ids)] for o, ids in zip(outputs, completions)]
        records = {}
        if requests.temperatures is None:
            from thermorl.engines.vllm_plugin import collect_records

            with engine_failure("sampling"):
                records = self.llm.collective_rpc(collect_records, args=(requests.keys,))[0]
        batch = assemble_batch(prompt_ids, prompt_mask, completions, logprobs, requests, records, self.pad_id)
        return dataclasses.replace(batch, top_k=top_k, top_p=top_p)

    def _plan(self, controller: TemperatureController) -> SamplingPlan:
        plan = sampling_plan(controller)
        if isinstance(plan, InModelHead) and plan.module is not self.head:
            raise ConfigError(f"this vLLM engine was built without the {controller.name} controller's head")
        return plan


def sampling_plan(controller: TemperatureController) -> SamplingPlan:
    """The controller's plan, or one line saying it declares none (it then runs on rollout.engine=hf only)."""
    try:
        return controller.sampling()
    except NotImplementedError:
        raise ConfigError(
            f"rollout.engine=vllm cannot run temperature.controller {controller.name!r}: it declares no sampling plan "
            "(TemperatureController.sampling); use rollout.engine=hf"
        ) from None
