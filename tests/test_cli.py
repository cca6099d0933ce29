"""The real `thermorl` command in a subprocess."""

import json

import pytest
from conftest import run_cli


@pytest.mark.parametrize("command", ["train", "pretrain", "eval", "config", "compare"])
def test_help(command):
    result = run_cli(command, "--help")
    assert result.returncode == 0
    assert "Usage" in result.stdout


@pytest.mark.parametrize(
    "args, message",
    [
        (["--set", "rollout.group_size=1"], "rollout.group_size must be >= 2"),
        (["--set", "nonsense.key=1"], "unknown config key nonsense"),
        (["--set", "train.steps=abc"], "train.steps must be an integer"),
        (["--config", "/nonexistent/c.yaml"], "config file not found"),
        (["--set", "model.path=/nonexistent/model"], "is not a directory"),
        (["--controller", "warm"], "temperature.controller must be one of"),
    ],
)
def test_user_errors_exit_2_with_one_line(tmp_path, args, message):
    out = tmp_path / "run"
    result = run_cli("train", "--out", str(out), *args)
    assert result.returncode == 2, result.stderr
    assert message in result.stderr
    assert "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert not out.exists(), "a failed start must not leave a run directory"


def test_refuses_non_empty_output_dir(tmp_path):
    (tmp_path / "keep.txt").write_text("precious")
    result = run_cli("train", "--out", str(tmp_path), "--set", "model.path=builtin:random")
    assert result.returncode == 2
    assert "not empty" in result.stderr
    assert (tmp_path / "keep.txt").read_text() == "precious"


def test_short_train_writes_run_directory_and_eval_reads_it(tmp_path):
    out = tmp_path / "run"
    result = run_cli(
        "train", "--out", str(out), "--steps", "3", "--seed", "1",
        "--set", "model.path=builtin:random", "--set", "task.eval_size=40",
        "--set", "train.eval_avg_problems=8", "--set", "train.eval_avg_k=2", "--set", "train.eval_every=2",
        "--set", "log.progress=false", "--set", "algorithm.lr_schedule=cosine", "--set", "algorithm.warmup_steps=2",
    )
    assert result.returncode == 0, result.stderr
    for name in ["config.yaml", "metrics.jsonl", "summary.json", "curves.png", "samples.jsonl"]:
        assert (out / name).is_file(), name
    assert any((out / "tensorboard").iterdir())
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [0, 1, 2, 3]
    for key in ["reward_mean", "loss", "temperature_mean", "entropy_mean", "step_time_s"]:
        assert key in rows[1]
    for row in rows[1:]:  # the step's time split into its parts, which never add up to more than the step
        parts = [row["step_time_rollout_s"], row["step_time_update_s"], row["step_time_sync_s"]]
        assert all(part >= 0 for part in parts) and row["step_time_update_s"] > 0
        assert sum(parts) <= row["step_time_s"]
    # the schedule reaches the optimizer: half way up the 2-step warm-up, then cosine over the 3 steps
    assert [r["lr"] for r in rows[1:]] == pytest.approx([3e-5 * 0.5, 3e-5 * 0.75, 3e-5 * 0.25])
    assert "eval_accuracy" in rows[2] and "eval_avg_at_k" in rows[2] and "eval_accuracy" not in rows[1]
    summary = json.loads((out / "summary.json").read_text())
    for key in ["initial_eval_accuracy", "final_eval_accuracy", "steps", "wall_time_s"]:
        assert key in summary
    checkpoint = out / "checkpoints" / "step-000003"
    assert (checkpoint / "model" / "model.safetensors").is_file()

    result = run_cli("eval", "--checkpoint", str(out), "--k", "2", "--problems", "10")
    assert result.returncode == 0, result.stderr
    scores = json.loads(result.stdout)
    assert scores["problems"] == 10 and 0.0 <= scores["greedy_accuracy"] <= 1.0


def test_pretrain_writes_a_loadable_model_and_uses_train_threads(tmp_path):
    out = tmp_path / "tiny"
    tiny = ["--set", "model.hidden_size=32", "--set", "model.num_layers=1", "--set", "model.num_heads=2",
            "--set", "task.eval_size=20"]
    result = run_cli("pretrain", "--out", str(out), "--steps", "2", "--batch-size", "8", *tiny)
    assert result.returncode == 0, result.stderr
    record = json.loads((out / "pretrain.json").read_text())
    # one thread by default, like `thermorl train`: two threads spin-wait when the cores are shared
    assert record["steps"] == 2 and record["threads"] == 1
    assert 0.0 <= record["eval_accuracy"] <= 1.0 and (out / "model.safetensors").is_file()
    result = run_cli("eval", "--checkpoint", str(out), "--k", "2", "--problems", "5", "--set", "task.eval_size=20")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["problems"] == 5
