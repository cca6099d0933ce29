"""Sharded checkpoints of an FSDP run with ``torch.distributed.checkpoint`` (DCP).

Every process writes its own shard of the language model and of its AdamW state into
``step-N/sharded/`` through DCP's Hugging Face storage (safetensors files whose headers hold
each shard's offsets: nothing is pickled, unlike DCP's default ``.metadata``). Loading reads
the shards back into the current processes' shards, in place. The rest of the checkpoint
(controller, head optimizer, every process's random streams, state.json, manifest) is the
single-process format, written by process 0; the whole directory is written under a
temporary name and renamed once every process has finished its part (``checkpoint``).

A consolidated Hugging Face model (``step-N/model/``) is written into the last checkpoint of a
run, and on demand (``consolidate``) for ``eval`` / ``generate`` of any sharded checkpoint.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import torch
from torch import nn

from thermorl.errors import CheckpointError

SHARDED_DIR = "sharded"
MODEL_PREFIX, OPTIMIZER_PREFIX = "model", "optim"


def _untied(model: nn.Module, state: dict[str, Any]) -> dict[str, Any]:
    """``state`` without the second name of tied weights (safetensors refuses shared storage; the
    first name restores both)."""
    tied = {n for n, _ in model.named_parameters(remove_duplicate=False)} - {n for n, _ in model.named_parameters()}
    return {k: v for k, v in state.items() if k not in tied}


def _dcp_state(model: nn.Module, optimizer: torch.optim.Optimizer | None) -> tuple[dict[str, Any], list]:
    """(tensors DCP saves / loads in place, the optimizer's param_groups for state.json)."""
    from torch.distributed.checkpoint.state_dict import get_model_state_dict, get_optimizer_state_dict

    state: dict[str, Any] = {MODEL_PREFIX: _untied(model, get_model_state_dict(model))}
    groups: list = []
    if optimizer is not None:
        optim = get_optimizer_state_dict(model, optimizer)  # creates AdamW's state on a fresh optimizer
        state[OPTIMIZER_PREFIX] = {f"{fqn}.{k}": v for fqn, values in optim["state"].items() for k, v in values.items()}
        groups = optim["param_groups"]
    return state, groups


def save_shards(directory: Path, model: nn.Module, optimizer: torch.optim.Optimizer | None) -> list:
    """Collective: every process writes its shards into ``directory/sharded``; returns param_groups."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint import HuggingFaceStorageWriter
    from torch.distributed.checkpoint.api import CheckpointException

    state, groups = _dcp_state(model, optimizer)
    try:  # DCP reports a failure in any process to every process
        dcp.save(state, storage_writer=HuggingFaceStorageWriter(str(directory / SHARDED_DIR), save_distributed=True))
    except CheckpointException as err:
        raise CheckpointError(f"cannot write the shards of checkpoint {directory}: {_first_line(err)}") from None
    return groups


def load_shards(directory: Path, model: nn.Module, optimizer: torch.optim.Optimizer | None, groups: list) -> None:
    """Collective: read this process's shards of model and optimizer from ``directory/sharded``."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint import HuggingFaceStorageReader
    from torch.distributed.checkpoint.state_dict import set_optimizer_state_dict

    state, _ = _dcp_state(model, optimizer)
    dcp.load(state, storage_reader=HuggingFaceStorageReader(str(directory / SHARDED_DIR)))  # in place
    if optimizer is not None:
        per_param: dict[str, dict[str, Any]] = {}
        for name, tensor in state[OPTIMIZER_PREFIX].items():
            fqn, key = name.rsplit(".", 1)
            per_param.setdefault(fqn, {})[key] = tensor
        set_optimizer_state_dict(model, optimizer, {"state": per_param, "param_groups": groups})


def write_model(directory: Path, model: nn.Module, tokenizer: Any, state: dict[str, torch.Tensor]) -> None:
    """A Hugging Face model directory from a full state dict (``full_state``) of a sharded ``model``."""
    model.save_pretrained(directory, state_dict=state)
    tokenizer.save_pretrained(directory)


def full_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """Collective: the unsharded weights, on process 0's CPU (empty elsewhere)."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    options = StateDictOptions(full_state_dict=True, cpu_offload=True)
    return _untied(model, get_model_state_dict(model, options=options))


def has_shards(checkpoint: Path) -> bool:
    return (checkpoint / SHARDED_DIR).is_dir()


def load_shards_into(model: nn.Module, checkpoint: Path) -> None:
    """One process, no process group: the full weights of a sharded checkpoint into ``model``."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint import HuggingFaceStorageReader

    state = {MODEL_PREFIX: _untied(model, model.state_dict())}
    dcp.load(state, storage_reader=HuggingFaceStorageReader(str(checkpoint / SHARDED_DIR)), no_dist=True)


def consolidate(checkpoint: Path, model: nn.Module, tokenizer: Any) -> Path:
    """Write ``checkpoint/model`` (a Hugging Face directory) from its shards, atomically; ``model`` is
    an unsharded model of the run's architecture. Returns the model directory."""
    target = checkpoint / "model"
    if target.is_dir():
        return target
    load_shards_into(model, checkpoint)
    tmp = checkpoint / ".tmp-model"
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    tmp.replace(target)
    return target


def _first_line(err: Exception) -> str:
    lines = [line for line in str(err).splitlines() if line.strip()]
    return lines[-1].strip() if lines else type(err).__name__


def consolidated_model_dir(checkpoint: Path, run_config: Path) -> Path:
    """``checkpoint/model``, consolidated from the checkpoint's verified shards when it has none yet
    (one process, on CPU, with the model the run's config describes)."""
    if (checkpoint / "model").is_dir() or not has_shards(checkpoint):
        return checkpoint / "model"
    from dataclasses import replace

    from thermorl.config import load_config
    from thermorl.models.policy import load_policy
    from thermorl.runtime.checkpoint import verify_checkpoint

    if not verify_checkpoint(checkpoint):
        raise CheckpointError(f"checkpoint {checkpoint}: missing files or checksum mismatch (partial or corrupted)")
    config = load_config(run_config)
    policy = load_policy(replace(config.model, device="cpu"), seed=config.train.seed)
    return consolidate(checkpoint, policy.model, policy.tokenizer)
