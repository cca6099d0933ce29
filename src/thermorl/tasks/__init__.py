"""Tasks by name: each task module registers its class (``TASKS``, built with ``from_config``)."""

from thermorl.config import TaskConfig
from thermorl.config.registry import TASKS
from thermorl.tasks.arithmetic import Arithmetic
from thermorl.tasks.base import Problem, Task
from thermorl.tasks.countdown import Countdown, check_countdown
from thermorl.tasks.math import MathTask


def build_task(config: TaskConfig) -> Task:
    """The task named by ``config.name``; ``config.reward='module:function'`` replaces its reward."""
    task: Task = TASKS[config.name].build.from_config(config)
    if config.reward != "default":
        from thermorl.rewards import TaskReward, load_reward_function

        # the instance attribute shadows the task's own verifier for training and evaluation alike
        task.reward = TaskReward(load_reward_function(config.reward), config.reward)  # type: ignore[method-assign]
    return task


__all__ = ["Arithmetic", "Countdown", "MathTask", "Problem", "TASKS", "Task", "build_task", "check_countdown"]
