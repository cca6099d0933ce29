"""Heuristic controllers (fixed, linear, EAD, entropy-adaptive) and every non-learned controller
end to end through the real CLI."""

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from thermorl.config import EADConfig, EntropyConfig, FixedConfig, LinearConfig
from thermorl.temperature.base import ControllerEnv, StepContext, TemperatureActions
from thermorl.temperature.ead import EADController, ead_temperature
from thermorl.temperature.entropy import EntropyController, edt_temperature
from thermorl.temperature.fixed import FixedController
from thermorl.temperature.linear import LinearController, linear_temperature

REPO = Path(__file__).resolve().parents[1]
ENV = ControllerEnv(hidden_size=8, total_steps=5, device=torch.device("cpu"))


def context(logits, position=0):
    rows = torch.arange(logits.shape[0])
    return StepContext(logits, torch.zeros(logits.shape[0], 8), position, rows, 1)


# --------------------------------------------------------------------------- fixed, linear


def test_fixed_uses_its_temperature_for_every_row():
    tau, records = FixedController(FixedConfig(temperature=0.7), ENV).choose(context(torch.zeros(3, 5)))
    assert torch.allclose(tau, torch.full((3,), 0.7)) and records == TemperatureActions()


def test_linear_schedule_hits_start_at_the_first_step_and_end_at_the_last():
    controller = LinearController(LinearConfig(start=0.9, end=1.5), ENV)  # 5 steps: 0.9, 1.05, ..., 1.5
    seen = []
    for step in range(1, 6):
        controller.start(4, step)
        seen.append(controller.choose(context(torch.zeros(4, 5)))[0][0].item())
    assert seen == pytest.approx([0.9, 1.05, 1.2, 1.35, 1.5])
    assert linear_temperature(0, 5, 0.9, 1.5) == pytest.approx(0.9)  # the initial evaluation
    assert linear_temperature(9, 5, 0.9, 1.5) == pytest.approx(1.5)  # clamped past the end
    assert linear_temperature(1, 1, 0.9, 1.5) == pytest.approx(0.9)


# --------------------------------------------------------------------------- EAD


@pytest.mark.parametrize(
    "t, step, expected",
    [
        (0, 0, 1.0),  # warm-up: t < c = 10
        (9, 50, 1.0),
        (10, 0, 2.2 - math.exp(10 / 200)),  # d_s = 200: 1.14873
        (100, 20, 2.2 - math.exp(100 / 300)),  # d_s = 200 + 5 * 20 = 300: 0.80439
        (200, 0, 0.1),  # 2.2 - e < tau_min
        (100, 10**6, 2.2 - math.exp(100 / 4e4)),  # d_s capped at d_max
    ],
)
def test_ead_paper_form(t, step, expected):
    assert ead_temperature(t, step, EADConfig(form="paper")) == pytest.approx(expected)


@pytest.mark.parametrize(
    "t, step, expected",
    [
        (0, 0, 1.0),  # the released code keeps the first c = 10 tokens at T = 1 in every mode
        (9, 0, 1.0),
        (10, 0, 2.2 - math.exp(10 / (20 * 25))),  # d_s = 25 at step 0
        (100, 15, 2.2 - math.exp(100 / (20 * 100))),  # d_s = 25 + 5 * 15 = 100
        (500, 0, 0.1),  # t / (20 * 25) = 1: 2.2 - e < tau_min
        (1000, 7995, 2.2 - math.exp(1000 / (20 * 4e4))),  # d_s = 25 + 5 * 7995 = 4e4 = d_max
    ],
)
def test_ead_code_form(t, step, expected):
    assert ead_temperature(t, step, EADConfig(form="code")) == pytest.approx(expected)


def test_ead_controller_anneals_along_the_completion():
    controller = EADController(EADConfig(d0=20.0), ENV)
    controller.start(2, training_step=0)
    temps = [controller.choose(context(torch.zeros(2, 5), position=t))[0][0].item() for t in range(60)]
    assert temps[:10] == [1.0] * 10
    assert all(a >= b for a, b in zip(temps[10:], temps[11:]))  # non-increasing after the warm-up
    assert temps[-1] == pytest.approx(0.1)


# --------------------------------------------------------------------------- entropy (EDT)


def test_edt_rule_value_bounds_and_monotonicity():
    config = EntropyConfig()  # tau0 = 1, theta = 0.8, N = 0.8, clamp [0.3, 1.5]
    assert edt_temperature(torch.tensor([2.0]), config).item() == pytest.approx(0.8 ** (0.8 / 2.0))
    entropy = torch.linspace(1e-4, 12.0, 500)
    tau = edt_temperature(entropy, config)
    assert (tau >= config.tau_min).all() and (tau <= config.tau_max).all()
    assert (tau[1:] >= tau[:-1]).all(), "more uncertainty never cools"
    assert tau[0].item() == pytest.approx(config.tau_min)  # near-certain steps hit the floor
    hot = edt_temperature(entropy, EntropyConfig(base=3.0))
    assert hot.max().item() == pytest.approx(config.tau_max)  # and the ceiling binds when tau0 is large
    assert (edt_temperature(entropy, EntropyConfig(theta=1.6)) <= tau).all(), "larger theta is cooler"


def test_entropy_controller_reads_the_step_logits():
    logits = torch.stack([torch.zeros(100), torch.cat([torch.tensor([30.0]), torch.zeros(99)])])
    tau = EntropyController(EntropyConfig(), ENV).choose(context(logits))[0]
    assert tau[0].item() == pytest.approx(0.8 ** (0.8 / math.log(100)), rel=1e-5)  # uniform: H = ln V
    assert tau[1].item() == pytest.approx(0.3)  # peaked: clamped to tau_min


# --------------------------------------------------------------------------- end to end

CLI_CONTROLLERS = ["fixed", "linear", "ead", "entropy", "tampo"]
SMALL_RUN = [
    "--steps", "3", "--set", "model.path=builtin:random", "--set", "task.eval_size=50",
    "--set", "train.eval_avg_problems=10", "--set", "train.eval_avg_k=2", "--set", "rollout.prompts_per_step=2",
    "--set", "rollout.group_size=4", "--set", "rollout.max_new_tokens=16", "--set", "model.hidden_size=32",
    "--set", "model.num_layers=1", "--set", "model.num_heads=2", "--set", "train.threads=1",
    "--set", "log.tensorboard=false", "--set", "log.samples_per_step=8",
]


@pytest.fixture(scope="module")
def cli_runs(tmp_path_factory):
    """One 3-step `thermorl train --controller NAME` per controller, run concurrently."""
    root = tmp_path_factory.mktemp("controllers")
    command = [sys.executable, "-m", "thermorl.cli", "train", *SMALL_RUN]
    processes = {
        name: subprocess.Popen(
            [*command, "--controller", name, "--out", str(root / name)],
            cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        for name in CLI_CONTROLLERS
    }
    results = {}
    for name, process in processes.items():
        _, stderr = process.communicate(timeout=1800)  # a guard for a hung run, not an expected duration
        results[name] = (process.returncode, stderr, root / name)
    return results


def read_jsonl(path):
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


@pytest.mark.parametrize("name", CLI_CONTROLLERS)
def test_controller_trains_end_to_end_through_the_cli(cli_runs, name):
    returncode, stderr, run = cli_runs[name]
    assert returncode == 0, stderr
    assert json.loads((run / "summary.json").read_text())["controller"] == name
    steps = [row for row in read_jsonl(run / "metrics.jsonl") if "temperature_mean" in row]
    assert [row["step"] for row in steps] == [1, 2, 3]
    assert (run / "temperature.png").stat().st_size > 0


def test_cli_runs_sample_at_the_temperatures_each_rule_prescribes(cli_runs):
    def metric(name, key):
        return [row[key] for row in read_jsonl(cli_runs[name][2] / "metrics.jsonl") if key in row]

    assert metric("fixed", "temperature_mean") == pytest.approx([1.0] * 3)
    assert metric("linear", "temperature_mean") == pytest.approx([0.9, 1.2, 1.5])
    for sample in read_jsonl(cli_runs["ead"][2] / "samples.jsonl"):
        expected = [ead_temperature(t, sample["step"], EADConfig()) for t in range(len(sample["temperatures"]))]
        assert sample["temperatures"] == pytest.approx(expected, abs=1e-4)
    for sample in read_jsonl(cli_runs["entropy"][2] / "samples.jsonl"):
        assert all(0.3 - 1e-4 <= t <= 1.5 + 1e-4 for t in sample["temperatures"])


def test_cli_tampo_run_logs_its_distribution_and_draws_heatmap(cli_runs):
    run = cli_runs["tampo"][2]
    rows = [row for row in read_jsonl(run / "metrics.jsonl") if "tampo_distribution" in row]
    assert len(rows) == 3
    for row in rows:
        assert len(row["tampo_distribution"]) == 10 and sum(row["tampo_distribution"]) == pytest.approx(1.0)
        assert row["temperature_mean"] == pytest.approx(row["tampo_temperature"], abs=1e-5)  # one T_s per batch
    assert (run / "tampo_heatmap.png").stat().st_size > 0
    assert (run / "tampo_tstar.png").stat().st_size > 0
    for row in rows:  # T* is logged only for trajectories with a non-zero advantage
        if row["reward_std"] == 0:
            assert "tampo_tstar_positive" not in row and "tampo_tstar_negative" not in row
    checkpoint = sorted((run / "checkpoints").iterdir())[-1]
    assert json.loads((checkpoint / "state.json").read_text())["controller"]["candidates"] == pytest.approx(
        [0.6, 0.7, 0.8, 0.9, 1.0, 1.1, 1.2, 1.3, 1.4, 1.5]
    )
