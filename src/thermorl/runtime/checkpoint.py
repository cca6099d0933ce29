"""Checkpoints as plain files: safetensors for tensors, JSON for everything else.

Layout of ``RUN/checkpoints/step-000100/``:
  model/                 Hugging Face directory (config.json, model.safetensors, tokenizer)
  controller.safetensors controller tensors (e.g. the temperature head), may be empty
  optimizer.safetensors  optimizer tensors, flattened ``{group}.{param}.{key}``
  state.json             step, controller scalars, optimizer hyper-parameters, RNG states
  manifest.json          sha256 of every file above (written last)

Under several processes every process's random streams are saved (``rank{k}.rng.*`` tensors and
``state.json["ranks"]``), so a resumed multi-process run continues exactly. An FSDP run writes
``sharded/`` (every process's shard of the model and its AdamW state, ``runtime.sharded``)
instead of ``model/``; its last checkpoint holds a consolidated ``model/`` too.

A checkpoint is written into a temporary sibling directory, fsynced, then renamed, so a
crash never leaves a half-written ``step-*`` directory. Nothing is unpickled on load.
Resuming takes the newest checkpoint whose manifest verifies and skips (with a warning)
any that a crash, a full disk or a bit flip left broken.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import random
import re
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from thermorl.errors import CheckpointError

CHECKPOINT_PREFIX = "step-"
log = logging.getLogger(__name__)


def split_state(state: dict[str, Any]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Separate tensors (for safetensors) from JSON-serialisable values."""
    tensors = {k: v.detach().cpu().contiguous() for k, v in state.items() if isinstance(v, torch.Tensor)}
    rest = {k: v for k, v in state.items() if not isinstance(v, torch.Tensor)}
    return tensors, rest


def optimizer_state(optimizer: torch.optim.Optimizer | None) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    if optimizer is None:
        return {}, {}
    state = optimizer.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, Any] = {}
    for param_id, values in state["state"].items():
        for key, value in values.items():
            if isinstance(value, torch.Tensor):
                tensors[f"{param_id}.{key}"] = value.detach().cpu().contiguous()
            else:
                scalars[f"{param_id}.{key}"] = value
    return tensors, {"param_groups": state["param_groups"], "scalars": scalars}


def load_optimizer_state(optimizer: torch.optim.Optimizer, tensors: dict[str, torch.Tensor], meta: dict) -> None:
    state: dict[int, dict[str, Any]] = {}
    for name, tensor in tensors.items():
        param_id, key = name.split(".", 1)
        # a copy: safetensors memory-maps the file, which would otherwise stay mapped (and its disk
        # space held after the checkpoint is pruned) for as long as the optimizer lives
        state.setdefault(int(param_id), {})[key] = tensor.clone()
    for name, value in meta.get("scalars", {}).items():
        param_id, key = name.split(".", 1)
        state.setdefault(int(param_id), {})[key] = value
    optimizer.load_state_dict({"state": state, "param_groups": meta["param_groups"]})


def rng_state(
    generator: torch.Generator, data_rng: random.Random, eval_generator: torch.Generator | None = None
) -> tuple[dict[str, torch.Tensor], dict]:
    """Every random stream of a run: torch (CPU and initialised CUDA devices), sampler, evaluation, data order."""
    tensors = {"rng.torch": torch.get_rng_state(), "rng.sampler": generator.get_state()}
    if eval_generator is not None:
        tensors["rng.eval"] = eval_generator.get_state()
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        tensors.update({f"rng.cuda.{i}": state for i, state in enumerate(torch.cuda.get_rng_state_all())})
    return tensors, {"python": _to_json(data_rng.getstate())}


def restore_rng(
    tensors: dict[str, torch.Tensor], state: dict[str, Any], generator: torch.Generator, data_rng: random.Random,
    eval_generator: torch.Generator | None = None, rank: int = 0,
) -> None:
    """Inverse of ``rng_state``; ``rank`` picks that process's streams of a multi-process checkpoint."""
    python = state["rng"]["python"]
    if rank:
        prefix = f"rank{rank}."
        tensors = {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}
        python = state["ranks"][str(rank)]["python"]
    torch.set_rng_state(tensors["rng.torch"])
    generator.set_state(tensors["rng.sampler"])
    if eval_generator is not None and "rng.eval" in tensors:
        eval_generator.set_state(tensors["rng.eval"])
    cuda_devices = sorted(int(name.rsplit(".", 1)[1]) for name in tensors if name.startswith("rng.cuda."))
    cuda = [tensors[f"rng.cuda.{i}"] for i in cuda_devices]
    if cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(cuda)
    data_rng.setstate(from_json_rng(python))


def save_checkpoint(
    run_dir: Path,
    step: int,
    model: Any,
    tokenizer: Any,
    controller_state: dict[str, Any],
    optimizers: dict[str, torch.optim.Optimizer | None],
    generator: torch.Generator,
    data_rng: random.Random,
    keep: int,
    eval_generator: torch.Generator | None = None,
    trainer_state: dict[str, Any] | None = None,
    ranks: list[tuple[dict[str, torch.Tensor], dict[str, Any]]] = (),
    prepared: dict[str, Any] | None = None,
) -> Path:
    """Atomically write checkpoint ``step`` and prune to the ``keep`` most recent.

    ``ranks``: (tensors, JSON state) of processes 1..N-1 (their random streams), saved beside process 0's.
    ``prepared``: the model part is already in ``temporary_dir(run_dir, step)`` (an FSDP run's shards,
    written by every process); its value (e.g. the sharded optimizer's param_groups) goes to state.json.
    A write that fails (disk full, permissions) removes its temporary directory, leaves every
    earlier checkpoint as it was, and raises ``CheckpointError``.
    """
    root = run_dir / "checkpoints"
    final = root / f"{CHECKPOINT_PREFIX}{step:06d}"
    tmp = temporary_dir(run_dir, step)
    try:
        _write_checkpoint(
            root, tmp, final, step, model, tokenizer, controller_state, optimizers, generator, data_rng,
            eval_generator, trainer_state or {}, list(ranks), prepared,
        )
    except (OSError, SafetensorError) as err:
        shutil.rmtree(tmp, ignore_errors=True)
        raise CheckpointError(f"cannot write checkpoint {final}: {_io_reason(err)}") from None
    for old in list_checkpoints(run_dir)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def temporary_dir(run_dir: Path, step: int) -> Path:
    """Where checkpoint ``step`` is written before it is renamed into place."""
    return run_dir / "checkpoints" / f".tmp-{CHECKPOINT_PREFIX}{step:06d}"


def begin_checkpoint(run_dir: Path, step: int) -> Path:
    """An empty temporary directory for checkpoint ``step`` (for parts written by every process)."""
    tmp = temporary_dir(run_dir, step)
    try:
        tmp.parent.mkdir(exist_ok=True)
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
    except OSError as err:
        raise CheckpointError(f"cannot write checkpoint {tmp}: {_io_reason(err)}") from None
    return tmp


def _write_checkpoint(
    root: Path, tmp: Path, final: Path, step: int, model: Any, tokenizer: Any, controller_state: dict[str, Any],
    optimizers: dict[str, torch.optim.Optimizer | None], generator: torch.Generator, data_rng: random.Random,
    eval_generator: torch.Generator | None, trainer_state: dict[str, Any],
    ranks: list[tuple[dict[str, torch.Tensor], dict[str, Any]]], prepared: dict[str, Any] | None,
) -> None:
    root.mkdir(exist_ok=True)
    if prepared is None:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        model.save_pretrained(tmp / "model")
        tokenizer.save_pretrained(tmp / "model")

    controller_tensors, controller_rest = split_state(controller_state)
    save_file(controller_tensors, str(tmp / "controller.safetensors"))
    optimizer_tensors: dict[str, torch.Tensor] = {}
    optimizer_meta: dict[str, Any] = {}
    for name, optimizer in optimizers.items():
        tensors, meta = optimizer_state(optimizer)
        optimizer_tensors.update({f"{name}.{k}": v for k, v in tensors.items()})
        optimizer_meta[name] = meta
    rng_tensors, rng_meta = rng_state(generator, data_rng, eval_generator)
    for rank, (tensors, _) in enumerate(ranks, start=1):
        rng_tensors.update({f"rank{rank}.{name}": tensor.cpu().contiguous() for name, tensor in tensors.items()})
    save_file({**optimizer_tensors, **rng_tensors}, str(tmp / "optimizer.safetensors"))
    state = {
        "step": step, "controller": controller_rest, "optimizers": optimizer_meta, "rng": rng_meta,
        "trainer": trainer_state,
    }
    if ranks:
        state["world_size"] = len(ranks) + 1
        state["ranks"] = {str(rank): meta for rank, (_, meta) in enumerate(ranks, start=1)}
    if prepared is not None:
        state["sharded"] = prepared
    (tmp / "state.json").write_text(json.dumps(state))

    manifest = {str(p.relative_to(tmp)): _sha256(p) for p in sorted(tmp.rglob("*")) if p.is_file()}
    (tmp / "manifest.json").write_text(json.dumps(manifest, indent=1))
    _fsync_tree(tmp)
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    _fsync_dir(root)


def list_checkpoints(run_dir: Path) -> list[Path]:
    root = run_dir / "checkpoints"
    if not root.is_dir():
        return []
    return sorted(p for p in root.iterdir() if p.is_dir() and p.name.startswith(CHECKPOINT_PREFIX))


def verify_checkpoint(path: Path) -> bool:
    """Whether every file listed in the manifest exists with its recorded sha256."""
    manifest_path = path / "manifest.json"
    if not manifest_path.is_file():
        return False
    try:
        manifest = json.loads(manifest_path.read_text())
    except (OSError, json.JSONDecodeError):
        return False
    return all((path / name).is_file() and _sha256(path / name) == digest for name, digest in manifest.items())


def latest_valid_checkpoint(run_dir: Path) -> Path | None:
    """The newest checkpoint whose manifest verifies; broken newer ones are skipped with a warning."""
    for path in reversed(list_checkpoints(run_dir)):
        if verify_checkpoint(path):
            return path
        log.warning("skipping checkpoint %s: missing files or checksum mismatch (partial or corrupted)", path)
    return None


def checkpoint_step(path: Path) -> int:
    return int(path.name[len(CHECKPOINT_PREFIX):])


def load_model_weights(model: torch.nn.Module, model_dir: Path) -> None:
    """Copy the weights saved by ``save_pretrained`` in ``model_dir`` into ``model`` (tied weights allowed)."""
    tensors: dict[str, torch.Tensor] = {}
    for file in sorted(model_dir.glob("*.safetensors")):
        tensors.update(load_file(str(file)))
    if hasattr(model, "peft_config") and (model_dir / "adapter_config.json").is_file():
        _load_lora_weights(model, model_dir, tensors)
        return
    current = model.state_dict()
    for name, tensor in tensors.items():
        if name in current and current[name].shape != tensor.shape:
            raise CheckpointError(
                f"checkpoint {model_dir} does not match the configured model: {name} has shape "
                f"{tuple(tensor.shape)} there and {tuple(current[name].shape)} in the model"
            )
    missing, unexpected = model.load_state_dict(tensors, strict=False)
    tied = {name for name in missing if _is_tied(model, name, tensors)}
    if unexpected or set(missing) - tied:
        raise CheckpointError(
            f"checkpoint {model_dir} does not match the configured model "
            f"(missing {sorted(set(missing) - tied)[:3]}, unexpected {sorted(unexpected)[:3]})"
        )


def _load_lora_weights(model: torch.nn.Module, model_dir: Path, tensors: dict[str, torch.Tensor]) -> None:
    """A LoRA checkpoint holds only the adapters (peft names them without the adapter name)."""
    from peft import set_peft_model_state_dict

    result = set_peft_model_state_dict(model, tensors)
    if result.unexpected_keys or len(tensors) == 0:
        raise CheckpointError(
            f"checkpoint {model_dir} does not match the configured LoRA adapters "
            f"(unexpected {sorted(result.unexpected_keys)[:3]})"
        )


def _is_tied(model: torch.nn.Module, name: str, saved: dict[str, torch.Tensor]) -> bool:
    """Whether parameter ``name`` shares storage with a parameter that was saved (e.g. tied embeddings)."""
    parameters = dict(model.named_parameters(remove_duplicate=False))
    if name not in parameters:
        return False
    pointer = parameters[name].data_ptr()
    return any(other in saved and p.data_ptr() == pointer for other, p in parameters.items() if other != name)


def load_checkpoint_state(path: Path) -> tuple[dict[str, Any], dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """(state.json, controller tensors, optimizer + RNG tensors) of a checkpoint directory."""
    state = json.loads((path / "state.json").read_text())
    return state, load_file(str(path / "controller.safetensors")), load_file(str(path / "optimizer.safetensors"))


def _io_reason(err: Exception) -> str:
    """'No space left on device' from an OSError or from safetensors' '... (os error 28)'."""
    if getattr(err, "strerror", None):
        return err.strerror
    code = re.search(r"os error (\d+)", str(err))
    return os.strerror(int(code[1])) if code else str(err).strip().splitlines()[0]


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _fsync_tree(root: Path) -> None:
    for path in root.rglob("*"):
        if path.is_file():
            with open(path, "rb") as handle:
                os.fsync(handle.fileno())
    _fsync_dir(root)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _to_json(value: Any) -> Any:
    if isinstance(value, tuple):
        return [_to_json(v) for v in value]
    return value


def from_json_rng(value: Any) -> Any:
    """Inverse of ``_to_json`` for ``random.Random.setstate``."""
    if isinstance(value, list):
        return tuple(from_json_rng(v) for v in value)
    return value
