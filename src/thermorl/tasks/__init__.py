"""Tasks by name."""

from thermorl.config import TaskConfig
from thermorl.tasks.arithmetic import Arithmetic
from thermorl.tasks.base import Problem, Task
from thermorl.tasks.countdown import Countdown, check_countdown
from thermorl.tasks.math import MathTask

TASKS: dict[str, type[Task]] = {"countdown": Countdown, "arithmetic": Arithmetic, "math": MathTask}


def build_task(config: TaskConfig) -> Task:
    """The task named by ``config.name``; ``config.reward='module:function'`` replaces its reward."""
    if config.name == "math":
        task: Task = MathTask.from_config(config)
    else:
        extra = {"operations": config.operations} if config.name == "countdown" else {}
        task = TASKS[config.name](
            num_operands=config.num_operands,
            max_operand=config.max_operand,
            max_result=config.max_result,
            eval_size=config.eval_size,
            eval_seed=config.eval_seed,
            **extra,
        )
    if config.reward != "default":
        from thermorl.rewards import TaskReward, load_reward_function

        # the instance attribute shadows the task's own verifier for training and evaluation alike
        task.reward = TaskReward(load_reward_function(config.reward), config.reward)  # type: ignore[method-assign]
    return task


__all__ = ["Arithmetic", "Countdown", "MathTask", "Problem", "TASKS", "Task", "build_task", "check_countdown"]
