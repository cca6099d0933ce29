"""The fault policy of a run: skip, count, stop.

A step with NaN/inf logits, temperatures, loss or gradients is skipped (no optimizer step) and counted
(``skipped_steps``); ``train.max_bad_steps`` in a row stop the run with a valid last checkpoint. Only a
model whose parameters are all finite is checkpointed, so every checkpoint is a valid restart point.
Ctrl-C (see ``resume.GracefulStop``) checkpoints the last finished step.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch

from thermorl.config import Config
from thermorl.errors import NonFiniteError, TrainingDivergedError
from thermorl.runtime import checkpoint as ckpt
from thermorl.runtime import sharded
from thermorl.runtime.components import Components, finite_parameters
from thermorl.runtime.resume import LoopState

log = logging.getLogger(__name__)


def skip_step(state: LoopState, step: int, err: NonFiniteError) -> dict[str, Any]:
    """Count a skipped step; the metrics row it logs."""
    state.skipped_steps += 1
    state.bad_streak += 1
    log.warning("step %d skipped: %s (%d bad step(s) in a row)", step, err, state.bad_streak)
    return {"step": step, "skipped": 1, "skip_reason": str(err)}


def save(c: Components, out_dir: Path, step: int, state: LoopState, keep: int, final: bool = False) -> Path | None:
    """Checkpoint ``step``. Under several processes every process takes part: process 0 writes the
    checkpoint with every process's random streams, and under FSDP each process writes its shards
    first (plus, in the ``final`` one, a consolidated Hugging Face model)."""
    ranks = c.dist.gather_objects(_rank_state(c, state))
    optimizers = {"lm": c.lm_optimizer, "head": c.head_optimizer}
    prepared = None
    if c.dist.fsdp is not None:
        with c.dist.coordinated():
            tmp = ckpt.begin_checkpoint(out_dir, step) if c.dist.is_main else None
        tmp = Path(c.dist.broadcast_object(str(tmp)))  # process 0's run directory; the others write scratch
        prepared = {"lm_param_groups": sharded.save_shards(tmp, c.policy.model, c.lm_optimizer)}
        optimizers["lm"] = None  # in the shards
        if final:
            full = sharded.full_state(c.policy.model)
            with c.dist.coordinated():
                if c.dist.is_main:
                    sharded.write_model(tmp / "model", c.policy.model, c.policy.tokenizer, full)
    path = None
    with c.dist.coordinated():  # a full disk in process 0 stops every process
        if c.dist.is_main:
            path = ckpt.save_checkpoint(
                out_dir, step, c.policy.model, c.policy.tokenizer, c.controller.state_dict(), optimizers,
                state.generator, state.data_rng, keep, eval_generator=state.eval_generator,
                trainer_state={**state.to_json(), "reward": c.reward.state_dict() if c.reward else {}},
                ranks=ranks[1:], prepared=prepared,
            )
    return path


def _rank_state(c: Components, state: LoopState) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """This process's random streams and reward counters (each process has its own)."""
    tensors, meta = ckpt.rng_state(state.generator, state.data_rng, state.eval_generator)
    return tensors, {**meta, "reward": c.reward.state_dict() if c.reward else {}}


def save_if_finite(c: Components, config: Config, out_dir: Path, state: LoopState, step: int) -> Path | None:
    """Save a checkpoint unless a parameter is NaN/inf: every checkpoint must be a valid restart point."""
    if not finite_parameters(c):
        log.warning("step %d: not saving a checkpoint, the model has NaN/inf parameters", step)
        return None
    return save(c, out_dir, step, state, config.train.keep_checkpoints, final=step == config.train.steps)


def stop_if_diverged(c: Components, config: Config, out_dir: Path, state: LoopState, step: int) -> None:
    """Raise TrainingDivergedError after ``train.max_bad_steps`` skipped steps in a row."""
    if state.bad_streak < config.train.max_bad_steps:
        return
    last = save_if_finite(c, config, out_dir, state, step) or ckpt.latest_valid_checkpoint(out_dir)
    raise TrainingDivergedError(
        f"stopped at step {step}: {state.bad_streak} steps in a row had NaN/inf logits, temperatures, loss or "
        f"gradients (train.max_bad_steps={config.train.max_bad_steps}); "
        + (f"last valid checkpoint: {last}" if last else "no valid checkpoint was saved")
    )


def interrupted(
    c: Components, config: Config, out_dir: Path, state: LoopState, step: int, saved_step: int
) -> dict[str, Any]:
    """Ctrl-C: checkpoint the last finished step (unless just saved) and report where to resume from."""
    path = save_if_finite(c, config, out_dir, state, step) if saved_step != step else None  # same in every process
    path = path or ckpt.latest_valid_checkpoint(out_dir)
    return {"interrupted": True, "step": step, "checkpoint": str(path) if path else None}


def stopped_in_reward(out_dir: Path) -> dict[str, Any]:
    """Ctrl-C / SIGTERM while a reward call ran: the step is abandoned (its rollouts already moved the random
    streams), so the run stops at its newest checkpoint, from which ``--resume`` redoes what came after."""
    path = ckpt.latest_valid_checkpoint(out_dir)
    step = ckpt.checkpoint_step(path) if path else 0
    log.warning("stopped during a reward call; resume from %s", path or "the start (no checkpoint yet)")
    return {"interrupted": True, "step": step, "checkpoint": str(path) if path else None}
