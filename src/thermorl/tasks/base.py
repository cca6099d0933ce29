"""A task is a source of prompts plus a verifiable reward.

Synthetic tasks also produce a demonstration per problem (used by ``thermorl pretrain``)
and a held-out split whose prompts never appear in training.
"""

from __future__ import annotations

import random
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from thermorl.rewards.guard import RewardFunction, TaskVerifier

CLASSES = ("digit", "operator", "separator", "final answer", "end", "other")  # see token_classes
OPERATORS = set("+-*/")
SEPARATORS = set(",=")


def token_classes(pieces: list[str], is_end: list[bool]) -> list[str]:
    """The class of each token of one completion: digit, operator (+ - * /), separator (, =), final answer
    (every token after the last '='), end (EOS), other; used to see where a temperature policy runs hot."""
    last_equals = max((i for i, piece in enumerate(pieces) if "=" in piece), default=len(pieces))
    classes = []
    for i, (piece, end) in enumerate(zip(pieces, is_end)):
        text = piece.strip()
        if end:
            classes.append("end")
        elif i > last_equals:
            classes.append("final answer")
        elif text.isdigit():
            classes.append("digit")
        elif text and set(text) <= OPERATORS:
            classes.append("operator")
        elif text and set(text) <= SEPARATORS:
            classes.append("separator")
        else:
            classes.append("other")
    return classes


TEXT_CLASSES = ("step start", "connective", "number", "operator", "final answer", "end", "other")
CONNECTIVES = frozenset({
    "so", "then", "wait", "therefore", "thus", "hence", "but", "now", "because", "since", "first", "next",
    "finally", "however", "after", "altogether", "total", "means", "let", "answer",
})
TEXT_OPERATORS = frozenset("+-*/=x\u00d7\u00f7")
SENTENCE_ENDS = (".", "!", "?", ":", "\n")
NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?")  # a number as written in prose: 12, -3, 1,234, 2.5


def text_token_classes(pieces: list[str], is_end: list[bool]) -> list[str]:
    """The class of each token of one prose completion (a chat model's answer), in this order of precedence:
    end (EOS); final answer (a token of the last number written, the one a last-number parser reads);
    number (any other token with a digit); operator (+ - * / = x, alone); connective (so, then, wait,
    therefore, ...: the words where a reasoning model pivots); step start (the first word of a sentence, a
    line or the completion); other. Used to see where a temperature policy runs hot on real text."""
    text = "".join(pieces)
    spans = [match.span() for match in NUMBER.finditer(text)]
    answer = spans[-1] if spans else (len(text), len(text))
    classes, offset = [], 0
    seen, last = False, ""  # any non-blank text so far; its last character that is not a space or tab
    for piece, end in zip(pieces, is_end):
        start, offset = offset, offset + len(piece)
        word = piece.strip().lower().strip(",;")
        if end:
            classes.append("end")
        elif word and start < answer[1] and offset > answer[0] and any(c.isdigit() for c in piece):
            classes.append("final answer")
        elif any(c.isdigit() for c in piece):
            classes.append("number")
        elif word and set(word) <= TEXT_OPERATORS:
            classes.append("operator")
        elif word in CONNECTIVES:
            classes.append("connective")
        elif word and (not seen or last in SENTENCE_ENDS):
            classes.append("step start")
        else:
            classes.append("other")
        seen = seen or bool(piece.strip())
        last = piece.rstrip(" \t")[-1:] or last
    return classes


@dataclass(frozen=True)
class TokenClassRule:
    """A task's split of completion tokens into classes, for per-class temperatures (the ``by_class``
    controller): ``classify(prefix)`` is the class of the NEXT token given the completion text so far."""

    classes: tuple[str, ...]
    classify: Callable[[str], str]


@dataclass(frozen=True)
class Problem:
    prompt: str
    answer: str
    data: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)


class Task:
    """Base class of tasks: subclasses implement ``generate``, ``reward`` and ``demonstration``."""

    name: str = "task"
    writes_prose: bool = False  # completions are prose (a chat model's answer), not the synthetic tasks' symbols

    def __init__(self, eval_size: int, eval_seed: int) -> None:
        self.eval_size = eval_size
        self.eval_seed = eval_seed
        self._eval: list[Problem] | None = None
        self._eval_prompts: set[str] = set()

    # -- to implement -------------------------------------------------------
    def generate(self, rng: random.Random) -> Problem:
        """One random problem."""
        raise NotImplementedError

    def reward(self, problem: Problem, completion: str) -> float:
        """1.0 if ``completion`` solves ``problem``, else 0.0. Must never raise on any string."""
        raise NotImplementedError

    def demonstration(self, problem: Problem) -> str:
        """A correct completion, for supervised warm-up."""
        raise NotImplementedError

    def attempt(self, problem: Problem, rng: random.Random) -> str:
        """A plausible, well-formed completion that ignores the goal (for diluted warm starts).
        Tasks without choices return the demonstration."""
        return self.demonstration(problem)

    def token_class_rule(self) -> TokenClassRule | None:
        """The task's token classes (choice vs result on countdown), or None when it defines none."""
        return None

    def report_token_classes(self, pieces: list[str], is_end: list[bool]) -> list[str]:
        """The class of each token of one sampled completion, for the temperature reports (where does a
        controller run hot?): ``text_token_classes`` for a task that ``writes_prose``, else the synthetic
        tasks' symbols (``token_classes``)."""
        return (text_token_classes if self.writes_prose else token_classes)(pieces, is_end)

    # -- provided -------------------------------------------------------------
    def default_reward(self) -> RewardFunction:
        """The task's own verifier as a reward function (``task.reward=default``): ``reward`` per completion."""
        return RewardFunction(TaskVerifier(self), self.name, convention="task")

    def eval_problems(self) -> list[Problem]:
        """The held-out split: ``eval_size`` distinct prompts, identical for every run with the same seed."""
        if self._eval is None:
            rng = random.Random(self.eval_seed)
            problems: dict[str, Problem] = {}
            attempts = 0
            while len(problems) < self.eval_size:
                attempts += 1
                if attempts > 50 * self.eval_size:
                    raise ValueError(f"task {self.name} cannot produce {self.eval_size} distinct prompts")
                problem = self.generate(rng)
                problems.setdefault(problem.prompt, problem)
            self._eval = list(problems.values())
            self._eval_prompts = set(problems)
        return self._eval

    def train_problems(self, rng: random.Random, count: int) -> list[Problem]:
        """``count`` training problems, none of whose prompts is in the held-out split."""
        self.eval_problems()
        out: list[Problem] = []
        while len(out) < count:
            problem = self.generate(rng)
            if problem.prompt not in self._eval_prompts:
                out.append(problem)
        return out
