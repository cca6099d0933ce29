"""Held-out evaluation: greedy accuracy, avg@k, and the unbiased pass@k estimator."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from thermorl.config import FixedConfig
from thermorl.engines.base import RolloutBatch, RolloutEngine
from thermorl.tasks.base import Problem, Task
from thermorl.temperature.base import ControllerEnv, TemperatureController
from thermorl.temperature.fixed import FixedController


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
    reward: Callable[[Problem, str], float] | None = None,
    on_batch: Callable[[RolloutBatch], None] | None = None,
) -> list[list[float]]:
    """Rewards[problem][sample] of ``samples`` completions per problem (``reward`` defaults to the task's);
    ``on_batch`` is called with every sampled batch (e.g. to check its temperatures)."""
    reward = reward or task.reward
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
        rewards.extend(reward(p, text) for p, text in zip(chunk, engine.decode(batch)))
    return [rewards[i * samples : (i + 1) * samples] for i in range(len(problems))]


def greedy_accuracy(
    engine: RolloutEngine, task: Task, problems: list[Problem], reward: Callable[[Problem, str], float] | None = None,
) -> float:
    """Fraction of problems solved by greedy decoding (the temperature is irrelevant to argmax)."""
    controller = FixedController(FixedConfig(), ControllerEnv(1, 1, torch.device("cpu")))
    scores = score_problems(engine, task, problems, controller, 1, greedy=True, reward=reward)
    return sum(s[0] for s in scores) / len(scores)


def sampled_metrics(
    engine: RolloutEngine,
    task: Task,
    problems: list[Problem],
    controller: TemperatureController,
    k: int,
    generator: torch.Generator,
    training_step: int = 0,
    reward: Callable[[Problem, str], float] | None = None,
    on_batch: Callable[[RolloutBatch], None] | None = None,
) -> dict[str, float]:
    """avg@k (mean reward of k samples) and pass@k over ``problems``, sampling with ``controller``."""
    scores = score_problems(
        engine, task, problems, controller, k, False, generator, training_step=training_step, reward=reward,
        on_batch=on_batch,
    )
    avg = sum(sum(s) / k for s in scores) / len(scores)
    passed = sum(pass_at_k(k, int(sum(s)), k) for s in scores) / len(scores)
    return {"eval_avg_at_k": avg, "eval_pass_at_k": passed}
