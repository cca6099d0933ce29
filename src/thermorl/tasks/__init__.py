"""Tasks by name."""

from thermorl.config import TaskConfig
from thermorl.tasks.arithmetic import Arithmetic
from thermorl.tasks.base import Problem, Task
from thermorl.tasks.countdown import Countdown, check_countdown

TASKS: dict[str, type[Task]] = {"countdown": Countdown, "arithmetic": Arithmetic}


def build_task(config: TaskConfig) -> Task:
    return TASKS[config.name](
        num_operands=config.num_operands,
        max_operand=config.max_operand,
        max_result=config.max_result,
        eval_size=config.eval_size,
        eval_seed=config.eval_seed,
    )


__all__ = ["Arithmetic", "Countdown", "Problem", "TASKS", "Task", "build_task", "check_countdown"]
