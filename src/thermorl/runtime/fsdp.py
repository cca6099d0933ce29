"""FSDP2 (``torch.distributed.fsdp.fully_shard``): the policy's weights, gradients and AdamW state
sharded over the processes of a job.

What is sharded: every decoder layer is its own ``fully_shard`` unit (gathered just before it
runs, freed after); the rest of the language model (embeddings, final norm, output head; tied
or not) is the root unit. The temperature head is *replicated*: it has a few thousand
parameters, and sharding it would add a gather per sampled token for nothing; its gradients
are averaged like the data-parallel path's (``Distributed.average_gradients``).

The policy runs its decoder stack and its output head as two calls (``Policy.hidden`` and
``Policy.logits``, so logits can be computed in chunks), not through ``model.forward``; the root
unit is therefore a small wrapper whose ``hidden`` and ``logits`` methods are registered as FSDP
forward methods (``register_fsdp_forward_method``), so both gather the root's parameters.

Sampling and evaluation run on gathered weights (``full_weights``): every unit is unsharded once,
generation then runs without collectives (processes may generate different numbers of tokens
and evaluate different numbers of problems), and the units are resharded for the update.
That costs one full copy of the weights per process during rollouts (8 GB for a 4B model in
bf16), the price of an in-process rollout engine.

The update equals the single-process update on the same global batch: FSDP averages gradients
over processes in its reduce-scatter, exactly as the data-parallel path's all-reduce does.

Settings come from an accelerate config (``distributed_type: FSDP``, ``fsdp_version: 2``, read
through accelerate's ``FullyShardedDataParallelPlugin``) or, under plain torchrun, from
``distributed.*``. Mixed precision ``bf16`` keeps float32 master weights and AdamW state, gathers
and computes in bfloat16, and reduces gradients in float32. Activation checkpointing is the
model's own (``model.gradient_checkpointing``, non-reentrant), applied before sharding.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from thermorl.errors import ConfigError


@dataclass(frozen=True)
class FsdpSettings:
    """How the policy is sharded (resolved from accelerate's FSDP plugin or ``distributed.*``)."""

    reshard_after_forward: bool = True  # free each layer's gathered weights after its forward
    mixed_precision: str = "no"  # "no" | "bf16"
    activation_checkpointing: bool = False


def accelerate_fsdp_settings(fallback: FsdpSettings) -> FsdpSettings | None:
    """The FSDP settings of an ``accelerate launch --config_file`` with ``distributed_type: FSDP``
    (None without one). FSDP1 is refused: thermorl shards with FSDP2 only."""
    if os.environ.get("ACCELERATE_USE_FSDP", "false").lower() != "true":
        return None
    from accelerate.utils import FullyShardedDataParallelPlugin

    plugin = FullyShardedDataParallelPlugin()
    if plugin.fsdp_version != 2:
        raise ConfigError(
            f"accelerate config fsdp_version {plugin.fsdp_version} is not supported; set fsdp_version: 2 "
            "(thermorl shards with FSDP2, torch.distributed.fsdp.fully_shard)"
        )
    precision = os.environ.get("ACCELERATE_MIXED_PRECISION", "no")
    if precision not in ("no", "bf16"):
        raise ConfigError(f"accelerate mixed_precision {precision} is not supported with FSDP; use bf16 or no")
    return FsdpSettings(
        reshard_after_forward=bool(plugin.reshard_after_forward),
        mixed_precision=precision if precision != "no" else fallback.mixed_precision,
        activation_checkpointing=bool(plugin.activation_checkpointing) or fallback.activation_checkpointing,
    )


class ShardedForward(nn.Module):
    """FSDP's root unit: owns the language model and runs its two halves as FSDP forward methods."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def hidden(self, **inputs: Any) -> Any:
        return self.model.get_decoder()(**inputs)

    def logits(self, hidden: Tensor) -> Tensor:
        return self.model.get_output_embeddings()(hidden)


def decoder_layers(model: nn.Module) -> list[nn.Module]:
    """The decoder's repeated blocks (``model.layers`` of every Hugging Face decoder-only LM)."""
    layers = getattr(model.get_decoder(), "layers", None)
    if not isinstance(layers, nn.ModuleList) or len(layers) == 0:
        raise ConfigError(f"cannot shard {type(model).__name__} with FSDP: its decoder has no `layers` list")
    return list(layers)


def shard_model(model: nn.Module, settings: FsdpSettings) -> ShardedForward:
    """fully_shard every decoder layer, then the root (embeddings, norm, head); returns the root.

    The model's parameters become DTensor shards in place, so build optimizers afterwards.
    """
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard, register_fsdp_forward_method

    if settings.activation_checkpointing and hasattr(model, "gradient_checkpointing_enable"):
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    mp = MixedPrecisionPolicy()
    if settings.mixed_precision == "bf16":
        mp = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
    for layer in decoder_layers(model):
        fully_shard(layer, reshard_after_forward=settings.reshard_after_forward, mp_policy=mp)
    root = ShardedForward(model)
    # the root's weights are needed again at once (head after decoder, then backward): keep them gathered
    fully_shard(root, reshard_after_forward=False, mp_policy=mp)
    register_fsdp_forward_method(root, "hidden")
    register_fsdp_forward_method(root, "logits")
    root.layer_reshard = settings.reshard_after_forward
    return root


def shard_policy(policy: Any, settings: FsdpSettings) -> None:
    """Shard ``policy.model`` in place and route ``policy.hidden`` / ``policy.logits`` through the root."""
    if hasattr(policy.model, "peft_config"):
        raise ConfigError(
            "model.lora_r > 0 is not supported with FSDP (the trainable adapters are small): train LoRA data-parallel"
        )
    policy.sharded = shard_model(policy.model, settings)


def copy_for_reference(policy: Any, settings: FsdpSettings) -> Any:
    """A frozen sharded copy of an *unsharded* policy for the KL reference."""
    model = copy.deepcopy(policy.model).eval().requires_grad_(False)
    reference = type(policy)(model, policy.tokenizer)
    reference.sharded = shard_model(model, settings)
    return reference


def fsdp_units(root: nn.Module) -> list[Any]:
    from torch.distributed.fsdp import FSDPModule

    return [m for m in root.modules() if isinstance(m, FSDPModule)]


@contextmanager
def full_weights(*policies: Any) -> Iterator[None]:
    """Gather every sharded unit of ``policies`` for the block (rollouts, evaluation), then reshard.

    Every process must enter together (the gather is a collective); inside, forwards run without
    collectives. A no-op for unsharded policies.
    """
    roots = [p.sharded for p in policies if p is not None and getattr(p, "sharded", None) is not None]
    units = [unit for root in roots for unit in fsdp_units(root)]
    for unit in units:
        unit.unshard()
        unit.set_reshard_after_forward(False, recurse=False)
    try:
        yield
    finally:
        for root in roots:
            for unit in fsdp_units(root):
                unit.reshard()
                unit.set_reshard_after_forward(root.layer_reshard if unit is not root else False, recurse=False)


def local(tensor: Tensor) -> Tensor:
    """This process's shard of a DTensor (the tensor itself otherwise)."""
    from torch.distributed.tensor import DTensor

    return tensor.to_local() if isinstance(tensor, DTensor) else tensor


def is_sharded(tensor: Tensor) -> bool:
    from torch.distributed.tensor import DTensor

    return isinstance(tensor, DTensor)


def clip_grad_norm(parameters: list[nn.Parameter], max_norm: float) -> Tensor:
    """torch's clip_grad_norm_ over (possibly sharded) parameters; the global norm as a plain tensor."""
    norm = torch.nn.utils.clip_grad_norm_(parameters, max_norm)
    return norm.full_tensor() if is_sharded(norm) else norm
