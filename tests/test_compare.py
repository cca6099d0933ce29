"""`thermorl compare`: the study plan, its statistics against hand-computed values, and the real command."""

import json
import math

import pytest
from conftest import run_cli

from thermorl.errors import ThermoRLError
from thermorl.study import compare as study
from thermorl.study import stats


def test_parse_arms_reads_fixed_temperatures_and_controller_names():
    arms = study.parse_arms("fixed:0.6, fixed:1.4,tampo")
    assert [a.label for a in arms] == ["fixed:0.6", "fixed:1.4", "tampo"]
    assert arms[0].overrides == ("temperature.controller=fixed", "temperature.fixed.temperature=0.6")
    assert arms[2].overrides == ("temperature.controller=tampo",)
    assert arms[0].slug == "fixed_0.6"


@pytest.mark.parametrize("spec, message", [
    ("fixed:0.6,warm", "unknown controller 'warm'"),
    ("fixed", "write fixed:T"),
    ("fixed:-1", "needs a positive temperature"),
    ("fixed:abc", "needs a positive temperature"),
    ("tampo:3", "only fixed takes a value"),
    ("tampo,tampo", "twice"),
    (" , ", "names no controller"),
])
def test_parse_arms_rejects_bad_specs(spec, message):
    with pytest.raises(ThermoRLError, match=message):
        study.parse_arms(spec)


def test_mean_ci_is_the_t_interval():
    mean, half = stats.mean_ci([1.0, 2.0, 3.0])  # s = 1, t_{0.975, 2} = 4.3027
    assert mean == 2.0
    assert half == pytest.approx(4.302653 / math.sqrt(3), rel=1e-6)
    assert math.isnan(stats.mean_ci([0.5])[1])


def test_paired_test_uses_per_seed_differences():
    a, b = [0.60, 0.62, 0.58, 0.61], [0.55, 0.60, 0.57, 0.57]  # d = 0.05, 0.02, 0.01, 0.04
    result = stats.paired_test(a, b)
    d_mean, d_sd = 0.03, math.sqrt(((0.02) ** 2 + 0.01 ** 2 + 0.02 ** 2 + 0.01 ** 2) / 3)
    assert result["mean_difference"] == pytest.approx(d_mean)
    assert result["t"] == pytest.approx(d_mean / (d_sd / 2))
    assert 0 < result["p_value"] < 0.05  # t = 3.29 on 3 degrees of freedom: p = 0.046
    assert result["p_value"] == pytest.approx(0.0461, abs=5e-4)


def test_paired_gain_is_the_t_interval_of_per_problem_differences():
    before, after = [0, 0, 1, 1, 0], [1, 0, 1, 0, 1]  # d = 1, 0, 0, -1, 1: mean 0.2, s = sqrt(0.7)
    gain = stats.paired_gain(before, after)
    half = 2.776445 * math.sqrt(0.7) / math.sqrt(5)  # t_{0.975, 4}
    assert gain["gain"] == pytest.approx(0.2)
    assert (gain["low"], gain["high"]) == pytest.approx((0.2 - half, 0.2 + half), rel=1e-6)
    assert (gain["n"], gain["improved"], gain["worsened"]) == (5, 2, 1)
    with pytest.raises(ValueError):
        stats.paired_gain([0, 1], [1])


def test_wilson_interval_by_hand():
    z = 1.959964  # 19 of 100: (p + z^2/2n -+ z sqrt(p q / n + z^2 / 4n^2)) / (1 + z^2 / n)
    p, n = 0.19, 100
    centre, spread = p + z * z / (2 * n), z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    low, high = stats.wilson_interval(19, 100)
    assert (low, high) == pytest.approx(((centre - spread) / (1 + z * z / n), (centre + spread) / (1 + z * z / n)), rel=1e-5)


def test_min_detectable_difference_by_hand():
    # (t_{0.975, 4} + t_{0.80, 4}) * s_d / sqrt(5) = (2.7764 + 0.9410) * 0.02 / 2.2361
    assert stats.min_detectable_difference(0.02, 5) == pytest.approx(3.7174 * 0.02 / math.sqrt(5), rel=1e-3)
    assert stats.min_detectable_difference(0.02, 10) < stats.min_detectable_difference(0.02, 5)


def test_binomial_se_and_moving_mean():
    assert stats.binomial_se(0.5, 1000) == pytest.approx(0.0158, abs=1e-4)
    assert stats.moving_mean([1, 2, 3, 4], 2) == [1, 1.5, 2.5, 3.5]


def test_a_run_with_a_checkpoint_resumes_and_one_without_starts_again(tmp_path):
    (arm,) = study.parse_arms("fixed:1.0")
    run = study.plan_runs(tmp_path, [arm], 1)[0]
    run.out.mkdir(parents=True)
    (run.out / "config.yaml").write_text("killed before its first checkpoint\n")
    cmd = run.command(5, None, [])
    assert "--resume" not in cmd and not run.out.exists()
    assert cmd[cmd.index("--steps") + 1] == "5" and "temperature.fixed.temperature=1.0" in cmd
    (run.out / "checkpoints" / "step-00000003").mkdir(parents=True)
    assert run.command(5, None, [])[-2:] == ["--resume", str(run.out)]


def test_compare_command_runs_aggregates_and_resumes(tmp_path):
    out = tmp_path / "study"
    args = ["compare", "--controllers", "fixed:1.0,introspective", "--seeds", "2", "--steps", "2", "--out", str(out),
            "--set", "task.eval_size=40", "--set", "train.eval_avg_problems=8", "--set", "rollout.prompts_per_step=4"]
    first = run_cli(*args)
    assert first.returncode == 0, first.stderr[-2000:]
    result = json.loads((out / "compare.json").read_text())
    assert set(result["arms"]) == {"fixed:1.0", "introspective"}
    for row in result["arms"].values():
        assert row["seeds"] == [0, 1] and row["steps"] == [2]
        assert len(row["final_eval_accuracy"]["values"]) == 2
        assert 0 <= row["final_eval_accuracy"]["mean"] <= 1
    assert result["introspective_vs_best_fixed"]["best_fixed"] == "fixed:1.0"
    assert result["eval_problems"] == 40 and result["missing_runs"] == []
    for name in ("compare.md", "curves.png", "final_accuracy.png", "dynamics.png", "learned_temperatures.png"):
        assert (out / name).stat().st_size > 0
    table = (out / "compare.md").read_text()
    assert ("| arm | LM updates | mean T, zero-var groups (last 50 steps) | T by task class (last 50) | greedy acc | avg@8 at T=1.0 | "
            "pass@8 at T=1.0 | avg@8 own temps | greedy acc - best fixed (paired) | runs |") in table
    assert "| introspective | 2 | " in table and "| fixed:1.0 | 2 | 1.00, " in table and result["k"] == 8
    assert set(result["arms"]["fixed:1.0"]["accuracy_by_step"]) == {"0", "2"}  # JSON keys: the evaluated steps
    assert "final_eval_own_avg_at_k" in result["arms"]["introspective"]
    assert "final_eval_own_avg_at_k" not in result["arms"]["fixed:1.0"]
    assert "vs_best_fixed" in result["arms"]["introspective"] and "vs_best_fixed" not in result["arms"]["fixed:1.0"]

    doc = tmp_path / "RESULTS.md"
    doc.write_text("# Results\nintro\n<!-- compare:begin -->\nold table\n<!-- compare:end -->\noutro\n")
    again = run_cli(*args, "--doc", str(doc))  # every run finished: nothing trains again; the doc is filled
    assert again.returncode == 0 and "4 runs (4 already finished)" in again.stderr
    text = doc.read_text()
    assert "old table" not in text and "| introspective |" in text and text.endswith("<!-- compare:end -->\noutro\n")
    assert (tmp_path / "images" / "compare_curves.png").stat().st_size > 0

    changed = run_cli(*[a if a != "2" or i != args.index("--steps") + 1 else "3" for i, a in enumerate(args)])
    assert changed.returncode == 2 and "holds a study with steps=2, not 3" in changed.stderr


@pytest.mark.parametrize("args, message", [
    (["--controllers", "fixed:1.0,warm"], "unknown controller 'warm'"),
    (["--set", "rollout.group_size=1"], "rollout.group_size must be >= 2"),
    (["--doc", "/nonexistent/RESULTS.md"], "has no <!-- compare:begin -->"),
])
def test_compare_user_errors_exit_2_before_any_run(tmp_path, args, message):
    out = tmp_path / "study"
    result = run_cli("compare", "--out", str(out), *args)
    assert result.returncode == 2 and message in result.stderr
    assert "Traceback" not in result.stderr
    assert not out.exists()
