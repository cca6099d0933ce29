"""DAPO's dynamic sampling: the filter by hand, batches joined exactly, and a run that refills its groups."""

import json
import math
from pathlib import Path

import pytest
import torch

from thermorl.algorithms.grpo import groups_with_spread
from thermorl.config import load_config
from thermorl.engines.base import RolloutBatch, concat_batches
from thermorl.runtime.trainer import train
from thermorl.temperature.base import TemperatureActions

USER_REWARDS = Path(__file__).resolve().parent / "user_rewards.py"


def test_groups_with_spread_by_hand():
    nan = math.nan
    rewards = torch.tensor([1.0, 1.0, 0.0, 1.0, nan, 2.0, nan, nan, 0.5, 0.5])
    groups = torch.tensor([0, 0, 1, 1, 2, 2, 3, 3, 4, 4])
    # 0: all equal; 1: differ; 2: one reward left; 3: none; 4: equal
    assert groups_with_spread(rewards, groups).tolist() == [False, False, True, True] + [False] * 6


def _batch(prompt_len: int, length: int, rows: int, fill: float) -> RolloutBatch:
    full = lambda value: torch.full((rows, length), value)  # noqa: E731
    return RolloutBatch(
        torch.full((rows, prompt_len), 5), torch.ones(rows, prompt_len, dtype=torch.long), full(7).long(), full(1.0),
        full(fill), full(-fill), full(fill / 2), torch.arange(rows), TemperatureActions(gate=full(1.0)),
    )


def test_batches_of_different_shapes_join_with_padding_that_changes_nothing():
    joined = concat_batches([_batch(3, 2, 2, 0.5), _batch(5, 4, 1, 0.75)], pad_id=0)
    assert joined.prompt_ids.shape == (3, 5) and joined.completion_ids.shape == (3, 4)
    assert joined.prompt_mask[:2].tolist() == [[0, 0, 1, 1, 1]] * 2 and joined.prompt_ids[0, :2].tolist() == [0, 0]
    assert joined.completion_mask[:2].tolist() == [[1.0, 1.0, 0.0, 0.0]] * 2
    assert joined.temperatures[0].tolist() == [0.5, 0.5, 1.0, 1.0] and joined.logprobs[2].tolist() == [-0.75] * 4
    assert joined.actions.gate[0].tolist() == [1.0, 1.0, 0.0, 0.0] and joined.group_ids.tolist() == [0, 1, 0]


def test_batches_of_different_controllers_or_truncations_are_refused():
    plain = _batch(3, 2, 2, 0.5)
    plain.actions = TemperatureActions()
    with pytest.raises(ValueError, match="different controllers or truncations"):
        concat_batches([_batch(3, 2, 2, 0.5), plain], pad_id=0)
    truncated = _batch(3, 2, 2, 0.5)
    truncated.top_p = 0.9
    with pytest.raises(ValueError, match="different controllers or truncations"):
        concat_batches([_batch(3, 2, 2, 0.5), truncated], pad_id=0)


def test_a_run_with_dynamic_sampling_trains_on_groups_whose_rewards_differ(tmp_path):
    run = tmp_path / "run"
    config = load_config(None, [
        "model.path=builtin:random", "model.hidden_size=32", "model.num_layers=1", "model.num_heads=2",
        "task.eval_size=4", "train.eval_avg_problems=2", "train.eval_avg_k=2", "rollout.prompts_per_step=4",
        "rollout.group_size=3", "rollout.max_new_tokens=8", "log.progress=false", "log.plot=false",
        "log.tensorboard=false", "task.reward_workers=0", "train.steps=3", "rollout.dynamic_sampling=true",
        "rollout.dynamic_sampling_max_rounds=6", f"task.reward={USER_REWARDS}:spread_if_prompt_has_a_7",
    ])
    train(config, run)
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()][1:]
    assert all("dynamic_sampling_rounds" in row for row in rows)
    assert sum(row["dynamic_sampling_dropped_groups"] for row in rows) > 0, "some groups had no spread"
    for row in rows:
        # every group trained on has a reward spread, except those filled in when the rounds ran out
        assert row["zero_variance_groups"] == row["dynamic_sampling_filled_groups"] / 4
        assert row["dynamic_sampling_rounds"] <= 6
    samples = [json.loads(line) for line in (run / "samples.jsonl").read_text().splitlines()]
    assert samples and all("7" in s["prompt"] for s in samples if rows[s["step"] - 1]["dynamic_sampling_filled_groups"] == 0)
