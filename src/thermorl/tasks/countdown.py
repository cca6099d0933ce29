"""Countdown: combine the given numbers with + - * (those in ``operations``) to reach the target.

Prompt ``3,7,2>23:``; a solution is a chain of steps ``7*3=21,21+2=23``. Each step may use
any unused given number or an earlier result, and one of ``operations`` (the default config allows
only ``+-``: ``3,7,2>8:`` -> ``7+3=10,10-2=8``). The solution mixes two kinds of tokens:
*choice* tokens (which numbers to combine, with which operation), where several continuations
may be right and exploring pays, and *deterministic* tokens (the result of each step), where
any deviation from the one right digit loses the reward. That contrast is what a learned
temperature can exploit.

The reward is computed by a parser (never ``eval``): 1.0 if every step is well formed,
uses only available numbers, has the right arithmetic, and the last result is the target.
"""

from __future__ import annotations

import random
import re

from thermorl.config import TaskConfig
from thermorl.config.registry import TASKS
from thermorl.tasks.base import Problem, Task, TokenClassRule

STEP = re.compile(r"(\d{1,4})([+\-*])(\d{1,4})=(\d{1,5})")
OPS = {"+": lambda a, b: a + b, "-": lambda a, b: a - b, "*": lambda a, b: a * b}


@TASKS.register("countdown")
class Countdown(Task):
    name = "countdown"

    def __init__(
        self, num_operands: int, max_operand: int, max_result: int, eval_size: int, eval_seed: int,
        operations: str = "+-*",
    ):
        super().__init__(eval_size, eval_seed)
        self.operations = operations
        self.num_operands = num_operands
        self.max_operand = max_operand
        self.max_result = max_result

    @classmethod
    def from_config(cls, config: TaskConfig) -> Countdown:
        return cls(config.num_operands, config.max_operand, config.max_result, config.eval_size, config.eval_seed,
                   operations=config.operations)

    def generate(self, rng: random.Random) -> Problem:
        while True:
            numbers = [rng.randint(1, self.max_operand) for _ in range(self.num_operands)]
            chain = self.random_chain(numbers, rng)
            if chain is None or chain[1] in numbers:
                continue  # out of range, or a trivial target
            steps, target = chain
            prompt = ",".join(map(str, numbers)) + f">{target}:"
            return Problem(prompt=prompt, answer=str(target), data={"numbers": numbers, "solution": steps})

    def random_chain(self, numbers: list[int], rng: random.Random) -> tuple[str, int] | None:
        """Combine all ``numbers`` in a random order with random operations: (steps, result),
        or None when a result leaves 0..max_result."""
        pool = list(numbers)
        steps = []
        while len(pool) > 1:
            a, b = rng.sample(pool, 2)
            op = rng.choice(self.operations)
            if op in "+*" or a < b:
                a, b = max(a, b), min(a, b)
            result = OPS[op](a, b)
            if result < 0 or result > self.max_result:
                return None
            pool.remove(a)
            pool.remove(b)
            pool.append(result)
            steps.append(f"{a}{op}{b}={result}")
        return ",".join(steps), pool[0]

    def attempt(self, problem: Problem, rng: random.Random) -> str:
        """A target-blind try: right arithmetic, random choices (usually misses the target)."""
        while True:
            chain = self.random_chain(problem.data["numbers"], rng)
            if chain is not None:
                return chain[0]

    def demonstration(self, problem: Problem) -> str:
        return problem.data["solution"]

    def token_class_rule(self) -> TokenClassRule:
        """choice (which numbers, which operation, whether to go on) vs result (the digits after a step's '=')."""
        return TokenClassRule(COUNTDOWN_CLASSES, countdown_next_class)

    def reward(self, problem: Problem, completion: str) -> float:
        solved = check_countdown(problem.data["numbers"], int(problem.answer), completion, self.operations)
        return 1.0 if solved else 0.0


COUNTDOWN_CLASSES = ("choice", "result")


def countdown_next_class(prefix: str) -> str:
    """The class of the token after ``prefix``: 'result' inside a step's result, i.e. when the current step
    (the text after the last ',') already holds its '=' (so the result's digits and the ',' or end that closes
    it); 'choice' otherwise (the operands, the operation and the '='). ``7+3=10,10-2=8``: the tokens
    ``1 0 , 8 <end>`` are results, ``7 + 3 = 1 0 - 2 =`` choices."""
    return "result" if "=" in prefix.rpartition(",")[2] else "choice"


def check_countdown(numbers: list[int], target: int, completion: str, operations: str = "+-*") -> bool:
    """Whether ``completion`` is a valid chain of ``operations`` steps from ``numbers`` ending at ``target``."""
    text = completion.strip()
    if not text:
        return False
    pool = list(numbers)
    result = None
    for step in text.split(","):
        match = STEP.fullmatch(step)
        if match is None:
            return False
        a, op, b, claimed = int(match[1]), match[2], int(match[3]), int(match[4])
        if op not in operations:
            return False
        for operand in (a, b):
            if operand not in pool:
                return False
            pool.remove(operand)
        result = OPS[op](a, b)
        if result != claimed:
            return False
        pool.append(result)
    return result == target
