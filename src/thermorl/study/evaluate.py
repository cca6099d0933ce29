"""Held-out evaluation: greedy accuracy, avg@k, and the unbiased pass@k estimator."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from thermorl.engines.base import TEMPERATURE_RANGE, RolloutBatch
from thermorl.engines.hf import decode_completions, encode_prompts, sample
from thermorl.models.policy import Policy
from thermorl.tasks.base import Problem, Task
from thermorl.temperature.base import TemperatureController
from thermorl.temperature.fixed import FixedController


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k (Chen et al. 2021, Codex): 1 - C(n - c, k) / C(n, k), computed stably."""
    if n - c < k:
        return 1.0
    return 1.0 - math.prod(1.0 - k / i for i in range(n - c + 1, n + 1))


@torch.no_grad()
def score_problems(
    policy: Policy,
    task: Task,
    problems: list[Problem],
    controller: TemperatureController,
    samples: int,
    max_new_tokens: int,
    greedy: bool,
    generator: torch.Generator | None = None,
    batch_rows: int = 1024,
    training_step: int = 0,
    temperature_range: tuple[float, float] = TEMPERATURE_RANGE,
    reward: Callable[[Problem, str], float] | None = None,
    on_batch: Callable[[RolloutBatch], None] | None = None,
) -> list[list[float]]:
    """Rewards[problem][sample] of ``samples`` completions per problem (``reward`` defaults to the task's);
    ``on_batch`` is called with every sampled batch (e.g. to check its temperatures)."""
    reward = reward or task.reward
    rows = [p for p in problems for _ in range(samples)]
    rewards: list[float] = []
    was_training = policy.model.training
    policy.model.eval()
    for start in range(0, len(rows), batch_rows):
        chunk = rows[start : start + batch_rows]
        prompt_ids, prompt_mask = encode_prompts(policy, [p.prompt for p in chunk])
        batch = sample(
            policy, controller, prompt_ids, prompt_mask, max_new_tokens, generator, greedy, training_step,
            temperature_range,
        )
        if on_batch is not None:
            on_batch(batch)
        rewards.extend(reward(p, text) for p, text in zip(chunk, decode_completions(policy, batch)))
    policy.model.train(was_training)
    return [rewards[i * samples : (i + 1) * samples] for i in range(len(problems))]


def greedy_accuracy(
    policy: Policy, task: Task, problems: list[Problem], max_new_tokens: int,
    reward: Callable[[Problem, str], float] | None = None,
) -> float:
    """Fraction of problems solved by greedy decoding (the temperature is irrelevant to argmax)."""
    from thermorl.config import FixedConfig
    from thermorl.temperature.base import ControllerEnv

    controller = FixedController(FixedConfig(), ControllerEnv(policy.hidden_size, 1, policy.device))
    scores = score_problems(policy, task, problems, controller, 1, max_new_tokens, greedy=True, reward=reward)
    return sum(s[0] for s in scores) / len(scores)


def sampled_metrics(
    policy: Policy,
    task: Task,
    problems: list[Problem],
    controller: TemperatureController,
    k: int,
    max_new_tokens: int,
    generator: torch.Generator,
    training_step: int = 0,
    temperature_range: tuple[float, float] = TEMPERATURE_RANGE,
    reward: Callable[[Problem, str], float] | None = None,
    on_batch: Callable[[RolloutBatch], None] | None = None,
) -> dict[str, float]:
    """avg@k (mean reward of k samples) and pass@k over ``problems``, sampling with ``controller``."""
    scores = score_problems(
        policy, task, problems, controller, k, max_new_tokens, False, generator, training_step=training_step,
        temperature_range=temperature_range, reward=reward, on_batch=on_batch,
    )
    avg = sum(sum(s) / k for s in scores) / len(scores)
    passed = sum(pass_at_k(k, int(sum(s)), k) for s in scores) / len(scores)
    return {"eval_avg_at_k": avg, "eval_pass_at_k": passed}
