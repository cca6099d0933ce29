"""The training loop: sample -> reward -> advantage -> update -> log -> checkpoint.

The trainer only wires parts together; every equation lives in ``algorithms`` and every
temperature decision in the controller, so swapping a controller never touches this file.
One GRPO step (DeepSeekMath, Algorithm 1, with per-token temperatures):

  1. draw P prompts, repeat each G times;
  2. sample completions; the controller picks tau_t per token; record log pi_old(y_t | tau_t);
  3. r_i = task reward; A_i = group-normalised advantage;
  4. for mu epochs over minibatches: recompute log pi(y_t | tau_t) at the recorded tau_t,
     clipped-ratio loss (+ beta KL to the reference), plus the controller's own loss;
  5. the controller's outer update (TAMPO), logging, evaluation, checkpoint.

A step with NaN/inf logits, temperatures, loss or gradients is skipped (no optimizer step) and
counted (``skipped_steps``); ``train.max_bad_steps`` in a row stop the run with a valid last
checkpoint. Rewards go through a ``RewardGuard`` (timeouts, exceptions, NaN). Ctrl-C finishes
the step, saves a checkpoint and returns; ``resume=True`` continues from the newest valid one.
"""

from __future__ import annotations

import copy
import json
import logging
import math
import shutil
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from thermorl.algorithms.grpo import (
    aggregate,
    approx_kl,
    clipped_policy_loss,
    group_advantages_by_id,
    high_entropy_mask,
    kl_penalty,
    truncated_importance_weights,
)
from thermorl.algorithms.schedule import lr_factor
from thermorl.config import Config, FixedConfig, dump_config
from thermorl.engines import HFEngine, RolloutBatch, RolloutEngine, build_engine
from thermorl.engines.hf import score
from thermorl.engines.vllm import check_supported as check_vllm
from thermorl.engines.vllm import recompute
from thermorl.errors import ConfigError, ModelLoadError, NonFiniteError, ThermoRLError, TrainingDivergedError
from thermorl.models.policy import Policy, load_policy
from thermorl.rewards.guard import RewardGuard
from thermorl.runtime import checkpoint as ckpt
from thermorl.runtime import fsdp, sharded
from thermorl.runtime.distributed import Distributed, gather_batch, setup_distributed
from thermorl.runtime.resume import GracefulStop, LoopState, find_resume_point, restore, rewind_run_dir
from thermorl.runtime.runlock import LOCK_NAME, RunLock
from thermorl.runtime.tracking import RunLogger
from thermorl.study.evaluate import greedy_accuracy, sampled_metrics
from thermorl.tasks import Task, build_task
from thermorl.tasks.base import token_classes
from thermorl.temperature import ControllerEnv, TemperatureController, build_controller
from thermorl.temperature.fixed import FixedController

log = logging.getLogger(__name__)


@dataclass
class Components:
    """Everything a run builds before it writes anything to disk."""

    policy: Policy
    reference: Policy | None
    task: Task
    controller: TemperatureController
    lm_optimizer: torch.optim.Optimizer
    head_optimizer: torch.optim.Optimizer | None
    engine: RolloutEngine  # samples every rollout of the run (rollout.engine, the run's RolloutConfig)
    reward: RewardGuard | None = None  # the task's reward behind a timeout and value checks
    dist: Distributed = field(default_factory=Distributed)  # this process's share of a data-parallel job


def build_components(config: Config, policy: Policy | None = None) -> Components:
    """Load model, task and controller; raises ThermoRLError on bad input, before any file is written.

    ``policy``, if given, is trained instead of loading ``config.model`` (e.g. a model built from a
    config in memory, as the benchmarks do).
    """
    if config.rollout.engine == "vllm":  # refuse what it cannot serve before loading anything
        check_vllm(config)
    torch.manual_seed(config.train.seed)
    if config.train.threads:
        torch.set_num_threads(config.train.threads)
    dc = config.distributed
    dist = setup_distributed(
        config.rollout.prompts_per_step, dc.strategy,
        fsdp.FsdpSettings(dc.fsdp_reshard_after_forward, dc.fsdp_mixed_precision, config.model.gradient_checkpointing),
    )
    if policy is None:
        policy = load_policy(replace(config.model, device=str(dist.device)) if dist.enabled else config.model,
                             seed=config.train.seed)
    task = build_task(config.task)
    env = ControllerEnv(
        policy.hidden_size, config.train.steps, policy.device, config.rollout.group_size, config.train.seed,
        gather_rows=dist.gather_rows, rank=dist.rank, world_size=dist.world_size,
    )
    controller = build_controller(config.temperature, env)
    dist.broadcast_parameters(policy.model, controller.module)
    reference = None
    if config.algorithm.beta > 0 and dist.fsdp is not None:
        reference = fsdp.copy_for_reference(policy, dist.fsdp)
    elif config.algorithm.beta > 0:
        reference = Policy(copy.deepcopy(policy.model).eval().requires_grad_(False), policy.tokenizer)
    if dist.fsdp is not None:  # parameters become shards in place: before the optimizer is built
        if config.rollout.engine != "hf":
            raise ConfigError(f"rollout.engine={config.rollout.engine} is not supported with FSDP; use rollout.engine=hf")
        fsdp.shard_policy(policy, dist.fsdp)
    lm_optimizer = torch.optim.AdamW(
        policy.model.parameters(), lr=config.algorithm.lr, weight_decay=config.algorithm.weight_decay
    )
    head_optimizer = None
    if controller.module is not None:
        head_lr = getattr(getattr(config.temperature, config.temperature.controller), "lr", config.algorithm.lr)
        head_optimizer = torch.optim.AdamW(controller.module.parameters(), lr=head_lr)
    reward_name = getattr(task.reward, "name", f"of task {config.task.name}")  # a user function's module:function
    reward = RewardGuard(task.reward, reward_name, config.task.reward_timeout_s, config.task.reward_fail_fast)
    engine = build_engine(config.rollout, policy, controller)
    policy.model.train()  # sampling switches to eval mode and back; every update runs in train mode
    c = Components(policy, reference, task, controller, lm_optimizer, head_optimizer, engine, reward, dist)
    if not _finite_parameters(c):
        raise ModelLoadError(f"model {config.model.path} has NaN or inf parameters")
    return c


def grpo_update(
    c: Components, config: Config, batch: RolloutBatch, advantages: torch.Tensor, step: int,
    generator: torch.Generator, trainer_logprobs: torch.Tensor | None = None,
) -> dict[str, float]:
    """mu epochs of clipped-ratio updates on one batch; returns averaged diagnostics.

    ``trainer_logprobs``: the trainer's own log-probs of the batch at the sampling temperatures when
    another engine (vLLM) sampled it; they are pi_old, and with ``algorithm.rollout_is`` = tis each
    token's term is weighted by min(pi_old / pi_engine, rollout_is_cap).
    """
    algo = config.algorithm
    trains_lm = c.controller.trains_lm(step)
    sampled_logprobs = batch.logprobs
    train_temperatures = c.controller.training_temperatures(batch.temperatures)
    off_policy = train_temperatures is not batch.temperatures  # e.g. EAD's T = 1 mode
    if off_policy:
        batch = replace(batch, temperatures=train_temperatures)
    old_logprobs = batch.logprobs if trainer_logprobs is None or off_policy else trainer_logprobs
    if (algo.recompute_old_logprobs and trainer_logprobs is None) or off_policy:
        with torch.no_grad():
            old_logprobs = score(c.policy, batch).logprobs
    is_weights, is_cap = None, c.controller.is_cap
    if off_policy:  # w_t = min(pi_old(y_t | T_train) / pi(y_t | T_sampled), C)
        is_weights = truncated_importance_weights(old_logprobs, sampled_logprobs, c.controller.is_cap)
    elif trainer_logprobs is not None and rollout_is(config) == "tis":  # w_t = min(pi_old / pi_engine, C)
        is_cap = algo.rollout_is_cap
        is_weights = truncated_importance_weights(old_logprobs, sampled_logprobs, is_cap)
    ref_logprobs = None
    if c.reference is not None:
        with torch.no_grad():
            ref_logprobs = score(c.reference, batch).logprobs

    pg_mask = high_entropy_mask(batch.entropies, batch.completion_mask, algo.top_entropy_fraction)
    totals: dict[str, float] = {}
    updates = lm_steps = head_steps = 0
    logits_for_controller = []
    for epoch in range(algo.num_iterations):
        order = torch.randperm(len(batch), generator=generator, device=generator.device)  # the model's device
        for index in order.chunk(algo.num_minibatches):
            mb = batch.select(index)
            mask = mb.completion_mask
            share = c.dist.token_share(mask)  # 1.0 in one process; see thermorl.runtime.distributed
            with torch.set_grad_enabled(trains_lm):
                scored = score(c.policy, mb)
            metrics: dict[str, float] = {}
            loss = torch.zeros((), device=mask.device)
            if trains_lm:
                pg, clipped = clipped_policy_loss(
                    scored.logprobs, old_logprobs[index], advantages[index], algo.epsilon, algo.epsilon_high
                )
                pg = pg * pg_mask[index]  # every token unless algorithm.top_entropy_fraction < 1
                if is_weights is not None:
                    pg = pg * is_weights[index]
                    metrics["is_weight_mean"] = aggregate(is_weights[index], mask).item()
                    metrics["is_clipped_fraction"] = aggregate(
                        (old_logprobs[index] - sampled_logprobs[index] > math.log(is_cap)).float(), mask
                    ).item()
                token_loss = pg
                if ref_logprobs is not None:
                    kl = kl_penalty(scored.logprobs, ref_logprobs[index], algo.kl_estimator)
                    token_loss = token_loss + algo.beta * kl
                    metrics["kl_ref"] = aggregate(kl, mask).item()
                loss = aggregate(token_loss, mask, algo.loss_aggregation)
                if algo.loss_aggregation == "token_mean":  # seq_mean: every process holds as many sequences
                    loss = loss * share
                metrics["pg_loss"] = aggregate(pg, mask, algo.loss_aggregation).item()
                metrics["clip_fraction"] = aggregate(clipped, mask).item()
                metrics["approx_kl"] = approx_kl(scored.logprobs.detach(), old_logprobs[index], mask).item()
            head_loss, head_metrics = c.controller.policy_loss(
                scored.hidden, mb.actions, advantages[index], mask, step
            )
            metrics.update(head_metrics)
            if head_loss is not None:
                loss = loss + head_loss * share
            if loss.requires_grad:
                if not c.dist.agree(bool(torch.isfinite(loss))):  # every process skips, none waits in backward
                    raise NonFiniteError("non-finite loss")
                c.lm_optimizer.zero_grad(set_to_none=True)
                if c.head_optimizer is not None:
                    c.head_optimizer.zero_grad(set_to_none=True)
                loss.backward()
                c.dist.average_gradients(c.policy.model, c.controller.module)
                if algo.max_grad_norm > 0:
                    grad_norm = fsdp.clip_grad_norm(list(c.policy.model.parameters()), algo.max_grad_norm)
                    metrics["grad_norm"] = grad_norm.item()
                if not _finite_gradients(c):
                    raise NonFiniteError("non-finite gradients")
                if trains_lm:
                    c.lm_optimizer.step()
                    lm_steps += 1
                if head_loss is not None and c.head_optimizer is not None:
                    c.head_optimizer.step()
                    head_steps += 1
            metrics["loss"] = loss.item()
            if epoch == 0 and c.controller.needs_logits_after_update:
                logits_for_controller.append((index, scored.logits.detach()))
            metrics = c.dist.reduce_metrics(metrics, share)
            for key, value in metrics.items():
                totals[key] = totals.get(key, 0.0) + value
            updates += 1

    logits = None
    if logits_for_controller:
        logits = torch.empty(len(batch), *logits_for_controller[0][1].shape[1:], device=batch.logprobs.device)
        for index, part in logits_for_controller:
            logits[index] = part
    c.controller.after_update(batch.actions, advantages, batch.completion_mask, batch.completion_ids, logits)
    c.dist.sync_controller(c.controller)
    return {**{key: value / updates for key, value in totals.items()}, "lm_steps": lm_steps, "head_steps": head_steps}


def rollout_is(config: Config) -> str:
    """algorithm.rollout_is with 'auto' resolved: tis with the vLLM engine, none with thermorl's own."""
    if config.algorithm.rollout_is == "auto":
        return "tis" if config.rollout.engine == "vllm" else "none"
    return config.algorithm.rollout_is


def _trainable_parameters(c: Components) -> list[torch.nn.Parameter]:
    """The language model's parameters and, when the controller has one, its head's."""
    head = list(c.controller.module.parameters()) if c.controller.module is not None else []
    return list(c.policy.model.parameters()) + head


def _finite_gradients(c: Components) -> bool:
    """Whether every process's gradients (its shards under FSDP) are finite."""
    norms = [fsdp.local(p.grad).detach().norm() for p in _trainable_parameters(c) if p.grad is not None]
    return c.dist.agree(not norms or bool(torch.isfinite(torch.stack(norms).sum())))


def _finite_parameters(c: Components) -> bool:
    norms = [fsdp.local(p).detach().norm() for p in _trainable_parameters(c)]
    return c.dist.agree(bool(torch.isfinite(torch.stack(norms).sum())))


def evaluate_policy(
    c: Components, config: Config, step: int, generator: torch.Generator, on_batch: Any = None
) -> dict[str, float]:
    """Greedy accuracy on the whole held-out split; avg@k / pass@k on its prefix at the one shared
    ``train.eval_temperature`` (every arm alike) and, for controllers that decode with their own policy
    at inference, at their own temperatures too (``eval_own_*``). ``on_batch`` sees each shared-temperature
    evaluation rollout."""
    # under accelerate each process scores every N-th problem; the shards are combined by size below
    problems = c.dist.stride(c.task.eval_problems())
    sampled = c.dist.stride(c.task.eval_problems()[: config.train.eval_avg_problems])
    reward = c.reward or c.task.reward
    with fsdp.full_weights(c.policy), c.dist.coordinated():  # no collectives inside: shards may differ in size
        metrics = {"eval_accuracy": greedy_accuracy(c.engine, c.task, problems, reward)}
        shared = FixedController(
            FixedConfig(config.train.eval_temperature), ControllerEnv(c.policy.hidden_size, 1, c.policy.device)
        )
        metrics.update(sampled_metrics(
            c.engine, c.task, sampled, shared, config.train.eval_avg_k, generator, training_step=step, reward=reward,
            on_batch=on_batch,
        ))
        if c.controller.decodes_at_inference:
            own = sampled_metrics(
                c.engine, c.task, sampled, c.controller, config.train.eval_avg_k, generator, training_step=step,
                reward=reward,
            )
            metrics.update({key.replace("eval_", "eval_own_"): value for key, value in own.items()})
    return c.dist.weighted_mean(metrics, {"eval_accuracy": len(problems)}, default_weight=len(sampled))


def batch_statistics(batch: RolloutBatch, rewards: torch.Tensor, group_size: int) -> dict[str, float]:
    mask = batch.completion_mask
    tokens = mask.sum().clamp_min(1.0)
    grouped = rewards.view(-1, group_size)
    mean_temp = (batch.temperatures * mask).sum() / tokens
    var_temp = (((batch.temperatures - mean_temp) ** 2) * mask).sum() / tokens
    return {
        "reward_mean": rewards.mean().item(),
        "reward_std": rewards.std().item(),
        "zero_variance_groups": (grouped.std(dim=1) == 0).float().mean().item(),
        "temperature_mean": mean_temp.item(),
        "temperature_std": var_temp.sqrt().item(),
        "entropy_mean": ((batch.entropies * mask).sum() / tokens).item(),
        "completion_length": mask.sum(-1).mean().item(),
    }


def prepare_run_dir(out_dir: Path, config: Config) -> RunLock:
    """Create and lock the run directory; refuse to write into a non-empty one; leave nothing behind on
    failure. Returns the held lock (a concurrent run with the same --out gets a one-line error)."""
    if (out_dir / "config.yaml").is_file():
        raise ThermoRLError(f"output directory {out_dir} is an existing run (continue it with --resume {out_dir})")
    if out_dir.exists() and not out_dir.is_dir():
        raise ThermoRLError(f"output directory {out_dir} exists and is a file (choose another --out)")
    if out_dir.exists() and any(p.name != LOCK_NAME for p in out_dir.iterdir()):
        raise ThermoRLError(f"output directory {out_dir} exists and is not empty (choose another --out)")
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise ThermoRLError(f"cannot create output directory {out_dir}: {err.strerror}") from None
    lock = RunLock(out_dir).acquire()
    if (out_dir / "config.yaml").is_file():  # a run that took the directory between the check and the lock
        lock.release()
        raise ThermoRLError(f"output directory {out_dir} is an existing run (continue it with --resume {out_dir})")
    try:
        dump_config(config, out_dir / "config.yaml")
    except OSError as err:
        lock.release()
        shutil.rmtree(out_dir, ignore_errors=True)
        raise ThermoRLError(f"cannot write {out_dir / 'config.yaml'}: {err.strerror}") from None
    return lock


def train(config: Config, out_dir: Path, progress: Any = None, resume: bool = False) -> dict[str, Any]:
    """Run GRPO with the configured controller; writes the run directory; returns the summary.

    ``resume`` continues ``out_dir`` from its newest valid checkpoint. A new run that fails on
    bad input before its first checkpoint is removed, so no half-made run directory remains.
    """
    c = build_components(config)
    run_dir, out_dir = out_dir, c.dist.output_dir(out_dir)  # under accelerate only process 0 writes the run
    state = LoopState.fresh(config.train.seed, c.policy.device)
    first_step = 1
    lock = None
    if resume:
        with c.dist.coordinated():  # one writer per run directory; the process group is one writer
            lock = RunLock(run_dir).acquire() if c.dist.is_main else None
        try:
            point = find_resume_point(run_dir)
            if point.step >= config.train.steps:
                raise ThermoRLError(
                    f"run {out_dir} has finished its {config.train.steps} steps (continue it with a larger --steps)"
                )
            restore(c, state, point)
            c.engine.sync_weights()  # an engine with its own copy of the weights started from the initial ones
            first_step = point.step + 1
            del point  # its tensors map the checkpoint's files
            rewind_run_dir(out_dir, config, first_step - 1)
        except OSError as err:
            _release(lock)
            raise ThermoRLError(f"cannot prepare {out_dir} for resuming: {err.strerror or err}") from None
        except BaseException:
            _release(lock)
            raise
    else:
        with c.dist.coordinated():
            lock = prepare_run_dir(out_dir, config)
        c.dist.decorrelate(state.generator, config.train.seed)  # a resumed run restored every process's streams
    logger = None
    try:
        logger = RunLogger(out_dir, config.log.tensorboard, purge_step=first_step if resume else None)
        return _train_loop(c, config, out_dir, logger, progress, state, first_step)
    except (ThermoRLError, OSError) as err:
        if not resume and not isinstance(err, TrainingDivergedError) and not ckpt.list_checkpoints(out_dir):
            if logger is not None:
                logger.close()
            shutil.rmtree(out_dir, ignore_errors=True)
        if isinstance(err, OSError):  # e.g. the disk filled up while writing a plot or a log
            raise ThermoRLError(f"cannot write {err.filename or out_dir}: {err.strerror or err}") from None
        raise
    finally:
        if logger is not None:
            logger.close()
        _release(lock)


def _release(lock: RunLock | None) -> None:
    if lock is not None:
        lock.release()


def _train_loop(
    c: Components, config: Config, out_dir: Path, logger: RunLogger, progress: Any, state: LoopState, first_step: int
) -> dict[str, Any]:
    seed, rollout = config.train.seed, config.rollout
    start = time.time()
    with GracefulStop() as stop:
        if first_step == 1:
            state.initial_eval = state.last_eval = evaluate_policy(c, config, 0, state.eval_generator)
            logger.log({"step": 0, **state.initial_eval})
        if progress is not None:
            progress.start(config.train.steps, state.last_eval["eval_accuracy"])

        saved_step = first_step - 1
        for step in range(first_step, config.train.steps + 1):
            if c.dist.any_process(stop.requested):  # a signal to one process stops every process here
                return _interrupted(c, config, out_dir, state, step - 1, saved_step)
            step_start = time.time()
            problems = c.dist.shard([  # this process's whole groups of the global batch
                p for p in c.task.train_problems(state.data_rng, rollout.prompts_per_step) for _ in range(rollout.group_size)
            ])
            try:
                metrics, batch, texts, rewards = _train_step(c, config, state, step, problems)
                state.bad_streak = 0
            except NonFiniteError as err:
                state.skipped_steps += 1
                state.bad_streak += 1
                log.warning("step %d skipped: %s (%d bad step(s) in a row)", step, err, state.bad_streak)
                metrics, batch = {"step": step, "skipped": 1, "skip_reason": str(err)}, None
            metrics["skipped_steps"] = state.skipped_steps
            metrics.update(c.dist.total(c.reward.metrics()))
            metrics["step_time_s"] = time.time() - step_start
            state.train_time += metrics["step_time_s"]

            if batch is not None and (step % config.train.eval_every == 0 or step == config.train.steps):
                try:
                    state.last_eval = evaluate_policy(c, config, step, state.eval_generator)
                    metrics.update(state.last_eval)
                except NonFiniteError as err:
                    log.warning("step %d: evaluation skipped: %s", step, err)
            logger.log(metrics)
            if batch is not None and config.log.samples_per_step:
                logger.samples(step, _sample_rows(batch, problems, texts, rewards, config.log.samples_per_step,
                                                 c.policy.tokenizer))
            if state.bad_streak >= config.train.max_bad_steps:
                _stop_diverged(c, config, out_dir, state, step)
            due = (config.train.checkpoint_every and step % config.train.checkpoint_every == 0) or step == config.train.steps
            if due and _save_if_finite(c, config, out_dir, state, step):
                saved_step = step
            if progress is not None:
                progress.update(
                    step, metrics.get("reward_mean", float("nan")), state.last_eval["eval_accuracy"],
                    metrics.get("temperature_mean", float("nan")),
                )

    summary = {
        "controller": config.temperature.controller,
        "seed": seed,
        "steps": config.train.steps,
        "initial_eval_accuracy": state.initial_eval["eval_accuracy"],
        "final_eval_accuracy": state.last_eval["eval_accuracy"],
        "initial_eval_avg_at_k": state.initial_eval["eval_avg_at_k"],
        "final_eval_avg_at_k": state.last_eval["eval_avg_at_k"],
        "final_eval_pass_at_k": state.last_eval["eval_pass_at_k"],
        "eval_temperature": config.train.eval_temperature,
        **{f"final_{key}": state.last_eval[key] for key in ("eval_own_avg_at_k", "eval_own_pass_at_k")
           if key in state.last_eval},
        "lm_updates": state.lm_updates,
        "head_updates": state.head_updates,
        "eval_problems": len(c.task.eval_problems()),
        "skipped_steps": state.skipped_steps,
        "train_time_s": state.train_time,
        "wall_time_s": time.time() - start,
    }
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=2))
    if config.log.plot:
        from thermorl.reports.interpret import write_temperature_report
        from thermorl.reports.plots import plot_curves
        from thermorl.reports.temperature_plots import plot_run_temperatures

        plot_curves(out_dir / "metrics.jsonl", out_dir / "curves.png", f"{config.temperature.controller}, seed {seed}")
        plot_run_temperatures(out_dir, config.temperature)
        # the report reads every step's untempered logits, which only thermorl's own sampler exposes
        report_engine = c.engine if getattr(c.engine, "exact_logprobs", True) else HFEngine(c.policy, config.rollout)
        with fsdp.full_weights(c.policy):  # generates: on gathered weights under FSDP
            write_temperature_report(
                c.policy, report_engine, c.task, c.controller, out_dir, seed, config.train.steps,
                f"{config.temperature.controller}, seed {seed}",
            )
    return summary


def _train_step(
    c: Components, config: Config, state: LoopState, step: int, problems: list
) -> tuple[dict[str, Any], RolloutBatch, list[str], torch.Tensor]:
    """Sample, reward, advantages, update; raises NonFiniteError (nothing stepped) on NaN/inf."""
    rollout = config.rollout
    group_ids = torch.arange(len(problems)) // rollout.group_size  # problems hold whole groups, in order
    with fsdp.full_weights(c.policy), c.dist.coordinated():  # gathered weights (FSDP); NaN in one process skips all
        batch = c.engine.generate(
            [p.prompt for p in problems], c.controller, state.generator, group_ids=group_ids, training_step=step
        )
    trainer_logprobs, mismatch = None, {}
    if not getattr(c.engine, "exact_logprobs", True):  # vLLM: the trainer's own log-probs and the gap
        batch, trainer_logprobs, mismatch = recompute(c.policy, c.controller, batch)
    texts = c.engine.decode(batch)
    with c.dist.coordinated():  # a reward function failing in one process (fail-fast) stops all of them
        rewards = torch.tensor(c.reward.score(problems, texts), device=c.policy.device)
    advantages = group_advantages_by_id(rewards, batch.group_ids, scale=config.algorithm.advantage == "grpo")
    metrics = {"step": step, **batch_statistics(*gather_batch(c.dist, batch, rewards), rollout.group_size)}
    algo = config.algorithm
    lr = algo.lr * lr_factor(step, config.train.steps, algo.warmup_steps, algo.lr_schedule)
    for group in c.lm_optimizer.param_groups:
        group["lr"] = lr
    metrics["lr"] = lr
    metrics.update(mismatch)
    diagnostics = grpo_update(c, config, batch, advantages, step, state.generator, trainer_logprobs)
    c.engine.sync_weights()  # the next rollout samples from the updated weights (hf: nothing to do)
    state.lm_updates += diagnostics.pop("lm_steps")
    state.head_updates += diagnostics.pop("head_steps")
    metrics.update(diagnostics)
    metrics.update({"lm_updates": state.lm_updates, "head_updates": state.head_updates})
    metrics.update(c.controller.metrics())
    return metrics, batch, texts, rewards


def _save_if_finite(c: Components, config: Config, out_dir: Path, state: LoopState, step: int) -> Path | None:
    """Save a checkpoint unless a parameter is NaN/inf: every checkpoint must be a valid restart point."""
    if not _finite_parameters(c):
        log.warning("step %d: not saving a checkpoint, the model has NaN/inf parameters", step)
        return None
    return save(c, out_dir, step, state, config.train.keep_checkpoints, final=step == config.train.steps)


def _stop_diverged(c: Components, config: Config, out_dir: Path, state: LoopState, step: int) -> None:
    last = _save_if_finite(c, config, out_dir, state, step) or ckpt.latest_valid_checkpoint(out_dir)
    raise TrainingDivergedError(
        f"stopped at step {step}: {state.bad_streak} steps in a row had NaN/inf logits, temperatures, loss or "
        f"gradients (train.max_bad_steps={config.train.max_bad_steps}); "
        + (f"last valid checkpoint: {last}" if last else "no valid checkpoint was saved")
    )


def _interrupted(
    c: Components, config: Config, out_dir: Path, state: LoopState, step: int, saved_step: int
) -> dict[str, Any]:
    """Ctrl-C: checkpoint the last finished step (unless just saved) and report where to resume from."""
    path = _save_if_finite(c, config, out_dir, state, step) if saved_step != step else None  # same in every process
    path = path or ckpt.latest_valid_checkpoint(out_dir)
    return {"interrupted": True, "step": step, "checkpoint": str(path) if path else None}


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


def _sample_rows(
    batch: RolloutBatch, problems: list, texts: list[str], rewards: torch.Tensor, count: int, tokenizer: Any
) -> list[dict]:
    rows = []
    for i in range(min(count, len(texts))):
        length = int(batch.completion_mask[i].sum().item())
        ids = batch.completion_ids[i, :length].tolist()
        rows.append({
            "prompt": problems[i].prompt,
            "completion": texts[i],
            "reward": rewards[i].item(),
            "temperatures": [round(t, 4) for t in batch.temperatures[i, :length].tolist()],
            "classes": token_classes([tokenizer.decode([t]) for t in ids], [t == tokenizer.eos_token_id for t in ids]),
        })
    return rows


def load_for_eval(config: Config) -> tuple[Policy, Task, TemperatureController]:
    """Policy, task and controller of a saved run; controller state comes from the checkpoint
    that holds ``config.model.path`` (when the model lives in a checkpoint)."""
    policy = load_policy(config.model)
    task = build_task(config.task)
    env = ControllerEnv(
        policy.hidden_size, config.train.steps, policy.device, config.rollout.group_size, config.train.seed
    )
    controller = build_controller(config.temperature, env)
    checkpoint_dir = Path(config.model.path).parent
    if (checkpoint_dir / "state.json").is_file():
        state, controller_tensors, _ = ckpt.load_checkpoint_state(checkpoint_dir)
        # random streams are resumed in training only; evaluation seeds them from the run seed
        tensors = {k: v for k, v in controller_tensors.items() if not k.endswith("generator")}
        controller.load_state_dict({**state["controller"], **tensors})
    return policy, task, controller
