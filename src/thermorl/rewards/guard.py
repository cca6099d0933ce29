"""Calling a reward function safely: a timeout per call, value checks and failure counters.

A reward function is user code (``task.reward=module:function``) or a task's parser. It may
raise, hang, return NaN, return something that is not a number, or (batched functions) return
the wrong number of values. ``RewardGuard`` makes each of these either harmless or loud:

* exception, timeout, NaN/inf -> reward 0 and a counter (``reward_errors``, ``reward_timeouts``,
  ``reward_non_finite``, logged every step), or ``RewardError`` when ``fail_fast``;
* a value that is not a real number, or a batch of the wrong length -> always ``RewardError``:
  that is a broken contract, and zeroing every reward would train on noise without saying so.

Timeouts use ``SIGALRM`` in the main thread, which interrupts Python code and sleeps (a call
stuck inside C code that never returns to the interpreter cannot be interrupted in-process).
Off the main thread the call runs in a daemon thread that is abandoned when it overruns.
"""

from __future__ import annotations

import logging
import math
import numbers
import signal
import threading
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from thermorl.errors import RewardError

log = logging.getLogger(__name__)


class RewardTimeout(BaseException):
    """Raised inside an overrunning reward call; a BaseException so ``except Exception`` cannot swallow it."""


@dataclass
class RewardCounters:
    """Cumulative failures over the run (saved in checkpoints so a resumed run keeps counting)."""

    reward_calls: int = 0
    reward_errors: int = 0
    reward_timeouts: int = 0
    reward_non_finite: int = 0


class RewardGuard:
    """Wraps ``fn``: per item ``fn(problem, completion) -> float``, or batched ``fn(problems, completions) -> list``."""

    def __init__(
        self, fn: Callable[..., Any], name: str, timeout_s: float, fail_fast: bool, batched: bool = False
    ) -> None:
        self.fn = fn
        self.name = name
        self.timeout_s = timeout_s
        self.fail_fast = fail_fast
        self.batched = batched
        self.counters = RewardCounters()
        self._warned: set[str] = set()

    def __call__(self, problem: Any, completion: str) -> float:
        """One guarded reward (the per-item interface of ``Task.reward``)."""
        return self.score([problem], [completion])[0]

    def score(self, problems: Sequence[Any], completions: Sequence[str]) -> list[float]:
        """Rewards of ``completions``; failures become 0.0 (counted) or raise ``RewardError``."""
        if not self.batched:
            rewards = []
            for index, (problem, completion) in enumerate(zip(problems, completions)):
                ok, value = self._call(problem, completion)
                rewards.append(self._check(value, index) if ok else 0.0)
            return rewards
        ok, values = self._call(problems, completions)
        if not ok:
            return [0.0] * len(completions)
        if hasattr(values, "tolist"):  # numpy array or torch tensor
            values = values.tolist()
        if not isinstance(values, (list, tuple)):
            raise RewardError(
                f"reward function {self.name} returned {type(values).__name__}, expected a list of "
                f"{len(completions)} numbers"
            )
        if len(values) != len(completions):
            raise RewardError(
                f"reward function {self.name} returned {len(values)} rewards for {len(completions)} completions"
            )
        return [self._check(value, index) for index, value in enumerate(values)]

    def metrics(self) -> dict[str, int]:
        """Cumulative counters, logged with every step."""
        return asdict(self.counters)

    def state_dict(self) -> dict[str, int]:
        return asdict(self.counters)

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.counters = RewardCounters(**state)

    def _call(self, *args: Any) -> tuple[bool, Any]:
        """(True, fn(*args)) within the timeout, or (False, None) after a counted failure."""
        self.counters.reward_calls += 1
        try:
            return True, call_with_timeout(self.fn, self.timeout_s, *args)
        except RewardError:  # the function broke its contract (wrong length, not a number): always fatal
            raise
        except RewardTimeout:
            self.counters.reward_timeouts += 1
            self._fail("timeouts", f"reward function {self.name} did not return within {self.timeout_s:g} s")
        except Exception as err:  # noqa: BLE001 - user code: counted, fatal only with fail_fast
            self.counters.reward_errors += 1
            detail = str(err).strip().splitlines()[0] if str(err).strip() else ""
            self._fail("errors", f"reward function {self.name} raised {type(err).__name__}" + (f": {detail}" if detail else ""))
        return False, None

    def _check(self, value: Any, index: int) -> float:
        """A finite float, 0.0 for NaN/inf (counted), RewardError for anything that is not a number."""
        if isinstance(value, bool) or not isinstance(value, numbers.Real):
            raise RewardError(
                f"reward function {self.name} returned {type(value).__name__} {_short(value)} for completion "
                f"{index}; it must return a number"
            )
        value = float(value)
        if not math.isfinite(value):
            self.counters.reward_non_finite += 1
            self._fail("non_finite", f"reward function {self.name} returned {value} for completion {index}")
            return 0.0
        return value

    def _fail(self, kind: str, message: str) -> None:
        if self.fail_fast:
            raise RewardError(f"{message} (task.reward_fail_fast is on)")
        if kind not in self._warned:
            self._warned.add(kind)
            log.warning("%s; scored 0 and counted in reward_%s (warned once)", message, kind)


def call_with_timeout(fn: Callable[..., Any], timeout_s: float, *args: Any) -> Any:
    """fn(*args), raising RewardTimeout after ``timeout_s`` seconds."""
    if threading.current_thread() is threading.main_thread() and hasattr(signal, "setitimer"):
        def on_alarm(signum: int, frame: Any) -> None:
            raise RewardTimeout

        previous = signal.signal(signal.SIGALRM, on_alarm)
        signal.setitimer(signal.ITIMER_REAL, timeout_s)
        try:
            return fn(*args)
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, previous)
    outcome: dict[str, Any] = {}

    def target() -> None:
        try:
            outcome["value"] = fn(*args)
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
