"""log.report_to: every step's scalars reach accelerate's trackers; metrics.jsonl stays the record."""

import json

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from thermorl.config import load_config
from thermorl.errors import ThermoRLError
from thermorl.runtime.trainer import train

TINY = [
    "model.path=builtin:random", "model.hidden_size=32", "model.num_layers=1", "model.num_heads=2",
    "task.eval_size=4", "train.eval_avg_problems=2", "train.eval_avg_k=2", "rollout.prompts_per_step=2",
    "rollout.group_size=2", "rollout.max_new_tokens=6", "log.progress=false", "log.plot=false",
    "log.tensorboard=false", "task.reward_workers=0", "train.steps=2",
]


def test_accelerates_tensorboard_tracker_gets_every_steps_scalars(tmp_path):
    run = tmp_path / "run"
    train(load_config(None, TINY + ["log.report_to=[tensorboard]", "log.project=study"]), run)
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    events = EventAccumulator(str(run / "trackers" / "study"))
    events.Reload()
    logged = {event.step: event.value for event in events.Scalars("reward_mean")}
    assert logged == {row["step"]: pytest.approx(row["reward_mean"]) for row in rows if "reward_mean" in row}
    assert not (run / "tensorboard").exists()  # log.tensorboard is its own switch


def test_a_tracker_that_is_not_installed_is_one_clear_error_and_leaves_no_run(tmp_path):
    pytest.importorskip("accelerate")
    try:
        import wandb  # noqa: F401
    except ImportError:
        pass
    else:
        pytest.skip("wandb is installed here")
    with pytest.raises(ThermoRLError, match="log.report_to: wandb is not installed"):
        train(load_config(None, TINY + ["log.report_to=[wandb]"]), tmp_path / "run")
    assert not (tmp_path / "run").exists()
