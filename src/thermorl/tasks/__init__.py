"""Tasks by name: each task module registers its class (``TASKS``, built with ``from_config``)."""

from thermorl.config import TaskConfig
from thermorl.config.registry import TASKS
from thermorl.tasks.arithmetic import Arithmetic
from thermorl.tasks.base import Problem, Task
from thermorl.tasks.countdown import Countdown, check_countdown
from thermorl.tasks.math import MathTask
from thermorl.tasks.word_arithmetic import WordArithmetic


def build_task(config: TaskConfig) -> Task:
    """The task named by ``config.name`` (its rewards: ``thermorl.rewards.reward_functions``)."""
    return TASKS[config.name].build.from_config(config)


__all__ = ["Arithmetic", "Countdown", "MathTask", "Problem", "TASKS", "Task", "build_task", "check_countdown", "WordArithmetic"]
