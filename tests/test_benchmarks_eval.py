"""`thermorl eval --benchmarks`: avg@k / pass@k with bootstrap intervals, eval.json + eval.md, resumable.

The command runs in-process (typer's CliRunner) to spare a Python start-up per call.
"""

import json

import pytest
from typer.testing import CliRunner

from thermorl.config import ModelConfig, load_config
from thermorl.models import load_policy
from thermorl.study.benchmarks_eval import summarise
from thermorl.study.stats import bootstrap_interval

FAST = ["--k", "2", "--samples", "3", "--problems", "3", "--max-new-tokens", "4"]


def run_cli(*args: str):
    from thermorl.cli import app

    return CliRunner().invoke(app, list(args))


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("model")
    policy = load_policy(ModelConfig(path="builtin:random", hidden_size=32, num_layers=2, num_heads=2, device="cpu"))
    policy.model.save_pretrained(path)
    policy.tokenizer.save_pretrained(path)
    return path


def test_summary_uses_the_unbiased_estimator_and_brackets_the_mean():
    entry = summarise([0, 1, 4, 2], samples=4, k=2, seed=0)
    assert entry["avg_at_k"] == pytest.approx((0 + 0.25 + 1 + 0.5) / 4)
    assert entry["pass_at_k"] == pytest.approx((0 + 0.5 + 1 + 5 / 6) / 4)  # 1 - C(4-c, 2) / C(4, 2)
    for key in ("avg_at_k", "pass_at_k"):
        low, high = entry[f"{key}_ci95"]
        assert low <= entry[key] <= high
    assert bootstrap_interval([1.0] * 10) == [1.0, 1.0]
    assert bootstrap_interval([0.0, 1.0] * 50, seed=1) == bootstrap_interval([0.0, 1.0] * 50, seed=1)


def test_benchmark_eval_writes_json_and_markdown_and_resumes(model_dir, tmp_path):
    out = tmp_path / "eval"
    first = run_cli("eval", "--model", str(model_dir), "--benchmarks", "gsm8k_test,aime24", *FAST, "--out", str(out))
    assert first.exit_code == 0, first.stderr
    assert "avg@2" in first.stdout and "gsm8k_test" in first.stdout
    results = json.loads((out / "eval.json").read_text())
    assert results["settings"]["k"] == 2 and results["settings"]["samples"] == 3
    for name in ("gsm8k_test", "aime24"):
        entry = results["benchmarks"][name]
        assert entry["problems"] == 3 and len(entry["correct"]) == 3
        assert 0.0 <= entry["avg_at_k"] <= entry["pass_at_k"] <= 1.0
    assert "| gsm8k_test | 3 |" in (out / "eval.md").read_text()

    again = run_cli("eval", "--model", str(model_dir), "--benchmarks", "gsm8k_test,amc23", *FAST, "--out", str(out))
    assert again.exit_code == 0, again.stderr
    resumed = json.loads((out / "eval.json").read_text())
    assert resumed["benchmarks"]["gsm8k_test"] == results["benchmarks"]["gsm8k_test"]  # skipped, not recomputed
    assert set(resumed["benchmarks"]) == {"gsm8k_test", "aime24", "amc23"}

    changed = run_cli("eval", "--model", str(model_dir), "--benchmarks", "aime24", "--k", "3", "--out", str(out))
    assert changed.exit_code == 2
    assert "was computed with other settings (k=2 there, 3 now" in changed.stderr
    assert len(changed.stderr.strip().splitlines()) == 1


def test_benchmark_eval_of_a_run_decodes_with_its_learned_controller(tmp_path):
    from thermorl.runtime.trainer import train

    run = tmp_path / "run"
    config = load_config(None, [
        "model.path=builtin:random", "model.hidden_size=32", "model.num_layers=2", "model.num_heads=2",
        "temperature.controller=introspective", "train.steps=1", "task.eval_size=4", "train.eval_avg_problems=2",
        "train.eval_avg_k=2", "rollout.prompts_per_step=2", "rollout.group_size=2", "rollout.max_new_tokens=4",
        "log.plot=false", "log.tensorboard=false", "log.progress=false",
    ])
    train(config, run)
    result = run_cli("eval", "--checkpoint", str(run), "--benchmarks", "amc23", *FAST)
    assert result.exit_code == 0, result.stderr
    results = json.loads((run / "eval" / "eval.json").read_text())
    assert results["settings"]["controller"] == "introspective"
    assert results["benchmarks"]["amc23"]["problems"] == 3


@pytest.mark.parametrize(
    "args, message",
    [
        (["--benchmarks", "nope"], "dataset 'nope' is neither a shipped benchmark"),
        (["--benchmarks", "aime24", "--checkpoint", "x"], "give exactly one of --checkpoint and --model"),
        ([], "--checkpoint is required"),
    ],
)
def test_benchmark_eval_user_errors(model_dir, tmp_path, args, message):
    model = ["--model", str(model_dir)] if "--benchmarks" in args else []
    result = run_cli("eval", *model, *args, "--out", str(tmp_path / "e"))
    assert result.exit_code == 2
    assert message in result.stderr and len(result.stderr.strip().splitlines()) == 1
