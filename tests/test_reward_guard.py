"""The reward guard: TRL's call convention with TRL's own reward functions, None, weights, killing timeouts."""

import logging
import time

import pytest
from trl.rewards import accuracy_reward, get_soft_overlong_punishment, think_format_reward

import user_rewards
from thermorl.errors import RewardError
from thermorl.rewards.guard import RewardFunction, RewardGuard
from thermorl.tasks.base import Problem


def _problems(n: int, **data) -> list[Problem]:
    return [Problem(f"prompt {i}", str(i), {key: values[i] for key, values in data.items()}) for i in range(n)]


@pytest.fixture
def guards():
    made = []

    def make(*functions, **kwargs):
        guard = RewardGuard(list(functions), kwargs.pop("timeout_s", 60), kwargs.pop("fail_fast", False), **kwargs)
        made.append(guard)
        return guard

    yield make
    for guard in made:
        guard.close()


def test_trl_accuracy_reward_runs_unchanged_on_conversational_completions(guards):
    guard = guards(RewardFunction(accuracy_reward, "accuracy_reward"), conversational=True)
    problems = _problems(3, solution=["The answer is $\\frac{1}{3}$.", "so $\\boxed{7}$", "no math here"])
    scores = guard.score(problems, ["\\boxed{\\frac{1}{3}}", "\\boxed{8}", "\\boxed{1}"])
    # the third gold solution cannot be parsed: TRL's function returns None, the sample has no reward
    assert scores.total == [1.0, 0.0, None]
    assert guard.metrics()["reward_none"] == 1 and guard.metrics()["reward_errors"] == 0


def test_functions_get_completion_ids_columns_and_the_trainer_state(guards):
    overlong = get_soft_overlong_punishment(max_completion_len=10, soft_punish_cache=4)
    guard = guards(
        RewardFunction(overlong, "overlong"), RewardFunction(user_rewards.length_and_columns, "echo"),
        RewardFunction(think_format_reward, "think"), conversational=True,
    )
    ids = [[1] * 3, [1] * 8, [1] * 12]
    scores = guard.score(_problems(3), ["<think>a</think>b", "x", "y"], ids, step=5)
    assert scores.per_function["overlong"] == [0.0, -0.5, -1.0]
    assert scores.per_function["echo"] == [3 + 5, 8 + 5, 12 + 5]
    assert scores.per_function["think"] == [1.0, 0.0, 0.0]


def test_the_trained_reward_is_the_weighted_sum(guards):
    guard = guards(
        RewardFunction(user_rewards.digit_fraction, "digits", weight=1.0),
        RewardFunction(user_rewards.length_and_columns, "length", weight=0.5),
    )
    texts = ["a1", "22", "abc4"]
    scores = guard.score(_problems(3), texts, [[0] * len(t) for t in texts])
    digits = [0.5, 1.0, 0.25]
    assert scores.per_function == {"digits": digits, "length": [2, 2, 4]}
    assert scores.total == [d + 0.5 * n for d, n in zip(digits, [2, 2, 4])]
    assert scores.function_means() == {"rewards/digits/mean": pytest.approx(1.75 / 3), "rewards/length/mean": 8 / 3}


def test_none_from_one_function_leaves_the_others_reward(guards):
    guard = guards(
        RewardFunction(accuracy_reward, "accuracy", weight=2.0), RewardFunction(think_format_reward, "think"),
        conversational=True,
    )
    texts = ["<think>a</think>\\boxed{4}", "<think>b</think>\\boxed{5}"]
    scores = guard.score(_problems(2, solution=["$4$", "nothing"]), texts)
    assert scores.per_function == {"accuracy": [1.0, None], "think": [1.0, 1.0]}
    assert scores.total == [2.0 * 1.0 + 1.0, 1.0] and guard.metrics()["reward_none"] == 0


def test_a_missing_column_is_named_before_anything_runs(guards):
    guard = guards(RewardFunction(accuracy_reward, "accuracy_reward"))
    with pytest.raises(RewardError, match="accuracy_reward needs the column 'solution', which the eval problems lack"):
        guard.check_columns(_problems(1, id=["a"]), "the eval problems")
    guard.check_columns(_problems(1, solution=["$1$"]), "the eval problems")


def test_a_call_stuck_in_c_is_killed_scored_zero_and_counted(guards):
    guard = guards(
        RewardFunction(user_rewards.stuck_in_c, "stuck"), RewardFunction(user_rewards.digit_fraction, "digits"),
        timeout_s=1.0,
    )
    guard.score(_problems(2), ["1", "2"])  # workers started and functions loaded: the timeout is the call's own
    started = time.monotonic()
    scores = guard.score(_problems(2), ["1", "a"])
    assert time.monotonic() - started < 1.0 + 2.0
    assert scores.per_function == {"stuck": [0.0, 0.0], "digits": [1.0, 0.0]}
    assert guard.metrics()["reward_timeouts"] == 4  # two completions, twice


def test_a_lambda_runs_in_process_with_one_warning(guards, caplog):
    with caplog.at_level(logging.WARNING):
        guard = guards(RewardFunction(lambda prompts, completions, **kw: [1.0] * len(completions), "inline"))
        assert guard.score(_problems(2), ["a", "b"]).total == [1.0, 1.0]
        guard.score(_problems(1), ["c"])
    warnings = [r for r in caplog.records if "cannot be sent to a worker" in r.getMessage()]
    assert len(warnings) == 1 and "timeout cannot stop C code" in warnings[0].getMessage()
    assert guard._pool is None


def test_errors_score_zero_and_fail_fast_stops(guards):
    guard = guards(RewardFunction(user_rewards.raises, "raises"))
    assert guard.score(_problems(2), ["a", "b"]).total == [0.0, 0.0]
    assert guard.metrics()["reward_errors"] == 2
    strict = guards(RewardFunction(user_rewards.raises, "raises"), fail_fast=True)
    with pytest.raises(RewardError, match="reward function raises raised ValueError: boom"):
        strict.score(_problems(1), ["a"])
