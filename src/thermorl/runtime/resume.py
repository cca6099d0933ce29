"""Stopping and resuming a run: graceful Ctrl-C and the newest valid checkpoint.

Ctrl-C (SIGINT) or SIGTERM during training asks the trainer to finish the current step, save
a checkpoint and return; a second Ctrl-C aborts at once (the last checkpoint is still valid,
since checkpoints are written atomically). ``thermorl train --resume RUN`` restarts from the
newest checkpoint whose checksums verify, drops the rows logged after it, and continues with
the same model, optimizers, controller state and random streams, so the resumed metrics are
those of an uninterrupted run.
"""

from __future__ import annotations

import logging
import random
import shutil
import signal
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from thermorl.config import Config, dump_config
from thermorl.errors import CheckpointError, ThermoRLError
from thermorl.runtime import checkpoint as ckpt
from thermorl.runtime import sharded
from thermorl.runtime.components import Components
from thermorl.runtime.tracking import truncate_jsonl

log = logging.getLogger(__name__)


class GracefulStop:
    """Context manager: the first SIGINT/SIGTERM sets ``requested``; a second SIGINT raises KeyboardInterrupt."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self) -> None:
        self.requested = False
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> GracefulStop:
        if threading.current_thread() is threading.main_thread():  # signal handlers live in the main thread
            for signum in self.SIGNALS:
                self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)

    def _handle(self, signum: int, frame: Any) -> None:
        if self.requested and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.requested = True


@dataclass
class ResumePoint:
    """A verified checkpoint and everything read from it."""

    path: Path
    step: int
    state: dict[str, Any]  # state.json
    controller_tensors: dict[str, torch.Tensor]
    tensors: dict[str, torch.Tensor]  # optimizer + RNG tensors


def find_resume_point(run_dir: Path) -> ResumePoint:
    """The newest checkpoint of ``run_dir`` that verifies; raises a one-line error when there is none."""
    if not (run_dir / "config.yaml").is_file():
        raise ThermoRLError(f"cannot resume {run_dir}: not a thermorl run directory (no config.yaml)")
    candidates = ckpt.list_checkpoints(run_dir)
    broken = []
    for path in reversed(candidates):
        if ckpt.verify_checkpoint(path):
            for skipped in broken:
                log.warning("skipping checkpoint %s: missing files or checksum mismatch (partial or corrupted)", skipped)
            state, controller_tensors, tensors = ckpt.load_checkpoint_state(path)
            return ResumePoint(path, state["step"], state, controller_tensors, tensors)
        broken.append(path)
    detail = f" ({len(broken)} partial or corrupted)" if broken else ""
    raise CheckpointError(f"cannot resume {run_dir}: no complete checkpoint in {run_dir / 'checkpoints'}{detail}")


@dataclass
class LoopState:
    """What the loop carries from step to step; all of it goes into checkpoints."""

    data_rng: random.Random
    generator: torch.Generator  # token sampling and minibatch order
    eval_generator: torch.Generator
    initial_eval: dict[str, float] = field(default_factory=dict)
    last_eval: dict[str, float] = field(default_factory=dict)
    skipped_steps: int = 0
    bad_streak: int = 0  # consecutive skipped steps
    train_time: float = 0.0
    lm_updates: int = 0  # optimizer steps of the language model so far
    head_updates: int = 0  # optimizer steps of the temperature head so far

    @classmethod
    def fresh(cls, seed: int, device: torch.device) -> LoopState:
        return cls(
            random.Random(seed),
            torch.Generator(device=device).manual_seed(seed),
            torch.Generator(device=device).manual_seed(seed + 1),
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "initial_eval": self.initial_eval, "last_eval": self.last_eval, "skipped_steps": self.skipped_steps,
            "bad_streak": self.bad_streak, "train_time_s": self.train_time, "lm_updates": self.lm_updates,
            "head_updates": self.head_updates,
        }


def restore(c: Components, state: LoopState, point: ResumePoint) -> None:
    """Load model, optimizers, controller, reward counters and every random stream from a checkpoint
    (this process's own streams under several processes; its own shards under FSDP)."""
    _check_layout(c, point)
    is_sharded = "sharded" in point.state
    try:
        if is_sharded:
            sharded.load_shards(point.path, c.policy.model, c.lm_optimizer, point.state["sharded"]["lm_param_groups"])
        else:
            ckpt.load_model_weights(c.policy.model, point.path / "model")
        c.controller.load_state_dict({**point.state["controller"], **point.controller_tensors})
        for name, optimizer in (("lm", c.lm_optimizer), ("head", c.head_optimizer)):
            if optimizer is not None and not (is_sharded and name == "lm"):
                prefix = f"{name}."
                tensors = {k[len(prefix):]: v for k, v in point.tensors.items() if k.startswith(prefix)}
                ckpt.load_optimizer_state(optimizer, tensors, point.state["optimizers"][name])
    except (KeyError, ValueError, RuntimeError) as err:
        raise CheckpointError(f"checkpoint {point.path} does not match the run's configuration: {err}") from None
    ckpt.restore_rng(point.tensors, point.state, state.generator, state.data_rng, state.eval_generator, c.dist.rank)
    saved = point.state.get("trainer", {})
    state.initial_eval = saved.get("initial_eval", {})
    state.last_eval = saved.get("last_eval", {})
    state.skipped_steps = saved.get("skipped_steps", 0)
    state.bad_streak = saved.get("bad_streak", 0)
    state.train_time = saved.get("train_time_s", 0.0)
    state.lm_updates = saved.get("lm_updates", 0)
    state.head_updates = saved.get("head_updates", 0)
    reward = point.state["ranks"][str(c.dist.rank)]["reward"] if c.dist.rank else saved.get("reward")
    if c.reward is not None and reward is not None:
        c.reward.load_state_dict(reward)


def _check_layout(c: Components, point: ResumePoint) -> None:
    """A checkpoint resumes under the number of processes and the sharding that wrote it."""
    written_by = point.state.get("world_size", 1)
    if written_by != c.dist.world_size:
        raise CheckpointError(
            f"checkpoint {point.path} was written by {written_by} process(es); resume it with {written_by} "
            f"(it holds every process's random streams), not {c.dist.world_size}"
        )
    if ("sharded" in point.state) != (c.dist.fsdp is not None):
        kind = "sharded (FSDP)" if "sharded" in point.state else "not sharded"
        strategy = "fsdp" if "sharded" in point.state else "ddp"
        raise CheckpointError(f"checkpoint {point.path} is {kind}; resume it with distributed.strategy={strategy}")


def rewind_run_dir(out_dir: Path, config: Config, step: int) -> None:
    """Drop what a killed or interrupted run left after checkpoint ``step`` (log rows, broken newer
    checkpoints, temporary directories); record the (maybe overridden) config."""
    tmp = out_dir / ".config.yaml.tmp"
    try:
        dump_config(config, tmp)
        tmp.replace(out_dir / "config.yaml")
    finally:
        tmp.unlink(missing_ok=True)
    for name in ("metrics.jsonl", "samples.jsonl"):
        truncate_jsonl(out_dir / name, step)
    (out_dir / "summary.json").unlink(missing_ok=True)
    for path in ckpt.list_checkpoints(out_dir):
        if ckpt.checkpoint_step(path) > step:
            shutil.rmtree(path)
    for path in (out_dir / "checkpoints").glob(".tmp-*"):
        shutil.rmtree(path)
