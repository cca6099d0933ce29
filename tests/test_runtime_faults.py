"""Faults during a run: NaN/inf steps are skipped and counted, too many stop the run with a valid
checkpoint, reward-function failures score 0 with a counter, temperatures stay in the global range."""

from __future__ import annotations

import json
import random
import threading
import time
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from thermorl.config import load_config
from thermorl.engines.hf import encode_prompts, sample
from thermorl.runtime.forward import score
from thermorl.errors import NonFiniteError, RewardError, TrainingDivergedError
from thermorl.rewards.guard import RewardFunction, RewardGuard, RewardTimeout, call_with_timeout
from thermorl.runtime import checkpoint as ckpt
from thermorl.runtime.components import build_components
from thermorl.runtime.trainer import train
from thermorl.runtime.update import grpo_update
from thermorl.temperature import CONTROLLERS
from thermorl.temperature.base import TemperatureActions, TemperatureController, full

USER_REWARDS = Path(__file__).resolve().parent / "user_rewards.py"
TINY = [
    "model.path=builtin:random", "model.hidden_size=32", "model.num_layers=1", "model.num_heads=2",
    "task.eval_size=20", "train.eval_avg_problems=4", "train.eval_avg_k=2", "train.threads=1",
    "rollout.prompts_per_step=2", "rollout.group_size=2", "rollout.max_new_tokens=8", "log.progress=false",
    "log.plot=false", "log.tensorboard=false",
]


@pytest.fixture(autouse=True)
def _keep_threads():
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def _config(*overrides: str):
    return load_config(None, TINY + list(overrides))


def _rows(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


class Chaos(TemperatureController):
    """A controller with a tiny trainable head that produces NaN temperatures or a NaN loss on chosen steps."""

    name = "chaos"
    nan_temperature_steps: set[int] = set()
    nan_loss_steps: set[int] = set()
    temperature = 1.0

    def __init__(self, config, env) -> None:
        self.head = torch.nn.Linear(1, 1)
        self.step = 0

    @property
    def module(self) -> torch.nn.Module:
        return self.head

    def start(self, num_rows: int, training_step: int) -> None:
        self.step = training_step

    def choose(self, ctx):
        tau = full(ctx, self.temperature)
        return (tau * float("nan") if self.step in self.nan_temperature_steps else tau), TemperatureActions()

    def policy_loss(self, hidden, actions, advantages, mask, training_step):
        loss = self.head.weight.sum() * 0.0
        return (loss * float("nan") if training_step in self.nan_loss_steps else loss), {}


@pytest.fixture
def chaos(monkeypatch):
    """Registers Chaos under the name 'fixed' (the registry is how controllers are plugged in)."""

    class Registered(Chaos):
        nan_temperature_steps = set()
        nan_loss_steps = set()

    monkeypatch.setitem(CONTROLLERS, "fixed", replace(CONTROLLERS["fixed"], build=Registered))
    return Registered


def _optimizer_steps(checkpoint: Path, name: str) -> int:
    return int(load_file(str(checkpoint / "optimizer.safetensors"))[f"{name}.0.step"].item())


def test_nan_temperature_and_nan_loss_steps_are_skipped_and_counted(tmp_path, chaos, caplog):
    chaos.nan_temperature_steps = {2}
    chaos.nan_loss_steps = {4}
    run = tmp_path / "run"
    summary = train(_config("train.steps=5", "train.checkpoint_every=0", "train.eval_every=2"), run)
    rows = {row["step"]: row for row in _rows(run)}
    assert rows[2]["skipped"] == 1 and "non-finite temperature from the chaos controller" in rows[2]["skip_reason"]
    assert rows[4]["skipped"] == 1 and rows[4]["skip_reason"] == "non-finite loss"
    assert "eval_accuracy" not in rows[2] and "eval_accuracy" not in rows[4], "no evaluation of a skipped step"
    assert [rows[s]["skipped_steps"] for s in range(1, 6)] == [0, 1, 1, 2, 2]
    assert summary["skipped_steps"] == 2
    final = ckpt.list_checkpoints(run)[-1]
    assert _optimizer_steps(final, "lm") == 3 and _optimizer_steps(final, "head") == 3, "a skipped step must not step"
    assert "step 2 skipped" in caplog.text and "step 4 skipped" in caplog.text


def test_too_many_bad_steps_in_a_row_stop_with_a_valid_checkpoint(tmp_path, chaos):
    chaos.nan_temperature_steps = {3, 4, 5}
    run = tmp_path / "run"
    config = _config("train.steps=8", "train.checkpoint_every=2", "train.max_bad_steps=2")
    with pytest.raises(TrainingDivergedError) as error:
        train(config, run)
    last = run / "checkpoints" / "step-000004"
    assert str(error.value) == (
        "stopped at step 4: 2 steps in a row had NaN/inf logits, temperatures, loss or gradients "
        f"(train.max_bad_steps=2); last valid checkpoint: {last}"
    )
    assert ckpt.verify_checkpoint(last)
    weights = load_file(str(last / "model" / "model.safetensors"))
    assert all(torch.isfinite(t).all() for t in weights.values())
    assert [row["step"] for row in _rows(run)] == [0, 1, 2, 3, 4], "the run directory is kept for diagnosis"


def test_nan_weight_in_the_model_stops_sampling_and_the_update_before_any_optimizer_step():
    config = _config()
    c = build_components(config)
    problems = [p for p in c.task.train_problems(random.Random(0), 2) for _ in range(2)]
    prompt_ids, prompt_mask = encode_prompts(c.policy, [p.prompt for p in problems])
    generator = torch.Generator().manual_seed(0)
    batch = sample(c.policy, c.controller, prompt_ids, prompt_mask, 8, generator)
    with torch.no_grad():
        c.policy.model.model.norm.weight[0] = float("nan")  # every logit becomes NaN
    with pytest.raises(NonFiniteError, match="non-finite logits at completion token 0"):
        sample(c.policy, c.controller, prompt_ids, prompt_mask, 8, generator)
    before = {name: p.detach().clone() for name, p in c.policy.model.named_parameters()}
    with pytest.raises(NonFiniteError, match="non-finite loss"):
        grpo_update(c, config, batch, torch.tensor([1.0, -1.0, 1.0, -1.0]), 1, generator)
    assert c.lm_optimizer.state_dict()["state"] == {}, "the optimizer never stepped"
    after = dict(c.policy.model.named_parameters())
    assert all(torch.equal(before[n], after[n]) or n == "model.norm.weight" for n in before)


@pytest.mark.parametrize("temperature, expected", [(100.0, 2.0), (1e-4, 0.3)])
def test_temperatures_are_clamped_to_the_configured_range(tmp_path, chaos, temperature, expected):
    chaos.temperature = temperature
    config = _config("train.steps=1", "rollout.temperature_min=0.3", "rollout.temperature_max=2.0")
    c = build_components(config)
    prompt_ids, prompt_mask = encode_prompts(c.policy, ["3,7,2>23:"] * 4)
    batch = sample(c.policy, c.controller, prompt_ids, prompt_mask, 8, torch.Generator().manual_seed(0),
                   temperature_range=(0.3, 2.0))
    used = batch.temperatures[batch.completion_mask.bool()]
    assert torch.all(used == expected)
    # the training forward pass scores each token at the clamped temperature it was sampled with
    torch.testing.assert_close(score(c.policy, batch).logprobs * batch.completion_mask, batch.logprobs, atol=1e-5,
                               rtol=1e-5)
    summary_run = tmp_path / "run"
    train(config, summary_run)
    assert _rows(summary_run)[1]["temperature_mean"] == pytest.approx(expected)


def test_reward_function_failures_score_zero_and_are_counted(tmp_path, caplog):
    run = tmp_path / "run"
    summary = train(_config("train.steps=2", f"task.reward={USER_REWARDS}:flaky"), run)
    assert summary["steps"] == 2
    last = _rows(run)[-1]
    assert last["reward_errors"] > 0 and last["reward_timeouts"] == 0
    assert last["reward_calls"] >= last["reward_errors"]
    assert "raised RuntimeError: flaky scorer; scored 0" in caplog.text


# --------------------------------------------------------------------------- the guard itself


def test_in_process_guard_times_out_python_code_that_swallows_exceptions():
    def stubborn(problems, completions):
        try:
            time.sleep(5)
        except Exception:  # noqa: BLE001 - what careless user code does
            return [1.0]
        return [1.0]

    guard = RewardGuard([RewardFunction(stubborn, "stubborn", convention="task")], 0.1, fail_fast=True, workers=0)
    with pytest.raises(RewardError, match="did not return within 0.1 s"):
        guard.score([None], ["a"])


def test_guard_timeout_off_the_main_thread():
    outcome = {}

    def worker():
        try:
            call_with_timeout(time.sleep, 0.1, 5)
        except RewardTimeout:
            outcome["timed_out"] = True

    thread = threading.Thread(target=worker)
    thread.start()
    thread.join(5)
    assert outcome == {"timed_out": True}


def test_guard_checks_what_functions_return():
    import numpy as np

    def guard(values):
        return RewardGuard([RewardFunction(lambda p, c: values, "f", convention="task")], 1, False, workers=0)

    assert guard(np.array([1.0, 0.5])).score([1, 2], ["a", "b"]).total == [1.0, 0.5]
    with pytest.raises(RewardError, match="returned 1 rewards for 2 completions"):
        guard([1.0]).score([1, 2], ["a", "b"])
    with pytest.raises(RewardError, match="returned float, expected a list of 2 numbers"):
        guard(1.0).score([1, 2], ["a", "b"])
    with pytest.raises(RewardError, match="returned str 'yes' for completion 1; it must return a number or None"):
        guard([1.0, "yes"]).score([1, 2], ["a", "b"])
    infinite = guard([float("inf"), 1.0])
    assert infinite.score([1, 2], ["a", "b"]).total == [0.0, 1.0] and infinite.metrics()["reward_non_finite"] == 1


def test_guard_counters_survive_a_checkpoint_round_trip():
    nan = RewardGuard([RewardFunction(lambda p, c: [float("nan")] * 3, "nan", convention="task")], 1, False, workers=0)
    nan.score([1, 2, 3], ["a", "b", "c"])
    again = RewardGuard([RewardFunction(lambda p, c: [1.0], "one", convention="task")], 1, False, workers=0)
    again.load_state_dict(json.loads(json.dumps(nan.state_dict())))
    assert again.metrics() == {
        "reward_calls": 3, "reward_errors": 0, "reward_timeouts": 0, "reward_non_finite": 3, "reward_none": 0,
    }
