"""Every reward call goes through one guard: TRL's call convention, weights, timeouts that kill, counters.

A reward function is called once per batch, the way TRL's ``GRPOTrainer`` calls its ``reward_funcs``::

    fn(prompts=..., completions=..., completion_ids=..., trainer_state=..., **columns) -> list[float | None]

``prompts`` / ``completions`` are strings, or TRL's conversational form when the model's chat template
formats the prompt (a prompt is a list of messages, a completion a list holding one assistant message);
``completion_ids`` are the completion's token ids; every dataset column arrives under its own name
(``answer``, ``solution``, ...); ``trainer_state`` carries ``global_step`` and ``max_steps``. A task's own
verifier (``Task.reward(problem, completion)``) is called per completion inside one batched call.

``None`` means "no reward for this sample": the weighted sum skips that function (TRL's ``nansum``) and a
sample every function left out has no reward (``None``): it is left out of its group's advantage
and counted (``reward_none``). Several functions combine as ``r_i = sum_k w_k r_ik`` (``task.rewards``,
``task.reward_weights``), each one's mean logged as ``rewards/NAME/mean``.

Failures are harmless or loud, never silent (counters count completions, logged every step):

* exception, timeout, NaN/inf -> reward 0 and a counter (``reward_errors``, ``reward_timeouts``,
  ``reward_non_finite``), or ``RewardError`` when ``fail_fast``;
* a value that is neither a real number nor None, or a batch of the wrong length -> always
  ``RewardError``: a broken contract, and zeroing every reward would train on noise without saying so.

Calls run in a ``RewardPool`` of worker processes (``workers`` > 0): an overrunning call has its worker
killed, even inside C code. A function that cannot be sent to a worker (a lambda, a closure) runs
in-process with ``call_with_timeout`` (SIGALRM in the main thread, which cannot stop C code), with a
one-time warning. ``should_stop`` (the trainer's Ctrl-C / SIGTERM flag) interrupts a waiting call.
"""

from __future__ import annotations

import inspect
import logging
import math
import numbers
import signal
import threading
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from thermorl.config.schema import RESERVED_REWARD_ARGUMENTS
from thermorl.errors import RewardError
from thermorl.rewards.pool import Call, Outcome, RewardPool, function_key, picklable

log = logging.getLogger(__name__)

RESERVED = RESERVED_REWARD_ARGUMENTS  # never taken from dataset columns


class RewardTimeout(BaseException):
    """Raised inside an overrunning in-process call; a BaseException so ``except Exception`` cannot swallow it."""


@dataclass
class TrainerState:
    """What a reward function sees of the run (the fields of TRL's ``TrainerState`` that reward shaping uses)."""

    global_step: int = 0
    max_steps: int = 0


@dataclass
class RewardFunction:
    """One reward function, its weight in the sum, and how it is called.

    ``convention`` 'trl': ``function(prompts=, completions=, completion_ids=, trainer_state=, **columns)``;
    'task': ``function(problems, completions)`` -> a list (a task's verifier, see ``TaskVerifier``).
    """

    function: Callable[..., Any]
    name: str  # the metric name (rewards/NAME/mean)
    weight: float = 1.0
    convention: Literal["trl", "task"] = "trl"
    key: int = field(default_factory=function_key)
    spec: str = ""  # what the user wrote (module:function or path.py:function), named in error messages

    @property
    def shown(self) -> str:
        return self.spec or self.name


class TaskVerifier:
    """A task's per-completion verifier ``task.reward(problem, completion)`` as one batched call."""

    def __init__(self, task: Any) -> None:
        self.task = task

    def __call__(self, problems: Sequence[Any], completions: Sequence[str]) -> list[float]:
        return [self.task.reward(problem, text) for problem, text in zip(problems, completions)]


@dataclass
class RewardCounters:
    """Cumulative counts of completions over the run (saved in checkpoints so a resumed run keeps counting)."""

    reward_calls: int = 0  # completions scored, per function
    reward_errors: int = 0  # ... scored 0 because the call raised
    reward_timeouts: int = 0  # ... scored 0 because the call overran reward_timeout_s
    reward_non_finite: int = 0  # ... scored 0 for a NaN/inf value
    reward_none: int = 0  # samples no function rewarded (None): left out of their group's advantage


@dataclass
class RewardScores:
    """One batch's rewards: the weighted sum (None where no function gave a reward) and each function's values."""

    total: list[float | None]
    per_function: dict[str, list[float | None]]

    def values(self, missing: float = 0.0) -> list[float]:
        """The totals with ``missing`` for samples that have none (for accuracy-style metrics)."""
        return [missing if value is None else value for value in self.total]

    def function_means(self) -> dict[str, float]:
        """``rewards/NAME/mean`` over the samples each function rewarded (TRL's nanmean)."""
        means = {}
        for name, values in self.per_function.items():
            given = [v for v in values if v is not None]
            means[f"rewards/{name}/mean"] = sum(given) / len(given) if given else float("nan")
        return means


class RewardGuard:
    """Scores completions with ``functions``; see the module docstring."""

    def __init__(
        self,
        functions: Sequence[RewardFunction],
        timeout_s: float,
        fail_fast: bool,
        workers: int = 2,
        start_method: str = "forkserver",
        conversational: bool = False,
        system_prompt: str | None = None,
        max_steps: int = 0,
        column_map: dict[str, str] | None = None,
    ) -> None:
        if not functions:
            raise RewardError("at least one reward function is needed")
        self.functions = list(functions)
        self.timeout_s = timeout_s
        self.fail_fast = fail_fast
        self.conversational = conversational
        self.system_prompt = system_prompt
        self.max_steps = max_steps
        self.column_map = dict(column_map or {})  # reward argument -> the dataset column that fills it
        self.workers = workers
        self.start_method = start_method
        self.counters = RewardCounters()
        self.should_stop: Callable[[], bool] | None = None
        self._pool: RewardPool | None = None
        self._warned: set[str] = set()
        self._in_process = {f.key for f in self.functions if workers == 0 or not picklable(f.function)}
        for f in self.functions:
            if workers and f.key in self._in_process:
                log.warning(
                    "reward function %s cannot be sent to a worker process (a lambda or closure?); it runs in this "
                    "process, where its %g s timeout cannot stop C code (define it at module level to fix this)",
                    f.name, timeout_s,
                )

    @property
    def name(self) -> str:
        return "+".join(f.name for f in self.functions)

    def __call__(self, problem: Any, completion: str) -> float:
        """One guarded reward, 0 where none was given (the per-item interface of ``Task.reward``)."""
        return self.score([problem], [completion]).values()[0]

    def score(
        self, problems: Sequence[Any], completions: Sequence[str], completion_ids: Sequence[Sequence[int]] | None = None,
        step: int = 0,
    ) -> RewardScores:
        """Rewards of ``completions`` (texts) for ``problems``; failures become 0 (counted) or raise RewardError."""
        count = len(completions)
        if completion_ids is None:
            completion_ids = [[] for _ in completions]
        outcomes = self._run(problems, completions, completion_ids, step)
        per_function = {}
        for f, outcome in zip(self.functions, outcomes):
            self.counters.reward_calls += count
            per_function[self._unique(f, per_function)] = self._values(f, outcome, count)
        total: list[float | None] = []
        for i in range(count):
            given = [(f.weight, values[i]) for f, values in zip(self.functions, per_function.values())]
            given = [(w, v) for w, v in given if v is not None]
            total.append(sum(w * v for w, v in given) if given else None)
        self.counters.reward_none += sum(v is None for v in total)
        return RewardScores(total, per_function)

    def metrics(self) -> dict[str, int]:
        """Cumulative counters, logged with every step."""
        return asdict(self.counters)

    def state_dict(self) -> dict[str, int]:
        return asdict(self.counters)

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.counters = RewardCounters(**state)

    def close(self) -> None:
        """Stop the worker processes (a later call starts new ones)."""
        if self._pool is not None:
            self._pool.close()
            self._pool = None

    def check_columns(self, problems: Sequence[Any], where: str) -> None:
        """RewardError naming a column a TRL-convention function requires that ``problems`` lack."""
        if not problems:
            return
        present = set(_columns(problems[:1]))
        for argument, column in self.column_map.items():
            if column not in present:
                raise RewardError(
                    f"task.reward_columns maps the reward argument {argument!r} to the column {column!r}, which "
                    f"{where} lack (they have: {', '.join(sorted(present))})"
                )
        have = set(RESERVED) | present | set(self.column_map)
        for f in self.functions:
            if f.convention != "trl":
                continue
            try:
                parameters = inspect.signature(f.function).parameters.values()
            except (TypeError, ValueError):  # a builtin or C callable without a signature
                continue
            for p in parameters:
                if p.default is p.empty and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY) and p.name not in have:
                    columns = ", ".join(sorted(present | {"prompts", "completions"}))
                    raise RewardError(
                        f"reward function {f.shown} needs the column {p.name!r}, which {where} lack "
                        f"(they have: {columns}; pass one as {p.name!r} with task.reward_columns.{p.name}=COLUMN)"
                    )

    # -- internals ------------------------------------------------------------------------------------------------
    def _run(
        self, problems: Sequence[Any], completions: Sequence[str], completion_ids: Sequence[Sequence[int]], step: int
    ) -> list[Outcome]:
        calls = [self._call(f, problems, completions, completion_ids, step) for f in self.functions]
        outcomes: dict[int, Outcome] = {}
        pooled = [(i, call) for i, call in enumerate(calls) if self.functions[i].key not in self._in_process]
        if pooled:
            if self._pool is None:
                self._pool = RewardPool(self.workers, self.start_method)
            results = self._pool.run([call for _, call in pooled], self.timeout_s, self.should_stop)
            outcomes.update({i: outcome for (i, _), outcome in zip(pooled, results)})
        for i, call in enumerate(calls):
            if i not in outcomes:
                outcomes[i] = _run_in_process(call, self.timeout_s)
        return [outcomes[i] for i in range(len(calls))]

    def _call(
        self, f: RewardFunction, problems: Sequence[Any], completions: Sequence[str],
        completion_ids: Sequence[Sequence[int]], step: int,
    ) -> Call:
        if f.convention == "task":
            return Call(f.key, f.function, (list(problems), list(completions)))
        prompts: list[Any] = [p.prompt for p in problems]
        texts: list[Any] = list(completions)
        if self.conversational:
            system = [{"role": "system", "content": self.system_prompt}] if self.system_prompt else []
            prompts = [[*system, {"role": "user", "content": prompt}] for prompt in prompts]
            texts = [[{"role": "assistant", "content": text}] for text in texts]
        columns = _columns(problems)
        kwargs = {
            **columns,
            **{argument: columns[column] for argument, column in self.column_map.items() if column in columns},
            "prompts": prompts, "completions": texts, "completion_ids": [list(ids) for ids in completion_ids],
            "trainer_state": TrainerState(step, self.max_steps),
        }
        return Call(f.key, f.function, (), kwargs)

    def _values(self, f: RewardFunction, outcome: Outcome, count: int) -> list[float | None]:
        if outcome.status == "timeout":
            self.counters.reward_timeouts += count
            self._fail("timeouts", f"reward function {f.shown} did not return within {self.timeout_s:g} s")
            return [0.0] * count
        if outcome.status == "error":
            if outcome.error.startswith("RewardError"):  # a contract check inside the function (e.g. lengths)
                raise RewardError(outcome.error.partition(": ")[2])
            self.counters.reward_errors += count
            self._fail("errors", f"reward function {f.shown} raised {outcome.error}{self._completions_hint(outcome.error)}")
            return [0.0] * count
        values = outcome.value
        if hasattr(values, "tolist"):  # numpy array or torch tensor
            values = values.tolist()
        if not isinstance(values, (list, tuple)):
            raise RewardError(
                f"reward function {f.shown} returned {type(values).__name__}, expected a list of {count} numbers"
            )
        if len(values) != count:
            raise RewardError(f"reward function {f.shown} returned {len(values)} rewards for {count} completions")
        return [self._check(f, value, index) for index, value in enumerate(values)]

    def _check(self, f: RewardFunction, value: Any, index: int) -> float | None:
        """A finite float, None (no reward), 0.0 for NaN/inf (counted), RewardError for anything else."""
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, numbers.Real):
            raise RewardError(
                f"reward function {f.shown} returned {type(value).__name__} {_short(value)} for completion "
                f"{index}; it must return a number or None"
            )
        value = float(value)
        if not math.isfinite(value):
            self.counters.reward_non_finite += 1
            self._fail("non_finite", f"reward function {f.shown} returned {value} for completion {index}")
            return 0.0
        return value

    def _fail(self, kind: str, message: str) -> None:
        if self.fail_fast:
            raise RewardError(f"{message} (task.reward_fail_fast is on)")
        if kind not in self._warned:
            self._warned.add(kind)
            log.warning("%s; scored 0 and counted in reward_%s (warned once)", message, kind)

    def _completions_hint(self, error: str) -> str:
        """What to set when an error looks like the function expects the other completion form."""
        if not self.conversational and error.startswith("TypeError") and "string indices must be integers" in error:
            return (" (it reads completions as TRL's conversational messages, completion[0]['content']: set "
                    "task.reward_completions=conversational)")
        if self.conversational and ("'list' object has no attribute" in error or "got 'list'" in error):
            return " (it reads completions as strings: set task.reward_completions=text)"
        return ""

    def _unique(self, f: RewardFunction, taken: dict[str, Any]) -> str:
        name, n = f.name, 2
        while name in taken:
            name, n = f"{f.name}_{n}", n + 1
        return name


def _columns(problems: Sequence[Any]) -> dict[str, list[Any]]:
    """Every dataset column of ``problems`` under its own name: ``answer`` plus each key of ``Problem.data``."""
    columns: dict[str, list[Any]] = {"answer": [p.answer for p in problems]}
    keys = dict.fromkeys(key for p in problems for key in p.data)
    for key in keys:
        if key not in RESERVED and key != "answer":
            columns[key] = [p.data.get(key) for p in problems]
    return columns


def _run_in_process(call: Call, timeout_s: float) -> Outcome:
    try:
        return Outcome("ok", value=call_with_timeout(call.function, timeout_s, *call.args, **(call.kwargs or {})))
    except RewardTimeout:
        return Outcome("timeout")
    except Exception as err:  # noqa: BLE001 - user code: counted, fatal only with fail_fast
        detail = str(err).strip().splitlines()[0] if str(err).strip() else ""
        return Outcome("error", error=type(err).__name__ + (f": {detail}" if detail else ""))


def call_with_timeout(fn: Callable[..., Any], timeout_s: float, *args: Any, **kwargs: Any) -> Any:
    """fn(*args, **kwargs), raising RewardTimeout after ``timeout_s`` seconds (Python code only: see the module doc)."""
    if threading.current_thread() is threading.main_thread() and hasattr(signal, "setitimer"):
        def on_alarm(signum: int, frame: Any) -> None:
            raise RewardTimeout

        previous = signal.signal(signal.SIGALRM, on_alarm)
        signal.setitimer(signal.ITIMER_REAL, timeout_s)
        try:
            return fn(*args, **kwargs)
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, previous)
    outcome: dict[str, Any] = {}

    def target() -> None:
        try:
            outcome["value"] = fn(*args, **kwargs)
        except BaseException as err:  # noqa: BLE001 - re-raised in the calling thread
            outcome["error"] = err

    worker = threading.Thread(target=target, daemon=True)
    worker.start()
    worker.join(timeout_s)
    if worker.is_alive():
        raise RewardTimeout
    if "error" in outcome:
        raise outcome["error"]
    return outcome["value"]


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."
