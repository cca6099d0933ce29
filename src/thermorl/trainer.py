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
"""

from __future__ import annotations

import copy
import json
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from thermorl import checkpoint as ckpt
from thermorl.algorithms.grpo import aggregate, approx_kl, clipped_policy_loss, group_advantages, kl_penalty
from thermorl.config import Config, dump_config
from thermorl.errors import ThermoRLError
from thermorl.evaluate import greedy_accuracy, sampled_metrics
from thermorl.models.policy import Policy, load_policy
from thermorl.rollout import RolloutBatch, decode_completions, encode_prompts, sample, score
from thermorl.tasks import Task, build_task
from thermorl.temperature import ControllerEnv, TemperatureController, build_controller
from thermorl.tracking import RunLogger


@dataclass
class Components:
    """Everything a run builds before it writes anything to disk."""

    policy: Policy
    reference: Policy | None
    task: Task
    controller: TemperatureController
    lm_optimizer: torch.optim.Optimizer
    head_optimizer: torch.optim.Optimizer | None


def build_components(config: Config) -> Components:
    """Load model, task and controller; raises ThermoRLError on bad input, before any file is written."""
    torch.manual_seed(config.train.seed)
    if config.train.threads:
        torch.set_num_threads(config.train.threads)
    policy = load_policy(config.model, seed=config.train.seed)
    task = build_task(config.task)
    env = ControllerEnv(
        policy.hidden_size, config.train.steps, policy.device, config.rollout.group_size, config.train.seed
    )
    controller = build_controller(config.temperature, env)
    reference = None
    if config.algorithm.beta > 0:
        reference = Policy(copy.deepcopy(policy.model).eval().requires_grad_(False), policy.tokenizer)
    lm_optimizer = torch.optim.AdamW(
        policy.model.parameters(), lr=config.algorithm.lr, weight_decay=config.algorithm.weight_decay
    )
    head_optimizer = None
    if controller.module is not None:
        head_lr = getattr(getattr(config.temperature, config.temperature.controller), "lr", config.algorithm.lr)
        head_optimizer = torch.optim.AdamW(controller.module.parameters(), lr=head_lr)
    return Components(policy, reference, task, controller, lm_optimizer, head_optimizer)


def grpo_update(
    c: Components, config: Config, batch: RolloutBatch, advantages: torch.Tensor, step: int,
    generator: torch.Generator,
) -> dict[str, float]:
    """mu epochs of clipped-ratio updates on one batch; returns averaged diagnostics."""
    algo = config.algorithm
    trains_lm = c.controller.trains_lm(step)
    old_logprobs = batch.logprobs
    if algo.recompute_old_logprobs:
        with torch.no_grad():
            old_logprobs = score(c.policy, batch).logprobs
    ref_logprobs = None
    if c.reference is not None:
        with torch.no_grad():
            ref_logprobs = score(c.reference, batch).logprobs

    totals: dict[str, float] = {}
    updates = 0
    logits_for_controller = []
    for epoch in range(algo.num_iterations):
        order = torch.randperm(len(batch), generator=generator, device="cpu").to(batch.completion_ids.device)
        for index in order.chunk(algo.num_minibatches):
            mb = batch.select(index)
            mask = mb.completion_mask
            with torch.set_grad_enabled(trains_lm):
                scored = score(c.policy, mb)
            metrics: dict[str, float] = {}
            loss = torch.zeros((), device=mask.device)
            if trains_lm:
                pg, clipped = clipped_policy_loss(
                    scored.logprobs, old_logprobs[index], advantages[index], algo.epsilon, algo.epsilon_high
                )
                token_loss = pg
                if ref_logprobs is not None:
                    kl = kl_penalty(scored.logprobs, ref_logprobs[index], algo.kl_estimator)
                    token_loss = token_loss + algo.beta * kl
                    metrics["kl_ref"] = aggregate(kl, mask).item()
                loss = aggregate(token_loss, mask, algo.loss_aggregation)
                metrics["pg_loss"] = aggregate(pg, mask, algo.loss_aggregation).item()
                metrics["clip_fraction"] = aggregate(clipped, mask).item()
                metrics["approx_kl"] = approx_kl(scored.logprobs.detach(), old_logprobs[index], mask).item()
            head_loss, head_metrics = c.controller.policy_loss(
                scored.hidden, mb.records, advantages[index], mask, step
            )
            metrics.update(head_metrics)
            if head_loss is not None:
                loss = loss + head_loss
            if loss.requires_grad:
                c.lm_optimizer.zero_grad(set_to_none=True)
                if c.head_optimizer is not None:
                    c.head_optimizer.zero_grad(set_to_none=True)
                loss.backward()
                if algo.max_grad_norm > 0:
                    grad_norm = torch.nn.utils.clip_grad_norm_(c.policy.model.parameters(), algo.max_grad_norm)
                    metrics["grad_norm"] = grad_norm.item()
                if trains_lm:
                    c.lm_optimizer.step()
                if head_loss is not None and c.head_optimizer is not None:
                    c.head_optimizer.step()
            metrics["loss"] = loss.item()
            if epoch == 0 and c.controller.needs_logits_after_update:
                logits_for_controller.append((index, scored.logits.detach()))
            for key, value in metrics.items():
                totals[key] = totals.get(key, 0.0) + value
            updates += 1

    logits = None
    if logits_for_controller:
        logits = torch.empty(len(batch), *logits_for_controller[0][1].shape[1:], device=batch.logprobs.device)
        for index, part in logits_for_controller:
            logits[index] = part
    c.controller.after_update(batch.records, advantages, batch.completion_mask, batch.completion_ids, logits)
    return {key: value / updates for key, value in totals.items()}


def evaluate_policy(c: Components, config: Config, step: int, generator: torch.Generator) -> dict[str, float]:
    """Greedy accuracy on the whole held-out split and avg@k / pass@k on its prefix."""
    problems = c.task.eval_problems()
    metrics = {"eval_accuracy": greedy_accuracy(c.policy, c.task, problems, config.rollout.max_new_tokens)}
    metrics.update(
        sampled_metrics(
            c.policy, c.task, problems[: config.train.eval_avg_problems], c.controller, config.train.eval_avg_k,
            config.rollout.max_new_tokens, generator, training_step=step,
        )
    )
    return metrics


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


def prepare_run_dir(out_dir: Path, config: Config) -> None:
    """Create the run directory; refuse to write into a non-empty one."""
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        raise ThermoRLError(f"output directory {out_dir} exists and is not empty (choose another --out)")
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise ThermoRLError(f"cannot create output directory {out_dir}: {err.strerror}") from None
    dump_config(config, out_dir / "config.yaml")


def train(config: Config, out_dir: Path, progress: Any = None) -> dict[str, Any]:
    """Run GRPO with the configured controller; writes the run directory; returns the summary."""
    c = build_components(config)
    prepare_run_dir(out_dir, config)
    logger = RunLogger(out_dir, config.log.tensorboard)
    try:
        return _train_loop(c, config, out_dir, logger, progress)
    finally:
        logger.close()


def _train_loop(
    c: Components, config: Config, out_dir: Path, logger: RunLogger, progress: Any
) -> dict[str, Any]:
    seed, rollout = config.train.seed, config.rollout
    data_rng = random.Random(seed)
    generator = torch.Generator(device=c.policy.device).manual_seed(seed)
    eval_generator = torch.Generator(device=c.policy.device).manual_seed(seed + 1)
    start = time.time()
    train_time = 0.0

    initial = evaluate_policy(c, config, 0, eval_generator)
    logger.log({"step": 0, **initial})
    last_eval = initial
    if progress is not None:
        progress.start(config.train.steps, initial["eval_accuracy"])

    for step in range(1, config.train.steps + 1):
        step_start = time.time()
        problems = [p for p in c.task.train_problems(data_rng, rollout.prompts_per_step) for _ in range(rollout.group_size)]
        prompt_ids, prompt_mask = encode_prompts(c.policy, [p.prompt for p in problems])
        c.policy.model.eval()
        batch = sample(c.policy, c.controller, prompt_ids, prompt_mask, rollout.max_new_tokens, generator,
                       training_step=step)
        c.policy.model.train()
        texts = decode_completions(c.policy, batch)
        rewards = torch.tensor([c.task.reward(p, t) for p, t in zip(problems, texts)], device=c.policy.device)
        advantages = group_advantages(rewards, rollout.group_size, scale=config.algorithm.advantage == "grpo")
        metrics = {"step": step, **batch_statistics(batch, rewards, rollout.group_size)}
        metrics.update(grpo_update(c, config, batch, advantages, step, generator))
        metrics.update(c.controller.metrics())
        metrics["step_time_s"] = time.time() - step_start
        train_time += metrics["step_time_s"]

        if step % config.train.eval_every == 0 or step == config.train.steps:
            last_eval = evaluate_policy(c, config, step, eval_generator)
            metrics.update(last_eval)
        logger.log(metrics)
        if config.log.samples_per_step:
            logger.samples(step, _sample_rows(batch, problems, texts, rewards, config.log.samples_per_step))
        if (config.train.checkpoint_every and step % config.train.checkpoint_every == 0) or step == config.train.steps:
            save(c, out_dir, step, generator, data_rng, config.train.keep_checkpoints)
        if progress is not None:
            progress.update(step, metrics["reward_mean"], last_eval["eval_accuracy"], metrics["temperature_mean"])

    summary = {
        "controller": config.temperature.controller,
        "seed": seed,
        "steps": config.train.steps,
        "initial_eval_accuracy": initial["eval_accuracy"],
        "final_eval_accuracy": last_eval["eval_accuracy"],
        "initial_eval_avg_at_k": initial["eval_avg_at_k"],
        "final_eval_avg_at_k": last_eval["eval_avg_at_k"],
        "final_eval_pass_at_k": last_eval["eval_pass_at_k"],
        "eval_problems": len(c.task.eval_problems()),
        "train_time_s": train_time,
        "wall_time_s": time.time() - start,
    }
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=2))
    if config.log.plot:
        from thermorl.interpret import write_temperature_report
        from thermorl.plots import plot_curves
        from thermorl.temperature_plots import plot_run_temperatures

        plot_curves(out_dir / "metrics.jsonl", out_dir / "curves.png", f"{config.temperature.controller}, seed {seed}")
        plot_run_temperatures(out_dir, config.temperature)
        write_temperature_report(
            c.policy, c.task, c.controller, out_dir, rollout.max_new_tokens, seed, config.train.steps,
            f"{config.temperature.controller}, seed {seed}",
        )
    return summary


def save(c: Components, out_dir: Path, step: int, generator: torch.Generator, data_rng: random.Random, keep: int) -> Path:
    return ckpt.save_checkpoint(
        out_dir, step, c.policy.model, c.policy.tokenizer, c.controller.state_dict(),
        {"lm": c.lm_optimizer, "head": c.head_optimizer}, generator, data_rng, keep,
    )


def _sample_rows(batch: RolloutBatch, problems: list, texts: list[str], rewards: torch.Tensor, count: int) -> list[dict]:
    rows = []
    for i in range(min(count, len(texts))):
        length = int(batch.completion_mask[i].sum().item())
        rows.append({
            "prompt": problems[i].prompt,
            "completion": texts[i],
            "reward": rewards[i].item(),
            "temperatures": [round(t, 4) for t in batch.temperatures[i, :length].tolist()],
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
        controller.load_state_dict({**state["controller"], **controller_tensors})
    return policy, task, controller
