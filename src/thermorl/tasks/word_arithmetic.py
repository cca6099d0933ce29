"""Word arithmetic: short stories about counting things, with one numeric answer (for real chat models).

Prompt ``Mia has 7 marbles. She finds 5 more marbles. Then she gives 3 marbles to Sam. How many marbles does
Mia have now?``; answer ``9``. A problem is ``task.word_arithmetic.steps`` operations on a starting count,
each one of ``operations``: ``+`` (gets more), ``-`` (loses some; the count never goes below zero) or ``*``
(doubles or triples the count). Every intermediate count stays within ``0..max_answer``. The
reward is computed by a parser (never ``eval``): 1.0 if the last number written in the completion equals
the answer (``1,234`` and ``9.0`` read as numbers), which suits models that reason in prose before the
answer, as SmolLM2-135M-Instruct does; math-verify (``task.reward=...``) can replace it.

It exists to give a 135M-parameter instruct model a task it starts on between "never" and "always"
(GSM8K is too hard for it): the number of steps and the size of the numbers set the difficulty; the
starting accuracies at several settings are in docs/SMOLLM2.md.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from thermorl.config import TaskConfig
from thermorl.config.fields import doc, positive
from thermorl.config.registry import TASKS
from thermorl.errors import ConfigError
from thermorl.tasks.base import NUMBER, Problem, Task

NAMES = (
    ("Tom", "he", "his"), ("Mia", "she", "her"), ("Sam", "he", "his"), ("Lily", "she", "her"),
    ("Ben", "he", "his"), ("Emma", "she", "her"), ("Leo", "he", "his"), ("Zoe", "she", "her"),
    ("Noah", "he", "his"), ("Ava", "she", "her"), ("Omar", "he", "his"), ("Nina", "she", "her"),
)
THINGS = ("apples", "marbles", "stickers", "books", "pencils", "cookies", "stamps", "shells", "coins", "cards")
GAINS = ("buys {n} more {thing}", "finds {n} more {thing}", "gets {n} more {thing} from {friend}",
         "picks up {n} more {thing}")
LOSSES = ("gives {n} {thing} to {friend}", "loses {n} {thing}", "sells {n} {thing}", "gives away {n} {thing}")
TIMES = {2: "doubles", 3: "triples"}
MAX_NUMBER = 9999


@dataclass
class WordArithmeticConfig:
    """The ``task.word_arithmetic`` section: the difficulty knobs of the word-arithmetic task."""

    steps: int = doc("Operations after the starting count (1: 'has 3, buys 5 more'; each step adds a sentence).", 1)
    max_number: int = doc("Starting counts and amounts are drawn from 2..max_number ('*' doubles or triples).", 20)
    max_answer: int = doc("Every intermediate count and the answer stay within 0..max_answer.", 100)
    operations: str = doc(
        "What a step may do, a subset of '+-*': '+' gets more, '-' gives or loses some, '*' doubles or "
        "triples the count.", "+-"
    )
    instruction: str = doc(
        "Appended to every question (a chat template goes around it); '' asks the bare question.",
        "Give the final answer as a number.",
    )

    def validate(self) -> None:
        positive(self, "steps", "max_answer", section="task.word_arithmetic")
        if self.max_number < 3:
            raise ConfigError(f"task.word_arithmetic.max_number must be >= 3, got {self.max_number}")
        if max(self.max_number, self.max_answer) > MAX_NUMBER:
            raise ConfigError(
                f"task.word_arithmetic.max_number and max_answer must be <= {MAX_NUMBER}, "
                f"got {self.max_number} and {self.max_answer}"
            )
        if self.max_number > self.max_answer:
            raise ConfigError(
                f"task.word_arithmetic.max_number must be <= max_answer, got {self.max_number} > {self.max_answer}"
            )
        if not self.operations or set(self.operations) - set("+-*") or len(set(self.operations)) < len(self.operations):
            raise ConfigError(
                f"task.word_arithmetic.operations must be distinct characters of '+-*', got {self.operations!r}"
            )


def last_number(text: str) -> float | None:
    """The last number written in ``text`` (thousands commas dropped, a trailing '.' ignored), or None."""
    found = NUMBER.findall(text)
    if not found:
        return None
    try:
        return float(found[-1].replace(",", "").rstrip("."))
    except ValueError:
        return None


@TASKS.register("word_arithmetic", WordArithmeticConfig)
class WordArithmetic(Task):
    name = "word_arithmetic"
    writes_prose = True

    def __init__(self, config: WordArithmeticConfig, eval_size: int, eval_seed: int) -> None:
        super().__init__(eval_size, eval_seed)
        self.config = config

    @classmethod
    def from_config(cls, config: TaskConfig) -> WordArithmetic:
        return cls(config.word_arithmetic, config.eval_size, config.eval_seed)

    def generate(self, rng: random.Random) -> Problem:
        cfg = self.config
        while True:
            (name, pronoun, _), thing = rng.choice(NAMES), rng.choice(THINGS)
            friend = rng.choice([n for n, _, _ in NAMES if n != name])
            value = rng.randint(2, cfg.max_number)
            sentences, equations = [f"{name} has {value} {thing}."], []
            for i in range(cfg.steps):
                op = rng.choice(cfg.operations)
                if op == "+":
                    n = rng.randint(2, cfg.max_number)
                    new, phrase = value + n, rng.choice(GAINS).format(n=n, thing=thing, friend=friend)
                elif op == "-":
                    if value < 3:
                        break
                    n = rng.randint(2, min(value - 1, cfg.max_number))
                    new, phrase = value - n, rng.choice(LOSSES).format(n=n, thing=thing, friend=friend)
                else:
                    n = rng.randint(2, 3)
                    new, phrase = value * n, f"{TIMES[n]} the number of {thing} {pronoun} has"
                if new > cfg.max_answer:
                    break
                opener = pronoun.capitalize() if i == 0 else f"Then {pronoun}"
                sentences.append(f"{opener} {phrase}.")
                equations.append(f"{value} {op.replace('*', 'x')} {n} = {new}")
                value = new
            else:
                question = f"How many {thing} does {name} have now?"
                prompt = " ".join([*sentences, question, cfg.instruction]).strip()
                return Problem(prompt=prompt, answer=str(value), data={"solution": equations})

    def demonstration(self, problem: Problem) -> str:
        return ". ".join(problem.data["solution"]) + f". The answer is {problem.answer}."

    def reward(self, problem: Problem, completion: str) -> float:
        """1.0 if the last number in ``completion`` equals the answer, else 0.0 (never raises)."""
        value = last_number(completion)
        return 1.0 if value is not None and value == float(problem.answer) else 0.0
