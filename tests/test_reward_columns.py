"""Reward columns: a reward argument filled from a differently named dataset column (TRL's ``solution`` from a
dataset's ``answer``), checked before any call; an error that shows the function wants the other completion
form names the setting that fixes it. TRL's own accuracy_reward, called in this process (no workers)."""

from __future__ import annotations

import pytest
from trl.rewards import accuracy_reward

from thermorl import ConfigError, Problem, load_config
from thermorl.errors import RewardError
from thermorl.rewards.guard import RewardFunction, RewardGuard

pytestmark = pytest.mark.fast

PROBLEMS = [Problem("1/3 as a fraction?", "\\frac{1}{3}"), Problem("3 + 4?", "7")]  # 'answer' only, like AIME24


def _guard(conversational: bool = True, fail_fast: bool = False, **columns: str) -> RewardGuard:
    function = RewardFunction(accuracy_reward, "accuracy_reward", spec="trl.rewards:accuracy_reward")
    return RewardGuard([function], 60, fail_fast, workers=0, conversational=conversational, column_map=columns)


def test_a_mapped_column_fills_the_reward_argument():
    guard = _guard(solution="answer")
    guard.check_columns(PROBLEMS, "the held-out problems")  # 'solution' is provided by the mapping
    scores = guard.score(PROBLEMS, ["so \\boxed{\\frac{1}{3}}", "\\boxed{8}"])
    assert scores.total == [1.0, 0.0]
    assert guard.metrics()["reward_errors"] == 0


def test_without_a_mapping_the_missing_column_is_named_with_the_setting_that_maps_it():
    with pytest.raises(RewardError, match=r"needs the column 'solution', which the held-out problems lack \(they have: "
                                          r"answer, completions, prompts; pass one as 'solution' with "
                                          r"task.reward_columns.solution=COLUMN\)"):
        _guard().check_columns(PROBLEMS, "the held-out problems")


def test_a_mapping_to_a_column_the_data_lacks_is_refused_before_any_call():
    with pytest.raises(RewardError, match="task.reward_columns maps the reward argument 'solution' to the column "
                                          "'final', which the training problems lack \\(they have: answer\\)"):
        _guard(solution="final").check_columns(PROBLEMS, "the training problems")


def test_a_function_reading_conversational_completions_as_text_names_the_setting():
    guard = _guard(conversational=False, fail_fast=True, solution="answer")
    with pytest.raises(RewardError, match="string indices must be integers.*set task.reward_completions=conversational"):
        guard.score(PROBLEMS, ["\\boxed{7}", "\\boxed{7}"])
    counting = _guard(conversational=False, solution="answer")
    assert counting.score(PROBLEMS, ["\\boxed{7}", "\\boxed{7}"]).total == [0.0, 0.0]
    assert counting.metrics()["reward_errors"] == 2


def test_reward_columns_are_validated_in_the_config():
    config = load_config(None, ["task.reward_columns.solution=answer"])
    assert config.task.reward_columns == {"solution": "answer"}
    with pytest.raises(ConfigError, match="task.reward_columns.completions: a reward argument"):
        load_config(None, ["task.reward_columns.completions=answer"])
    with pytest.raises(ConfigError, match="task.reward_columns.solution must name a dataset column, got 3"):
        load_config(None, ["task.reward_columns.solution=3"])
