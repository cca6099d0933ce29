"""The weights the vLLM engine serves: the policy's, under their Hugging Face names, one tensor at a time.

* LoRA adapters are merged (W + scaling B A) as each weight is read;
* under FSDP every parameter is a DTensor shard; ``full_tensor()`` gathers that one parameter when
  the engine's loader reads it (a collective: every process reads the same names in the same order,
  which the in-place reload of each process's engine does), so no process ever holds a second full copy
  of the model beside its engine's, only one gathered parameter at a time;
* a tied output head is left out (vLLM ties it to the embedding itself);
* the temperature head of an ``InModelHead`` plan follows under ``HEAD_PREFIX``.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from typing import Any

from torch import Tensor, nn

from thermorl.models.policy import Policy

HEAD_PREFIX = "thermorl_head."  # parameter names of the temperature head inside the vLLM model


def unwrapped(policy: Policy) -> nn.Module:
    """The Hugging Face model under a LoRA wrapper (the model itself without one)."""
    return policy.model.get_base_model() if hasattr(policy.model, "peft_config") else policy.model


def _full(tensor: Tensor) -> Tensor:
    from torch.distributed.tensor import DTensor

    return tensor.full_tensor() if isinstance(tensor, DTensor) else tensor


def merged_weights(policy: Policy, skip: tuple[str, ...] = ()) -> Iterator[tuple[str, Tensor]]:
    """The policy's weights under their Hugging Face names, one at a time, except ``skip``; LoRA adapters
    merged, FSDP shards gathered (one parameter per step of the iterator)."""
    model = policy.model
    if not hasattr(model, "peft_config"):
        yield from ((name, _full(p.detach())) for name, p in model.state_dict().items() if name not in skip)
        return
    from peft.tuners.lora import LoraLayer

    base = model.get_base_model()
    adapted = {  # each delta B A is computed when its weight is read, not all at once
        name: module for name, module in base.named_modules()
        if isinstance(module, LoraLayer) and module.active_adapters and module.active_adapters[0] in module.lora_A
    }
    for name, tensor in base.state_dict().items():
        if "lora_" in name:
            continue
        module_name = name.rsplit(".", 2)[0] if ".base_layer." in name else None
        clean = name.replace(".base_layer", "")
        if clean in skip:
            continue
        if module_name in adapted and name.endswith(".base_layer.weight"):
            module = adapted[module_name]
            tensor = tensor + module.get_delta_weight(module.active_adapters[0]).to(tensor.dtype)
        yield clean, tensor.detach()


def engine_weights(policy: Policy, head: nn.Module | None) -> Iterator[tuple[str, Tensor]]:
    """What the engine loads after each optimizer step: the policy's weights (a tied output head left out)
    and the temperature head's under ``HEAD_PREFIX``; lazily, one tensor at a time."""
    tied = bool(getattr(unwrapped(policy).config, "tie_word_embeddings", False))
    yield from merged_weights(policy, ("lm_head.weight",) if tied else ())
    if head is not None:
        for name, tensor in head.state_dict().items():
            yield HEAD_PREFIX + name, tensor.detach()


def save_config(policy: Policy, directory: str) -> Any:
    """The policy's Hugging Face config.json in ``directory`` (vLLM starts from it with random weights, which
    the engine then overwrites with ``engine_weights``); returns the config."""
    hf_config = copy.deepcopy(unwrapped(policy).config)
    if not getattr(hf_config, "architectures", None):  # e.g. a model loaded from a .gguf file
        hf_config.architectures = [type(unwrapped(policy)).__name__]
    hf_config.save_pretrained(directory)
    return hf_config

