"""Arithmetic chains: evaluate ``a op b op c ...`` left to right, writing each step.

Prompt ``12+7*3:``; solution ``12+7=19,19*3=57``. Every token of the solution is
deterministic (one right continuation), so this task isolates the cost of sampling noise;
a prototype found temperatures 0.6 / 1.0 / 1.4 indistinguishable on it after 150 GRPO steps.
"""

from __future__ import annotations

import random

from thermorl.config import TaskConfig
from thermorl.config.registry import TASKS
from thermorl.tasks.base import Problem, Task
from thermorl.tasks.countdown import OPS, STEP


@TASKS.register("arithmetic")
class Arithmetic(Task):
    name = "arithmetic"

    def __init__(self, num_operands: int, max_operand: int, max_result: int, eval_size: int, eval_seed: int):
        super().__init__(eval_size, eval_seed)
        self.num_operands = num_operands
        self.max_operand = max_operand
        self.max_result = max_result

    @classmethod
    def from_config(cls, config: TaskConfig) -> Arithmetic:
        return cls(config.num_operands, config.max_operand, config.max_result, config.eval_size, config.eval_seed)

    def generate(self, rng: random.Random) -> Problem:
        while True:
            value = rng.randint(1, self.max_operand)
            prompt, steps, operations = str(value), [], [value]
            for _ in range(self.num_operands - 1):
                op, operand = rng.choice("+-*"), rng.randint(1, self.max_operand)
                new = OPS[op](value, operand)
                if not 0 <= new <= self.max_result:
                    break
                steps.append(f"{value}{op}{operand}={new}")
                prompt += f"{op}{operand}"
                operations.append((op, operand))
                value = new
            else:
                return Problem(
                    prompt=prompt + ":", answer=str(value), data={"solution": ",".join(steps), "operations": operations}
                )

    def demonstration(self, problem: Problem) -> str:
        return problem.data["solution"]

    def reward(self, problem: Problem, completion: str) -> float:
        """1.0 if the steps follow the prompt's operations in order, each result is right,
        and the last result is the answer."""
        first, *operations = problem.data["operations"]
        steps = completion.strip().split(",")
        if len(steps) != len(operations):
            return 0.0
        value = first
        for step, (op, operand) in zip(steps, operations):
            match = STEP.fullmatch(step)
            if match is None or (int(match[1]), match[2], int(match[3])) != (value, op, operand):
                return 0.0
            value = OPS[op](value, operand)
            if int(match[4]) != value:
                return 0.0
        return 1.0 if str(value) == problem.answer else 0.0
