"""Reward time of one GRPO step: batched calls in the reward worker pool vs the per-item calls they replace.

Acceptance (issue 16): batched rewards make the reward time of a default step no slower than the
per-item calls of the guard before it. Both sides score the same completions in one process, in
interleaved pairs after a warm-up:

* per-item: the guard before issue 16 (commit 151c26f's ``RewardGuard.score``): one in-process call
  per completion, each behind ``call_with_timeout`` (SIGALRM), its value checked;
* batched: today's ``RewardGuard`` with its defaults: one call per batch and reward function, run in
  a worker process of the pool (``task.reward_workers=2``), values checked.

Two workloads: the default job's step (countdown, 16 prompts x 8 completions sampled from the shipped
tiny model, the task's own verifier), and a math step (math500, 16 problems x 8 completions built from
reference solutions with their final answer kept or altered, ``math_verify_reward``; each round uses
other problems, so neither side's parse caches carry over). The clock is wall time: the batched side's
work runs in another process, so this process's CPU time would not see it. The headline is the median
over pairs of per-item time / batched time (>= 1 means batched is no slower).

    python benchmarks/reward_batching.py                  # -> benchmarks/results_rewards.json
    python benchmarks/reward_batching.py --repeats 5      # quicker
"""

from __future__ import annotations

import math
import random
import sys
import time
from functools import partial
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import machine_info, median, script_arguments, verdict, write_result  # noqa: E402

from thermorl.config import Config  # noqa: E402
from thermorl.engines import build_engine  # noqa: E402
from thermorl.engines.base import completion_id_lists  # noqa: E402
from thermorl.models.policy import load_policy  # noqa: E402
from thermorl.rewards import RewardFunction, RewardGuard, math_verify_reward  # noqa: E402
from thermorl.rewards.guard import call_with_timeout  # noqa: E402
from thermorl.tasks import build_task  # noqa: E402
from thermorl.tasks.base import Problem  # noqa: E402
from thermorl.tasks.math import math_problem  # noqa: E402
from thermorl.tasks.math_data import load_math_rows  # noqa: E402
from thermorl.temperature import ControllerEnv, build_controller  # noqa: E402

GOAL = 1.0
OUT = Path(__file__).resolve().parent / "results_rewards.json"


def per_item(reward, problems: list[Problem], texts: list[str], timeout_s: float) -> list[float]:
    """The pre-issue-16 guard's per-item path: one guarded in-process call per completion."""
    values = []
    for problem, text in zip(problems, texts):
        try:
            value = float(call_with_timeout(reward, timeout_s, problem, text))
        except Exception:  # noqa: BLE001 - scored 0, as that guard did
            value = 0.0
        values.append(value if math.isfinite(value) else 0.0)
    return values


def countdown_workload(config: Config) -> tuple[object, list, list[str], list[list[int]]]:
    """The default job's task and one step's real completions (16 prompts x 8, shipped tiny model)."""
    task = build_task(config.task)
    policy = load_policy(config.model, seed=0)
    controller = build_controller(config.temperature, ControllerEnv(policy.hidden_size, 1, policy.device))
    rollout = config.rollout
    problems = [p for p in task.train_problems(random.Random(0), rollout.prompts_per_step) for _ in range(rollout.group_size)]
    engine = build_engine(rollout, policy, controller)
    batch = engine.generate([p.prompt for p in problems], controller, torch.Generator().manual_seed(0),
                            group_ids=torch.arange(len(problems)) // rollout.group_size)
    return task, problems, engine.decode(batch), completion_id_lists(batch)


def math_rounds(rounds: int, group_size: int = 8) -> list[tuple[list[Problem], list[str]]]:
    """Per round: 16 math500 problems x 8 completions (the reference solution, the boxed answer altered in half)."""
    rows = load_math_rows("math500")
    out = []
    for r in range(rounds):
        chunk = [math_problem(row) for row in rows[(16 * r) % len(rows) : (16 * r) % len(rows) + 16]]
        problems, texts = [], []
        for problem in chunk:
            for i in range(group_size):
                solution = problem.data["solution"]
                texts.append(solution if i % 2 == 0 else solution.replace(problem.answer, f"{problem.answer}+{i}"))
                problems.append(problem)
        out.append((problems, texts))
    return out


def pairs(run_a, run_b, repeats: int, warmup: int) -> tuple[list[float], list[float]]:
    """Wall seconds of ``run_a(i)`` and ``run_b(i)``, alternating which goes first, after ``warmup`` rounds."""
    for i in range(warmup):
        run_a(i), run_b(i)
    a, b = [], []
    for i in range(warmup, warmup + repeats):
        order = [(run_a, a), (run_b, b)] if i % 2 == 0 else [(run_b, b), (run_a, a)]
        for run, times in order:
            started = time.perf_counter()
            run(i)
            times.append(time.perf_counter() - started)
    return a, b


def summary(name: str, per_item_s: list[float], batched_s: list[float]) -> dict:
    ratios = [p / b for p, b in zip(per_item_s, batched_s)]
    ratio = median(ratios)
    return {
        "workload": name, "per_item_s": median(per_item_s), "batched_s": median(batched_s), "ratio": ratio,
        "paired_ratios": [round(r, 3) for r in ratios], "goal": GOAL, "verdict": verdict(ratio, GOAL, True),
    }


def main() -> None:
    args = script_arguments(__doc__, OUT, lambda p: (
        p.add_argument("--repeats", type=int, default=20), p.add_argument("--warmup", type=int, default=3),
    ))
    config = Config()
    timeout_s = config.task.reward_timeout_s
    results = []

    task, problems, texts, ids = countdown_workload(config)
    guard = RewardGuard([task.default_reward()], timeout_s, False, config.task.reward_workers)
    assert guard.score(problems, texts, ids).values() == per_item(task.reward, problems, texts, timeout_s)
    results.append(summary("countdown (default job)", *pairs(
        lambda i: per_item(task.reward, problems, texts, timeout_s),
        lambda i: guard.score(problems, texts, ids, i), args.repeats, args.warmup,
    )))
    guard.close()
    print(results[-1], flush=True)

    rounds = math_rounds(args.warmup + args.repeats)
    reward = partial(math_verify_reward, extractor="boxed", timeout_s=config.task.verify_timeout_s)
    guard = RewardGuard([RewardFunction(reward, "math_verify_reward")], timeout_s, False, config.task.reward_workers)

    def one_by_one(problem: Problem, text: str) -> float:  # the old per-completion adapter (TaskReward)
        return reward([problem.prompt], [text], [problem.answer])[0]

    first_problems, first_texts = rounds[0]
    batched = guard.score(first_problems, first_texts).values()
    agree = sum(a == b for a, b in zip(batched, per_item(one_by_one, first_problems, first_texts, timeout_s)))
    print(f"math500: batched and per-item rewards agree on {agree} of {len(batched)} completions", flush=True)
    results.append(summary(f"math500 (math_verify_reward; rewards agree on {agree}/{len(batched)})", *pairs(
        lambda i: per_item(one_by_one, *rounds[i], timeout_s),
        lambda i: guard.score(*rounds[i], step=i), args.repeats, args.warmup,
    )))
    guard.close()

    lines = [f"{r['workload']}: per-item {r['per_item_s'] * 1e3:.1f} ms, batched {r['batched_s'] * 1e3:.1f} ms, "
             f"ratio {r['ratio']:.2f} (goal >= {GOAL:g}) {r['verdict']}" for r in results]
    write_result({"results": results, "clock": "wall", "machine": machine_info(torch.device("cpu"))},
                 "\n".join(lines), args.out)


if __name__ == "__main__":
    main()
