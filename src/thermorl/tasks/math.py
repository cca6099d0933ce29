"""Math word problems with a verifiable final answer (MATH, GSM8K, AIME, ... or your own data).

The prompt asks for the final answer in ``\\boxed{}``; the default reward is
``thermorl.rewards.math_verify_reward`` (math-verify on the last ``\\boxed{}``), and any
TRL-style reward functions can replace or join it (``task.reward`` / ``task.rewards``). Training prompts
come from ``task.dataset``, the held-out split from ``task.eval_dataset`` (see
``thermorl.tasks.math_data`` for the accepted sources).
"""

from __future__ import annotations

import functools
import random
from typing import Any

from thermorl.config import TaskConfig
from thermorl.config.registry import TASKS
from thermorl.rewards.guard import RewardFunction
from thermorl.tasks.base import Problem, Task
from thermorl.tasks.math_data import load_math_rows

DEFAULT_PROMPT = "{problem}\nPlease reason step by step, and put your final answer within \\boxed{}."


def math_problem(row: dict[str, Any], prompt_template: str = DEFAULT_PROMPT) -> Problem:
    """A Problem from a normalised row: the template's ``{problem}`` replaced by the problem text."""
    data = {key: value for key, value in row.items() if key != "answer"}
    return Problem(prompt=prompt_template.replace("{problem}", row["problem"]), answer=row["answer"], data=data)


@TASKS.register("math")
class MathTask(Task):
    name = "math"
    writes_prose = True

    def __init__(
        self, train: list[Problem], held_out: list[Problem], eval_size: int, eval_seed: int,
        extractor: str = "boxed", verify_timeout_s: float = 5.0,
    ) -> None:
        super().__init__(eval_size, eval_seed)
        self.train = train
        self._eval = held_out[:eval_size]
        self._eval_prompts = {p.prompt for p in self._eval}
        self.extractor = extractor
        self.verify_timeout_s = verify_timeout_s

    @classmethod
    def from_config(cls, config: TaskConfig) -> MathTask:
        def problems(source: str, split: str) -> list[Problem]:
            rows = load_math_rows(source, config.problem_field, config.answer_field, split)
            return [math_problem(row, config.prompt_template) for row in rows]

        return cls(
            problems(config.dataset, "train"), problems(config.eval_dataset, "test"), config.eval_size,
            config.eval_seed, config.answer_extractor, config.verify_timeout_s,
        )

    def default_reward(self) -> RewardFunction:
        """``math_verify_reward`` with the task's extractor and per-verification timeout, once per batch."""
        from thermorl.rewards import math_verify_reward

        reward = functools.partial(math_verify_reward, extractor=self.extractor, timeout_s=self.verify_timeout_s)
        return RewardFunction(reward, "math_verify_reward")

    def generate(self, rng: random.Random) -> Problem:
        return self.train[rng.randrange(len(self.train))]

    def train_problems(self, rng: random.Random, count: int) -> list[Problem]:
        """``count`` training problems, distinct within a step when the dataset is large enough."""
        if count <= len(self.train):
            return [self.train[i] for i in rng.sample(range(len(self.train)), count)]
        return [self.generate(rng) for _ in range(count)]

    def eval_problems(self) -> list[Problem]:
        """The first ``task.eval_size`` problems of ``task.eval_dataset``."""
        return self._eval

    def demonstration(self, problem: Problem) -> str:
        return problem.data.get("solution") or f"The answer is \\boxed{{{problem.answer}}}."

    def reward(self, problem: Problem, completion: str) -> float:
        return self.default_reward().function([problem.prompt], [completion], [problem.answer])[0]
