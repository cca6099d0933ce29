"""Data-parallel training across processes started by ``accelerate launch`` (or torchrun).

Each process samples whole prompt groups (its contiguous share of the step's global batch),
computes rewards and group advantages locally, and all-reduces gradients before every
optimizer step, so every process holds the same weights. One process pays nothing: with
``WORLD_SIZE`` unset or 1 every method here is an identity and accelerate is never imported.

The update equals the single-process update on the same global batch (a test checks it with
two gloo processes): with token-mean aggregation each process scales its loss by
``tokens_local * N / tokens_global``, so the mean of the N gradients is the gradient of the
global token mean; with seq-mean every process holds the same number of sequences (scale 1).
Gradients are averaged by hand (flattened all-reduce) rather than by a DDP wrapper because the
policy runs its decoder stack directly (``Policy.hidden``), which a DDP wrapper would not see.
With ``distributed.strategy: fsdp`` (or an accelerate config with ``distributed_type: FSDP``) the
language model is sharded with FSDP2 instead (``runtime.fsdp``); its gradients are then averaged
by FSDP's reduce-scatter and only the replicated temperature head's here. DeepSpeed is refused.

Faults are coordinated: an error that would skip or stop a step in one process (NaN/inf,
a failing reward function) is raised in every process (``coordinated``), and a Ctrl-C or SIGTERM
that reaches one process stops all of them at the same step (``any_process``), so no process is left
waiting in a collective for one that has gone.
"""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import torch
from torch import Tensor

from thermorl import errors
from thermorl.errors import ConfigError, NonFiniteError, ThermoRLError

T = TypeVar("T")
_RANK_SEED_STRIDE = 1_000_003  # sampling seeds of processes 1..N-1: seed + rank * stride


def launched_world_size() -> int:
    """Processes started by the launcher (1 when run directly)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def is_main_process() -> bool:
    """Whether this is the process that writes files and prints (rank 0, or the only one)."""
    return os.environ.get("RANK", "0") == "0"


@dataclass
class Distributed:
    """This process's place in a data-parallel job; the defaults describe a single process."""

    world_size: int = 1
    rank: int = 0
    device: torch.device | None = None  # this process's device (None: keep model.device)
    fsdp: Any = None  # runtime.fsdp.FsdpSettings when the language model is sharded with FSDP2

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    # -- data -------------------------------------------------------------------------------
    def shard(self, items: list[T]) -> list[T]:
        """This process's contiguous equal share of the global batch (whole groups when the
        batch is prompt-major and prompts_per_step is a multiple of the number of processes)."""
        if not self.enabled:
            return items
        share = len(items) // self.world_size
        return items[self.rank * share : (self.rank + 1) * share]

    def stride(self, items: list[T]) -> list[T]:
        """Every N-th item from this process's offset (for evaluation); all items when fewer than N."""
        if not self.enabled or len(items) < self.world_size:
            return items
        return items[self.rank :: self.world_size]

    def decorrelate(self, generator: torch.Generator, seed: int) -> None:
        """Give processes 1..N-1 their own sampling stream (process 0 keeps the single-process one)."""
        if self.rank:
            generator.manual_seed((seed + self.rank * _RANK_SEED_STRIDE) % 2**63)

    # -- gradients and losses ---------------------------------------------------------------
    def token_share(self, mask: Tensor) -> float:
        """tokens_local * N / tokens_global: the loss scale that makes gradient averaging exact."""
        if not self.enabled:
            return 1.0
        local = mask.sum().detach().to(torch.float64).reshape(1)
        total = local.clone()
        torch.distributed.all_reduce(total)
        return float(local * self.world_size / total.clamp_min(1.0))

    def average_gradients(self, *modules: torch.nn.Module | None) -> None:
        """grad <- mean over processes of grad (one flattened all-reduce per dtype and device)."""
        if not self.enabled:
            return
        buckets: dict[tuple[torch.dtype, torch.device], list[Tensor]] = {}
        for p in _parameters(modules):
            # every process runs the same code path, so the same parameters hold gradients everywhere;
            # sharded (FSDP) gradients were averaged by FSDP's reduce-scatter already
            if p.grad is not None and not _is_dtensor(p.grad):
                buckets.setdefault((p.grad.dtype, p.grad.device), []).append(p.grad)
        for grads in buckets.values():
            flat = torch.cat([g.reshape(-1) for g in grads])
            torch.distributed.all_reduce(flat)
            flat /= self.world_size
            offset = 0
            for g in grads:
                g.copy_(flat[offset : offset + g.numel()].view_as(g))
                offset += g.numel()

    def broadcast_parameters(self, *modules: torch.nn.Module | None) -> None:
        """Start every process from process 0's weights."""
        if self.enabled:
            for p in _parameters(modules):
                torch.distributed.broadcast(p.data, src=0)

    # -- metrics ----------------------------------------------------------------------------
    def reduce_metrics(self, metrics: dict[str, float], share: float, row_means: tuple[str, ...] = ()) -> dict[str, float]:
        """Global values of one minibatch's diagnostics: token means weighted by this process's token
        share, ``row_means`` (e.g. a seq-mean pg_loss) alike in every process (each holds as many rows);
        ``loss`` is already scaled and ``grad_norm`` is taken after averaging."""
        if not self.enabled:
            return metrics
        same = ("loss", "grad_norm", *row_means)
        return self.mean({k: v if k in same else v * share for k, v in metrics.items()})

    def mean(self, metrics: dict[str, float]) -> dict[str, float]:
        """Mean over processes of each value (every process passes the same keys)."""
        if not self.enabled or not metrics:
            return metrics
        return {k: v / self.world_size for k, v in self._all_reduce(metrics, "sum").items()}

    def total(self, counts: dict[str, int]) -> dict[str, int]:
        """Sum over processes of each count (every process passes the same keys)."""
        if not self.enabled:
            return counts
        return {k: round(v * self.world_size) for k, v in self.mean(counts).items()}

    def combine(self, values: dict[str, float], kinds: dict[str, str]) -> dict[str, float]:
        """Each value summed, maxed or minned over processes (``kinds[key]``: 'sum', 'max' or 'min'; every
        process passes the same keys), e.g. the rollout-mismatch totals of a step's global batch."""
        if not self.enabled or not values:
            return values
        combined = {}
        for kind in ("sum", "max", "min"):
            combined.update(self._all_reduce({k: v for k, v in values.items() if kinds[k] == kind}, kind))
        return combined

    def weighted_mean(
        self, metrics: dict[str, float], weights: dict[str, float], default_weight: float = 1.0
    ) -> dict[str, float]:
        """sum_r w_r m_r / sum_r w_r per key (e.g. accuracies over differently sized shards)."""
        if not self.enabled:
            return metrics
        weights = {k: float(weights.get(k, default_weight)) for k in metrics}
        packed = {**{("sum", k): float(v) * weights[k] for k, v in metrics.items()},
                  **{("weight", k): w for k, w in weights.items()}}
        summed = self._all_reduce(packed, "sum")
        return {k: summed[("sum", k)] / max(summed[("weight", k)], 1e-12) for k in metrics}

    def _all_reduce(self, values: dict, op: str) -> dict:
        """Every value of ``values`` reduced over processes with ``op`` ('sum', 'max' or 'min') in one
        all-reduce: packed into one float64 tensor in sorted-key order (every process passes the same keys)."""
        if not values:
            return {}
        keys = sorted(values)
        packed = torch.tensor([float(values[k]) for k in keys], dtype=torch.float64, device=self._comm_device)
        torch.distributed.all_reduce(packed, op=getattr(torch.distributed.ReduceOp, op.upper()))
        return dict(zip(keys, packed.tolist()))

    def gather_rows(self, tensor: Tensor, pad_value: float = 0.0) -> Tensor:
        """Concatenate every process's (n, ...) tensor along dim 0, padding dim 1 to the longest."""
        if not self.enabled:
            return tensor
        length = torch.tensor([tensor.shape[1] if tensor.dim() > 1 else 0], device=self._comm_device)
        lengths = [torch.zeros_like(length) for _ in range(self.world_size)]
        torch.distributed.all_gather(lengths, length)
        longest = int(max(x.item() for x in lengths))
        if tensor.dim() > 1 and tensor.shape[1] < longest:
            pad = tensor.new_full((tensor.shape[0], longest - tensor.shape[1], *tensor.shape[2:]), pad_value)
            tensor = torch.cat([tensor, pad], dim=1)
        parts = [torch.empty_like(tensor) for _ in range(self.world_size)]
        torch.distributed.all_gather(parts, tensor.contiguous())
        return torch.cat(parts, dim=0)

    def sync_controller(self, controller: Any) -> None:
        """Processes 1..N-1 adopt process 0's controller state after each step, so a meta-policy
        (TAMPO, whose outer update sees each process's share of the batch) stays one policy."""
        if not self.enabled:
            return
        state = [{k: v.cpu() if isinstance(v, Tensor) else v for k, v in controller.state_dict().items()}]
        torch.distributed.broadcast_object_list(state, src=0, device=self._comm_device)
        if not self.is_main:
            controller.load_state_dict(state[0])

    # -- coordination -----------------------------------------------------------------------
    def any_process(self, flag: bool) -> bool:
        """Whether ``flag`` is true in some process (e.g. a stop signal that reached only one)."""
        if not self.enabled:
            return flag
        value = torch.tensor([int(flag)], device=self._comm_device)
        torch.distributed.all_reduce(value, op=torch.distributed.ReduceOp.MAX)
        return bool(value.item())

    def agree(self, ok: bool) -> bool:
        """Whether ``ok`` holds in every process (e.g. a finite loss before a collective backward)."""
        return not self.any_process(not ok)

    def gather_objects(self, value: Any) -> list[Any]:
        """Every process's ``value`` (small JSON-like objects or CPU tensors), in rank order."""
        if not self.enabled:
            return [value]
        values: list[Any] = [None] * self.world_size
        torch.distributed.all_gather_object(values, value)
        return values

    def broadcast_object(self, value: Any, src: int = 0) -> Any:
        """Process ``src``'s ``value`` in every process."""
        if not self.enabled:
            return value
        box = [value]
        torch.distributed.broadcast_object_list(box, src=src, device=self._comm_device)
        return box[0]

    def raise_together(self, error: BaseException | None) -> None:
        """Raise in every process if any process failed: its own error where it failed, elsewhere the
        same kind of error naming the first failing process."""
        if not self.enabled:
            if error is not None:
                raise error
            return
        reports = self.gather_objects(None if error is None else (type(error).__name__, str(error)))
        failed = [(rank, report) for rank, report in enumerate(reports) if report is not None]
        if error is not None:
            raise error
        if failed:
            rank, (kind, message) = failed[0]
            cls = getattr(errors, kind, None)
            if not (isinstance(cls, type) and issubclass(cls, (ThermoRLError, NonFiniteError))):
                cls = ThermoRLError
            raise cls(f"{message} (in process {rank})")

    @contextmanager
    def coordinated(self) -> Iterator[None]:
        """A NaN/inf (NonFiniteError) or a user-facing error (ThermoRLError, e.g. a reward function
        failing under task.reward_fail_fast) raised in the block in one process is raised in all."""
        error: BaseException | None = None
        try:
            yield
        except (NonFiniteError, ThermoRLError) as err:
            error = err
        self.raise_together(error)

    def output_dir(self, out_dir: Path) -> Path:
        """Where this process writes: the run directory for process 0, a scratch directory for the others."""
        if self.is_main:
            return out_dir
        scratch = Path(tempfile.mkdtemp(prefix=f"thermorl-rank{self.rank}-"))
        atexit.register(shutil.rmtree, scratch, True)
        return scratch

    @property
    def _comm_device(self) -> torch.device:
        """gloo reduces CPU tensors; NCCL needs them on this process's GPU."""
        backend = torch.distributed.get_backend() if torch.distributed.is_initialized() else "gloo"
        return self.device if backend == "nccl" and self.device is not None else torch.device("cpu")


def _is_dtensor(tensor: Tensor) -> bool:
    from torch.distributed.tensor import DTensor

    return isinstance(tensor, DTensor)


def _parameters(modules: Iterable[torch.nn.Module | None]) -> list[torch.nn.Parameter]:
    """Parameters of the given modules (None skipped), each once even if shared."""
    seen: dict[int, torch.nn.Parameter] = {}
    for module in modules:
        if module is not None:
            for p in module.parameters():
                seen.setdefault(id(p), p)
    return list(seen.values())


@dataclass
class GatheredBatch:
    """The global batch's per-token fields that ``batch_statistics`` reads."""

    completion_mask: Tensor
    temperatures: Tensor
    entropies: Tensor


def gather_batch(dist: Distributed, batch: Any, rewards: Tensor) -> tuple[Any, Tensor]:
    """(global batch view, global rewards) for logging; the local ones for a single process."""
    if not dist.enabled:
        return batch, rewards
    gathered = GatheredBatch(
        dist.gather_rows(batch.completion_mask, 0.0),
        dist.gather_rows(batch.temperatures, 1.0),
        dist.gather_rows(batch.entropies, 0.0),
    )
    return gathered, dist.gather_rows(rewards)


def setup_distributed(prompts_per_step: int, strategy: str = "auto", fsdp: Any = None) -> Distributed:
    """A single-process Distributed, or under a launcher with N > 1 processes an initialised
    process group (through ``accelerate.Accelerator``: NCCL on GPUs, gloo on CPU).

    ``strategy`` (``distributed.strategy``): ``auto`` shards with FSDP2 when the accelerate config
    says ``distributed_type: FSDP`` and trains data-parallel otherwise; ``fsdp`` shards under any
    launcher (plain torchrun included); ``ddp`` never shards. ``fsdp`` holds the ``distributed.fsdp_*``
    settings (``runtime.fsdp.FsdpSettings``) used where no accelerate config gives them.
    """
    if os.environ.get("ACCELERATE_USE_DEEPSPEED", "false").lower() == "true":
        raise ConfigError(
            "DeepSpeed ZeRO is not supported (it cannot be built or tested on CPU here); use an accelerate config "
            "with distributed_type: FSDP and fsdp_version: 2 (ZeRO-3-style sharding), or distributed.strategy=fsdp"
        )
    world_size = launched_world_size()
    if world_size <= 1:
        return Distributed()
    if prompts_per_step % world_size:
        raise ConfigError(
            f"rollout.prompts_per_step ({prompts_per_step}) must be a multiple of the number of processes "
            f"({world_size}): each process samples whole prompt groups"
        )
    from accelerate import Accelerator
    from accelerate.utils import DistributedType

    from thermorl.runtime.fsdp import FsdpSettings, accelerate_fsdp_settings

    fsdp = fsdp or FsdpSettings()
    from_accelerate = accelerate_fsdp_settings(fsdp)  # before Accelerator(), which would take FSDP1 as given
    accelerator = Accelerator()
    supported = (DistributedType.MULTI_GPU, DistributedType.MULTI_CPU, DistributedType.NO, DistributedType.FSDP)
    if accelerator.distributed_type not in supported:
        raise ConfigError(
            f"accelerate distributed type {accelerator.distributed_type} is not supported; use an accelerate config "
            "with distributed_type MULTI_GPU, MULTI_CPU or FSDP (fsdp_version: 2)"
        )
    settings = None
    if strategy == "fsdp" or (strategy == "auto" and from_accelerate is not None):
        settings = from_accelerate or fsdp
    return Distributed(accelerator.num_processes, accelerator.process_index, accelerator.device, settings)
