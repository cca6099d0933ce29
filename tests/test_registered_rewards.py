"""A reward function registered by name (``register_reward``) from a plug-in file runs in a reward worker
process, which imports the plug-in file again to find it."""

from __future__ import annotations

import os

import pytest

from thermorl import Problem, load_config, load_plugins
from thermorl.config.registry import REWARDS
from thermorl.rewards import build_reward_guard
from thermorl.tasks import build_task

PLUGIN = '''
import os

from thermorl import register_reward


@register_reward("{name}")
def which_process(prompts, completions, **columns):
    """The id of the process that scores (not a useful reward: it shows where the call ran)."""
    return [float(os.getpid())] * len(completions)
'''


@pytest.fixture
def plugin(tmp_path):
    path = tmp_path / "reward_plugin.py"
    path.write_text(PLUGIN.format(name="pid"))
    yield path
    REWARDS.pop("pid", None)


def test_a_registered_reward_is_selected_by_name_and_runs_in_a_worker(plugin):
    config = load_config(None, ["task.reward=pid", "task.reward_workers=1", "task.eval_size=4"],
                         plugins=[str(plugin)])
    assert "pid" in REWARDS
    guard = build_reward_guard(config.task, build_task(config.task), chat_template=False)
    try:
        scores = guard.score([Problem("1+1:", "2")] * 2, ["2", "3"])
    finally:
        guard.close()
    assert guard.metrics()["reward_errors"] == 0
    pids = set(scores.values())
    assert len(pids) == 1 and pids != {float(os.getpid())}  # scored in the worker, which re-imported the file


def test_an_unknown_reward_name_lists_the_registered_ones(plugin):
    from thermorl.errors import RewardError
    from thermorl.rewards import reward_functions

    load_plugins([str(plugin)])
    config = load_config(None, ["task.reward=longer", "task.eval_size=4"])
    with pytest.raises(RewardError, match=r"or be a registered reward \(pid\)"):
        reward_functions(config.task, build_task(config.task))
