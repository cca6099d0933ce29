"""Reward functions with the TRL signature ``fn(prompts, completions, **columns) -> list[float]``.

``math_verify_reward`` extracts the final answer of each completion (the last ``\\boxed{}``
by default) and checks it against the reference ``answer`` with the ``math-verify`` package
(parse both sides to SymPy, compare symbolically and numerically). Each verification is
bounded by ``timeout_s`` (SymPy can take minutes on adversarial input); a timeout scores 0.

``load_reward_function("pkg.module:function")`` imports a user reward function from the
explicitly named module (or ``path/to/file.py:function``) and nothing else. ``reward_functions``
turns ``task.reward`` / ``task.rewards`` / ``task.reward_weights`` into the weighted functions
and ``build_reward_guard`` puts them behind the one ``RewardGuard`` every call site uses.
"""

from __future__ import annotations

import functools
import logging
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from thermorl.config.plugins import import_user_module
from thermorl.config.registry import REWARDS
from thermorl.errors import RewardError
from thermorl.rewards.guard import RewardFunction, RewardGuard, RewardTimeout, call_with_timeout


class _DropDisabledTimeoutWarning(logging.Filter):
    """math-verify warns once that its own timeouts are off; ours bound every verification instead."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "Timeout is disabled" not in record.getMessage()


for _name in ("math_verify.parser", "math_verify.grader"):
    logging.getLogger(_name).addFilter(_DropDisabledTimeoutWarning())


# --------------------------------------------------------------------------- answer extraction


def extract_boxed(text: str) -> str | None:
    """Content of the last ``\\boxed{...}`` (or ``\\fbox{...}``) in ``text``, braces balanced; None if absent."""
    start = max(text.rfind("\\boxed"), text.rfind("\\fbox"))
    while start >= 0:
        brace = start + (6 if text.startswith("\\boxed", start) else 5)
        while brace < len(text) and text[brace] == " ":
            brace += 1
        if brace < len(text) and text[brace] == "{":
            depth = 0
            for end in range(brace, len(text)):
                depth += {"{": 1, "}": -1}.get(text[end], 0)
                if depth == 0:
                    return text[brace + 1 : end].strip()
        start = max(text.rfind("\\boxed", 0, start), text.rfind("\\fbox", 0, start))
    return None


def extract_full(text: str) -> str | None:
    """The whole completion: math-verify then finds the answer itself (boxed first, then the last expression)."""
    return text


EXTRACTORS: dict[str, Callable[[str], str | None]] = {"boxed": extract_boxed, "full": extract_full}


# --------------------------------------------------------------------------- math-verify


@functools.lru_cache(maxsize=65536)
def _parse_gold(answer: str) -> list:
    from math_verify import parse

    return parse(f"${answer}$", parsing_timeout=None)


@functools.lru_cache(maxsize=4096)
def _parse_prediction(extracted: str, whole_text: bool) -> list:
    from math_verify import parse

    return parse(extracted if whole_text else f"${extracted}$", parsing_timeout=None)


def verify_answer(completion: str, answer: str, extractor: str | Callable[[str], str | None] = "boxed") -> float:
    """1.0 if the completion's extracted final answer equals ``answer`` (math-verify), else 0.0. No timeout."""
    from math_verify import verify

    extract = EXTRACTORS[extractor] if isinstance(extractor, str) else extractor
    extracted = extract(completion)
    if not extracted:
        return 0.0
    gold = _parse_gold(answer)
    prediction = _parse_prediction(extracted, extract is extract_full)
    if not gold or not prediction:
        return 0.0
    return 1.0 if verify(gold, prediction, timeout_seconds=None) else 0.0


def math_verify_reward(
    prompts: Sequence[Any] | None,
    completions: Sequence[Any],
    answer: Sequence[str],
    extractor: str | Callable[[str], str | None] = "boxed",
    timeout_s: float = 5.0,
    **kwargs: Any,
) -> list[float]:
    """TRL-compatible correctness reward: 1.0 per completion whose final answer matches ``answer``.

    ``completions`` are strings or TRL conversational completions (lists of messages; the last
    message's content is scored). ``extractor``: 'boxed' (last ``\\boxed{}``; no box scores 0),
    'full' (math-verify searches the whole text), or a callable ``str -> str | None``.
    Each verification past ``timeout_s`` seconds scores 0. Other keyword columns are ignored.
    """
    if isinstance(extractor, str) and extractor not in EXTRACTORS:
        raise RewardError(f"unknown answer extractor {extractor!r} (have: {', '.join(EXTRACTORS)})")
    if len(answer) != len(completions):
        raise RewardError(f"math_verify_reward got {len(completions)} completions but {len(answer)} answers")
    rewards = []
    for completion, reference in zip(completions, answer):
        text = _completion_text(completion)
        try:
            rewards.append(call_with_timeout(verify_answer, timeout_s, text, str(reference), extractor))
        except RewardTimeout:
            rewards.append(0.0)
        except Exception:  # noqa: BLE001 - a completion math-verify cannot handle is simply wrong
            rewards.append(0.0)
    return rewards


def _completion_text(completion: Any) -> str:
    if isinstance(completion, str):
        return completion
    if isinstance(completion, list) and completion and isinstance(completion[-1], dict):
        return str(completion[-1].get("content", ""))
    return str(completion)


# --------------------------------------------------------------------------- user reward functions


def load_reward_function(spec: str) -> Callable[..., Any]:
    """The function named by ``module.path:function`` or ``path/to/file.py:function``.

    Imports exactly the module the user named (never anything derived from data or model output).
    """
    module_name, sep, function_name = spec.rpartition(":")
    if not sep or not module_name or not function_name.isidentifier():
        raise RewardError(
            f"task.reward {spec!r} must look like 'package.module:function' or 'file.py:function', or be a "
            f"registered reward ({', '.join(REWARDS) or 'none registered'})"
        )
    if module_name.endswith(".py") and not Path(module_name).expanduser().is_file():
        raise RewardError(f"task.reward: file {module_name} not found")
    try:
        module = import_user_module(module_name)
    except Exception as err:  # noqa: BLE001 - any import failure of user code is a user error
        raise RewardError(f"task.reward: cannot import {module_name}: {type(err).__name__}: {err}") from None
    function = getattr(module, function_name, None)
    if not callable(function):
        raise RewardError(f"task.reward: {module_name} has no function {function_name!r}")
    return function


class NamedRewardFunction:
    """A user reward function known by its ``module:function`` spec; a worker process loads it from the spec
    (a function loaded from a file lives in a module no other process could import by name)."""

    def __init__(self, spec: str) -> None:
        module_name, _, function_name = spec.rpartition(":")
        if module_name.endswith(".py"):  # a worker may run elsewhere than the current directory
            spec = f"{Path(module_name).expanduser().resolve()}:{function_name}"
        self.spec = spec
        self.__wrapped__ = load_reward_function(spec)  # inspect.signature sees the user's parameters

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.__wrapped__(*args, **kwargs)

    def __reduce__(self) -> tuple[Any, tuple[str]]:
        return NamedRewardFunction, (self.spec,)


class RegisteredRewardFunction:
    """A reward function registered by name (``register_reward``); a worker process imports the module that
    registered it (``source``: a module name, or the plug-in file it was loaded from) and looks it up again."""

    def __init__(self, name: str, source: str | None = None) -> None:
        if source is not None and name not in REWARDS:
            import_user_module(source)
        self.name = name
        function = REWARDS[name].build
        module = sys.modules.get(function.__module__)
        from_file = function.__module__.startswith("thermorl_user_") and getattr(module, "__file__", None)
        self.source = source or (module.__file__ if from_file else function.__module__)
        self.__wrapped__ = function  # inspect.signature sees the user's parameters

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.__wrapped__(*args, **kwargs)

    def __reduce__(self) -> tuple[Any, tuple[str, str]]:
        return RegisteredRewardFunction, (self.name, self.source)


def reward_functions(config: Any, task: Any) -> list[RewardFunction]:
    """``task.rewards`` (or the one ``task.reward``) with ``task.reward_weights``; 'default' is the task's own."""
    specs = config.rewards or [config.reward]
    weights = config.reward_weights or [1.0] * len(specs)
    functions = []
    for spec, weight in zip(specs, weights):
        if spec == "default":
            function = task.default_reward()
            function.weight = weight
        elif ":" not in spec and spec in REWARDS:
            function = RewardFunction(RegisteredRewardFunction(spec), spec, weight, spec=spec)
        else:
            function = RewardFunction(NamedRewardFunction(spec), spec.rpartition(":")[2], weight, spec=spec)
        functions.append(function)
    return functions


def build_reward_guard(
    config: Any, task: Any, chat_template: bool, system_prompt: str | None = None, max_steps: int = 0
) -> RewardGuard:
    """The guard of a run's reward functions (``config`` is the TaskConfig). Completions are conversational
    when ``task.reward_completions`` says so, or on 'auto' when the prompts go through a chat template."""
    conversational = config.reward_completions == "conversational" or (
        config.reward_completions == "auto" and chat_template
    )
    return RewardGuard(
        reward_functions(config, task), config.reward_timeout_s, config.reward_fail_fast, config.reward_workers,
        config.reward_start_method, conversational, system_prompt, max_steps, config.reward_columns,
    )
