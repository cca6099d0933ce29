"""The training loop: sample -> reward -> advantage -> update -> log -> checkpoint.

The trainer only wires parts together; every equation lives in ``algorithms``, every temperature
decision in the controller, the update in ``update.py`` and the fault policy in ``faults.py``, so
swapping a controller never touches this file. One GRPO step (DeepSeekMath, Algorithm 1, with
per-token temperatures):

  1. draw P prompts, repeat each G times (one group id per prompt);
  2. sample completions through the rollout engine; the controller picks tau_t per token; record
     log pi_old(y_t | tau_t);
  3. r_i = task reward; A_i = the registered advantage estimator over each group;
  4. for mu epochs over minibatches: recompute log pi(y_t | tau_t) at the recorded tau_t (with one
     optimizer step that forward is also pi_old and the rollout correction's, ``runtime.correction``),
     clipped-ratio loss (+ beta KL to the reference), plus the controller's own loss;
  5. the controller's outer update (TAMPO), logging, evaluation, checkpoint.

Rewards go through a ``RewardGuard`` (worker processes, timeouts that kill, exceptions, NaN). Ctrl-C
finishes the step, saves a checkpoint and returns (a reward call still stuck 5 s after it is given up
and the run stops at its newest checkpoint); ``resume=True`` continues from the newest valid one.
"""

from __future__ import annotations

import logging
import math
import shutil
import time
from pathlib import Path
from typing import Any

import torch

from thermorl.algorithms.objective import advantages as estimate_advantages
from thermorl.algorithms.schedule import lr_factor
from thermorl.config import Config, to_dict
from thermorl.engines import HFEngine, RolloutBatch
from thermorl.engines.hf import stop_token_ids
from thermorl.rewards.pool import RewardInterrupted
from thermorl.errors import NonFiniteError, ThermoRLError, TrainingDivergedError
from thermorl.runtime import checkpoint as ckpt
from thermorl.runtime import faults, fsdp
from thermorl.runtime.components import Components, build_components, load_for_eval
from thermorl.runtime.distributed import gather_batch
from thermorl.runtime.resume import GracefulStop, LoopState, find_resume_point, restore, rewind_run_dir
from thermorl.runtime.runlock import RunLock
from thermorl.runtime.dynamic_sampling import draw_groups, sample_and_score
from thermorl.runtime.tracking import RunLogger, RunSummary, build_trackers, prepare_run_dir, release
from thermorl.runtime.update import batch_statistics, grpo_update
from thermorl.study.evaluate import evaluate_and_record, evaluate_policy

__all__ = [  # the loop's own names, and (for callers of the first layout) what a run is built and updated with
    "batch_statistics", "prepare_run_dir", "train", "train_step",
    "Components", "build_components", "evaluate_policy", "grpo_update", "load_for_eval",
]

log = logging.getLogger(__name__)


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
            release(lock)
            raise ThermoRLError(f"cannot prepare {out_dir} for resuming: {err.strerror or err}") from None
        except BaseException:
            release(lock)
            raise
    else:
        with c.dist.coordinated():
            lock = prepare_run_dir(out_dir, config)
        c.dist.decorrelate(state.generator, config.train.seed)  # a resumed run restored every process's streams
    logger = None
    try:
        trackers = build_trackers(config.log.report_to, config.log.project, out_dir, to_dict(config)) \
            if c.dist.is_main else []
        logger = RunLogger(out_dir, config.log.tensorboard, purge_step=first_step if resume else None,
                           trackers=trackers)
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
        release(lock)


def _train_loop(
    c: Components, config: Config, out_dir: Path, logger: RunLogger, progress: Any, state: LoopState, first_step: int
) -> dict[str, Any]:
    start = time.time()
    with GracefulStop() as stop:
        c.reward.should_stop = lambda: stop.requested  # a stuck reward call must not hold up Ctrl-C / SIGTERM
        try:
            if first_step == 1:
                state.initial_eval = state.last_eval = evaluate_and_record(c, config, 0, state.eval_generator, out_dir)
                logger.log({"step": 0, **state.initial_eval})
            if progress is not None:
                progress.start(config.train.steps, state.last_eval["eval_accuracy"])

            saved_step = first_step - 1
            for step in range(first_step, config.train.steps + 1):
                if c.dist.any_process(stop.requested):  # a signal to one process stops every process here
                    return faults.interrupted(c, config, out_dir, state, step - 1, saved_step)
                step_start = time.time()
                problems = draw_groups(c, config, state)  # this process's whole groups of the global batch
                try:
                    metrics, batch, problems, texts, rewards = train_step(c, config, state, step, problems)
                    state.bad_streak = 0
                except NonFiniteError as err:
                    metrics, batch = faults.skip_step(state, step, err), None
                metrics["skipped_steps"] = state.skipped_steps
                metrics.update(c.dist.total(c.reward.metrics()))
                metrics["step_time_s"] = time.time() - step_start
                state.train_time += metrics["step_time_s"]

                if batch is not None and (step % config.train.eval_every == 0 or step == config.train.steps):
                    try:
                        state.last_eval = evaluate_and_record(c, config, step, state.eval_generator, out_dir)
                        metrics.update(state.last_eval)
                    except NonFiniteError as err:
                        log.warning("step %d: evaluation skipped: %s", step, err)
                logger.log(metrics)
                if batch is not None and config.log.samples_per_step:
                    logger.samples(step, _sample_rows(batch, problems, texts, rewards, config.log.samples_per_step,
                                                     c.policy, c.task))
                faults.stop_if_diverged(c, config, out_dir, state, step)
                due = (config.train.checkpoint_every and step % config.train.checkpoint_every == 0) or step == config.train.steps
                if due and faults.save_if_finite(c, config, out_dir, state, step):
                    saved_step = step
                if progress is not None:
                    progress.update(
                        step, metrics.get("reward_mean", float("nan")), state.last_eval["eval_accuracy"],
                        metrics.get("temperature_mean", float("nan")),
                    )
        except RewardInterrupted:
            return faults.stopped_in_reward(out_dir)
        finally:
            c.reward.should_stop = None

    summary = _summary(c, config, state, time.time() - start)
    summary.write(out_dir)
    if config.log.plot:
        from thermorl.reports import write_run_reports

        # the report reads every step's untempered logits, which only thermorl's own sampler exposes
        report_engine = c.engine if getattr(c.engine, "exact_logprobs", True) else HFEngine(c.policy, config.rollout)
        with fsdp.full_weights(c.policy):  # the report generates: on gathered weights under FSDP
            write_run_reports(c.policy, report_engine, c.task, c.controller, out_dir, config, c.reward)
    return summary.to_json()


def train_step(
    c: Components, config: Config, state: LoopState, step: int, problems: list
) -> tuple[dict[str, Any], RolloutBatch, list, list[str], torch.Tensor]:
    """Sample, reward, advantages, update; raises NonFiniteError (nothing stepped) on NaN/inf.

    ``problems`` holds whole groups, in order (each problem repeated ``rollout.group_size`` times).
    Returns the metrics, batch, problems (dynamic sampling may replace some), texts and rewards.
    """
    rollout, algo = config.rollout, config.algorithm
    clock = time.perf_counter()
    batch, problems, texts, scores, sampling = sample_and_score(c, config, state, step, problems)
    timings, clock = {"step_time_rollout_s": time.perf_counter() - clock}, time.perf_counter()
    # a sample no reward function rewarded (None) is NaN here: the advantage leaves it out
    rewards = torch.tensor(scores.values(missing=math.nan), device=c.policy.device)
    advantages = estimate_advantages(algo.advantage, rewards, batch.group_ids)
    lr = algo.lr * lr_factor(step, config.train.steps, algo.warmup_steps, algo.lr_schedule)
    for group in c.lm_optimizer.param_groups:
        group["lr"] = lr
    # pi_old, the rollout correction (vLLM) and the update; an engine without entropies gets the trainer's
    c.engine.sleep()  # vLLM on a GPU with rollout.vllm.sleep_between_steps: its memory is the update's meanwhile
    diagnostics = grpo_update(c, config, batch, advantages, step, state.generator)
    timings["step_time_update_s"] = time.perf_counter() - clock
    metrics = {"step": step, **batch_statistics(*gather_batch(c.dist, batch, rewards), rollout.group_size)}
    metrics.update(sampling)  # dynamic sampling's rounds and groups, when it is on
    if len(c.reward.functions) > 1:
        metrics.update(scores.function_means())
    metrics["lr"] = lr
    clock = time.perf_counter()
    c.engine.sync_weights()  # the next rollout samples from the updated weights (hf: nothing to do)
    timings["step_time_sync_s"] = time.perf_counter() - clock
    state.lm_updates += diagnostics.pop("lm_steps")
    state.head_updates += diagnostics.pop("head_steps")
    metrics.update(diagnostics)
    metrics.update({"lm_updates": state.lm_updates, "head_updates": state.head_updates})
    metrics.update(c.controller.metrics())
    metrics.update(timings)
    return metrics, batch, problems, texts, rewards


def _summary(c: Components, config: Config, state: LoopState, wall_time_s: float) -> RunSummary:
    initial, last = state.initial_eval, state.last_eval
    return RunSummary(
        controller=config.temperature.controller, seed=config.train.seed, steps=config.train.steps,
        initial_eval_accuracy=initial["eval_accuracy"], final_eval_accuracy=last["eval_accuracy"],
        initial_eval_avg_at_k=initial["eval_avg_at_k"], final_eval_avg_at_k=last["eval_avg_at_k"],
        final_eval_pass_at_k=last["eval_pass_at_k"], eval_temperature=config.train.eval_temperature,
        lm_updates=state.lm_updates, head_updates=state.head_updates, eval_problems=len(c.task.eval_problems()),
        skipped_steps=state.skipped_steps, train_time_s=state.train_time, wall_time_s=wall_time_s,
        final_eval_own_avg_at_k=last.get("eval_own_avg_at_k"), final_eval_own_pass_at_k=last.get("eval_own_pass_at_k"),
    )


def _sample_rows(
    batch: RolloutBatch, problems: list, texts: list[str], rewards: torch.Tensor, count: int, policy: Any, task: Any
) -> list[dict]:
    tokenizer = policy.tokenizer
    rows, stop_ids = [], set(stop_token_ids(policy))
    for i in range(min(count, len(texts))):
        length = int(batch.completion_mask[i].sum().item())
        ids = batch.completion_ids[i, :length].tolist()
        rows.append({
            "prompt": problems[i].prompt,
            "completion": texts[i],
            "reward": None if math.isnan(rewards[i].item()) else rewards[i].item(),
            "temperatures": [round(t, 4) for t in batch.temperatures[i, :length].tolist()],
            "classes": task.report_token_classes([tokenizer.decode([t]) for t in ids], [t in stop_ids for t in ids]),
        })
    return rows
