import random

import pytest

from thermorl.config import TaskConfig
from thermorl.tasks import build_task, check_countdown


def test_countdown_checker_by_hand():
    assert check_countdown([3, 7, 2], 23, "7*3=21,21+2=23")
    assert check_countdown([3, 7, 2], 23, " 7*3=21,21+2=23 ")
    assert not check_countdown([3, 7, 2], 23, "7*3=21,21+2=24")  # wrong target
    assert not check_countdown([3, 7, 2], 23, "7*3=22,22+1=23")  # wrong arithmetic, unknown number
    assert not check_countdown([3, 7, 2], 23, "7*7=49")  # 7 used twice
    assert not check_countdown([3, 7, 2], 21, "7*3=21,")  # malformed
    assert not check_countdown([3, 7, 2], 23, "__import__('os')")
    assert not check_countdown([3, 7, 2], 23, "")
    assert check_countdown([3, 7, 2], 21, "3*7=21")  # not every number must be used


@pytest.mark.parametrize("name", ["countdown", "arithmetic"])
def test_demonstrations_are_rewarded_and_corruptions_are_not(name):
    task = build_task(TaskConfig(name=name, eval_size=50))
    rng = random.Random(0)
    for problem in task.train_problems(rng, 200):
        demo = task.demonstration(problem)
        assert task.reward(problem, demo) == 1.0
        last_digit = demo[-1]
        corrupted = demo[:-1] + str((int(last_digit) + 1) % 10)
        assert task.reward(problem, corrupted) == 0.0


@pytest.mark.parametrize("name", ["countdown", "arithmetic"])
def test_held_out_split_is_disjoint_and_fixed(name):
    task = build_task(TaskConfig(name=name, eval_size=300))
    held_out = {p.prompt for p in task.eval_problems()}
    assert len(held_out) == 300
    assert {p.prompt for p in build_task(TaskConfig(name=name, eval_size=300)).eval_problems()} == held_out
    train = task.train_problems(random.Random(1), 3000)
    assert not held_out & {p.prompt for p in train}


def test_arithmetic_reward_requires_following_the_prompt():
    task = build_task(TaskConfig(name="arithmetic", eval_size=10))
    problem = task.train_problems(random.Random(3), 1)[0]
    first = int(problem.data["operations"][0])
    # a correct-looking chain that ignores the prompt's operations earns nothing
    assert task.reward(problem, f"{first}+0={first}") == 0.0


def test_difficulty_knobs_change_the_problems():
    small = build_task(TaskConfig(max_operand=3, eval_size=10)).train_problems(random.Random(0), 100)
    assert max(max(p.data["numbers"]) for p in small) <= 3
    four = build_task(TaskConfig(num_operands=4, eval_size=10)).train_problems(random.Random(0), 10)
    assert all(len(p.data["numbers"]) == 4 for p in four)


def test_countdown_operations_knob_limits_generator_and_checker():
    task = build_task(TaskConfig(operations="+-", eval_size=10))
    problems = task.train_problems(random.Random(0), 300)
    assert all("*" not in p.data["solution"] for p in problems)
    assert {op for p in problems for op in p.data["solution"] if op in "+-"} == {"+", "-"}
    # a correct chain that uses a forbidden operation earns nothing
    assert task.reward(problems[0], task.demonstration(problems[0])) == 1.0
    assert not check_countdown([3, 7, 2], 23, "7*3=21,21+2=23", operations="+-")
    assert check_countdown([3, 7, 2], 8, "7+3=10,10-2=8", operations="+-")
