"""Held-out evaluation: greedy accuracy, avg@k, the unbiased pass@k estimator, and a run's periodic evaluation."""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from thermorl.config import Config
from thermorl.engines.base import RolloutBatch, RolloutEngine, completion_id_lists
from thermorl.rewards.guard import RewardGuard
from thermorl.runtime import fsdp
from thermorl.tasks.base import Problem, Task
from thermorl.temperature.base import ControllerEnv, TemperatureController
from thermorl.temperature.fixed import FixedConfig, FixedController

if TYPE_CHECKING:
    from thermorl.runtime.components import Components


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k (Chen et al. 2021, Codex): 1 - C(n - c, k) / C(n, k), computed stably."""
    if n - c < k:
        return 1.0
    return 1.0 - math.prod(1.0 - k / i for i in range(n - c + 1, n + 1))


@torch.no_grad()
def score_problems(
    engine: RolloutEngine,
    task: Task,
    problems: list[Problem],
    controller: TemperatureController,
    samples: int,
    greedy: bool,
    generator: torch.Generator | None = None,
    batch_rows: int = 1024,
    training_step: int = 0,
    reward: RewardGuard | None = None,
    on_batch: Callable[[RolloutBatch], None] | None = None,
) -> list[list[float]]:
    """Rewards[problem][sample] of ``samples`` completions per problem, 0 where none was given (``reward``: the
    run's guard; without one the task's own verifier runs behind an in-process guard);
    ``on_batch`` is called with every sampled batch (e.g. to check its temperatures)."""
    reward = reward or RewardGuard([task.default_reward()], timeout_s=10.0, fail_fast=False, workers=0)
    rows = [p for p in problems for _ in range(samples)]
    rewards: list[float] = []
    for start in range(0, len(rows), batch_rows):
        chunk = rows[start : start + batch_rows]
        group_ids = torch.arange(start, start + len(chunk)) // samples  # the samples of one problem
        batch = engine.generate(
            [p.prompt for p in chunk], controller, generator, group_ids=group_ids, training_step=training_step,
            greedy=greedy,
        )
        if on_batch is not None:
            on_batch(batch)
        scores = reward.score(chunk, engine.decode(batch), completion_id_lists(batch), training_step)
        rewards.extend(scores.values())
    return [rewards[i * samples : (i + 1) * samples] for i in range(len(problems))]


def greedy_accuracy(
    engine: RolloutEngine, task: Task, problems: list[Problem], reward: RewardGuard | None = None,
    per_problem: list[float] | None = None,
) -> float:
    """Fraction of problems solved by greedy decoding (the temperature is irrelevant to argmax); each
    problem's reward is appended to ``per_problem`` when one is given (for paired before/after tests)."""
    controller = FixedController(FixedConfig(), ControllerEnv(1, 1, torch.device("cpu")))
    scores = [s[0] for s in score_problems(engine, task, problems, controller, 1, greedy=True, reward=reward)]
    if per_problem is not None:
        per_problem.extend(scores)
    return sum(scores) / len(scores)


def sampled_metrics(
    engine: RolloutEngine,
    task: Task,
    problems: list[Problem],
    controller: TemperatureController,
    k: int,
    generator: torch.Generator,
    training_step: int = 0,
    reward: RewardGuard | None = None,
    on_batch: Callable[[RolloutBatch], None] | None = None,
    per_problem: list[float] | None = None,
) -> dict[str, float]:
    """avg@k (mean reward of k samples) and pass@k over ``problems``, sampling with ``controller``; each
    problem's mean reward is appended to ``per_problem`` when one is given."""
    scores = score_problems(
        engine, task, problems, controller, k, False, generator, training_step=training_step, reward=reward,
        on_batch=on_batch,
    )
    means = [sum(s) / k for s in scores]
    if per_problem is not None:
        per_problem.extend(means)
    avg = sum(means) / len(scores)
    passed = sum(pass_at_k(k, int(sum(s)), k) for s in scores) / len(scores)
    return {"eval_avg_at_k": avg, "eval_pass_at_k": passed}


def evaluate_policy(
    c: Components, config: Config, step: int, generator: torch.Generator,
    on_batch: Callable[[RolloutBatch], None] | None = None, per_problem: dict[str, list[float]] | None = None,
) -> dict[str, float]:
    """Greedy accuracy on the whole held-out split; avg@k / pass@k on its prefix at the one shared
    ``train.eval_temperature`` (every arm alike) and, for controllers that decode with their own policy
    at inference, at their own temperatures too (``eval_own_*``). ``on_batch`` sees each shared-temperature
    evaluation rollout; ``per_problem`` (a dict) receives this process's per-problem scores under
    ``greedy`` and ``avg_at_k`` (the shared temperature's mean of k samples)."""
    per_problem = {} if per_problem is None else per_problem
    per_problem.update(greedy=[], avg_at_k=[])
    # under accelerate each process scores every N-th problem; the shards are combined by size below
    problems = c.dist.stride(c.task.eval_problems())
    sampled = c.dist.stride(c.task.eval_problems()[: config.train.eval_avg_problems])
    reward = c.reward
    reads = None if c.engine.owns_weights else c.policy  # gathered (FSDP) for an engine that reads the policy
    with fsdp.full_weights(reads), c.dist.coordinated():  # no collectives inside: shards may differ in size
        metrics = {"eval_accuracy": greedy_accuracy(c.engine, c.task, problems, reward, per_problem["greedy"])}
        env = ControllerEnv(c.policy.hidden_size, 1, c.policy.device)
        shared = FixedController(FixedConfig(config.train.eval_temperature), env)
        metrics.update(sampled_metrics(
            c.engine, c.task, sampled, shared, config.train.eval_avg_k, generator, training_step=step, reward=reward,
            on_batch=on_batch, per_problem=per_problem["avg_at_k"],
        ))
        if c.controller.decodes_at_inference:
            own = sampled_metrics(
                c.engine, c.task, sampled, c.controller, config.train.eval_avg_k, generator, training_step=step,
                reward=reward,
            )
            metrics.update({key.replace("eval_", "eval_own_"): value for key, value in own.items()})
    return c.dist.weighted_mean(metrics, {"eval_accuracy": len(problems)}, default_weight=len(sampled))


def evaluate_and_record(
    c: Components, config: Config, step: int, generator: torch.Generator, out_dir: Path
) -> dict[str, float]:
    """``evaluate_policy``, and each held-out problem's scores appended as one line
    ``{"step": s, "greedy": [...], "avg_at_k": [...]}`` to ``RUN/eval_problems.jsonl`` (one process only:
    sharded runs score interleaved slices), so that a before/after gain can be tested paired over problems
    (``thermorl.study.stats.paired_gain``)."""
    per_problem: dict[str, list[float]] = {}
    metrics = evaluate_policy(c, config, step, generator, per_problem=per_problem)
    if c.dist.world_size == 1:
        with open(out_dir / "eval_problems.jsonl", "a", encoding="utf-8") as handle:
            handle.write(json.dumps({"step": step, **per_problem}) + "\n")
    return metrics
