"""The headroom map: per-class temperatures from logged samples, best by_class vs best fixed, the seeds a
resolution needs, named document blocks, and the real `thermorl compare` with a by_class arm."""

import json

import pytest
from conftest import run_cli

from thermorl.study import stats
from thermorl.study.headroom import class_temperatures, headroom, main
from thermorl.tasks.base import TokenClassRule
from thermorl.tasks.countdown import COUNTDOWN_CLASSES, countdown_next_class

RULE = TokenClassRule(COUNTDOWN_CLASSES, countdown_next_class)


def test_class_temperatures_of_logged_samples():
    row = {"step": 100, "completion": "7+3=10", "classes": ["digit"] * 6 + ["end"],
           "temperatures": [1.0, 1.0, 1.0, 1.0, 0.5, 0.5, 0.2]}  # 7 + 3 = | 1 0 <end>
    old = {**row, "step": 10, "temperatures": [9.0] * 7}  # outside the last 50 steps
    odd = {**row, "temperatures": [9.0] * 3}  # another tokenizer: lengths disagree, left out
    assert class_temperatures([row, old, odd], RULE) == pytest.approx({"choice": 1.0, "result": 0.4})


def _arm(values):
    return {"seeds": list(range(len(values))), "final_eval_accuracy": {"mean": sum(values) / len(values),
                                                                      "values": values}}


def test_headroom_pairs_the_best_by_class_with_the_best_fixed():
    table = {"fixed:0.4": _arm([0.20, 0.22, 0.24]), "fixed:0.6": _arm([0.26, 0.28, 0.27]),
             "by_class[a]": _arm([0.30, 0.31, 0.33]), "by_class[b]": _arm([0.10, 0.12, 0.11]), "tampo": _arm([0.9] * 3)}
    h = headroom(table, list(table), 3)
    assert (h["best_fixed"], h["best_by_class"], h["worst_fixed"]) == ("fixed:0.6", "by_class[a]", "fixed:0.4")
    assert h["fixed_spread"] == pytest.approx(0.27 - 0.22)
    diffs = [0.04, 0.03, 0.06]
    assert h["paired"]["mean_difference"] == pytest.approx(sum(diffs) / 3)
    assert h["diffs_sd"] == pytest.approx(stats.sd(diffs))
    assert headroom({"fixed:0.4": table["fixed:0.4"]}, ["fixed:0.4"], 3) is None


def test_seeds_for_resolution_is_the_first_n_whose_mde_reaches_the_target():
    n = stats.seeds_for_resolution(0.05, 0.03)
    assert stats.min_detectable_difference(0.05, n) <= 0.03 < stats.min_detectable_difference(0.05, n - 1)
    assert 20 < n < 30  # (1.96 + 0.84)^2 (0.05 / 0.03)^2 = 21.8, plus the t-distribution's small-n excess


def test_compare_with_a_by_class_arm_fills_a_named_block_and_the_headroom_map(tmp_path):
    out = tmp_path / "study"
    args = ["compare", "--controllers", "fixed:1.0,by_class[temperatures.result=0.5]", "--seeds", "2", "--steps", "2",
            "--out", str(out), "--set", "task.eval_size=40", "--set", "train.eval_avg_problems=8",
            "--set", "rollout.prompts_per_step=4"]
    doc = tmp_path / "RESULTS.md"
    doc.write_text("<!-- compare:begin -->\nkept\n<!-- compare:end -->\n"
                   "<!-- compare:testbed:begin -->\nold\n<!-- compare:testbed:end -->\n"
                   "<!-- compare:headroom:begin -->\nold map\n<!-- compare:headroom:end -->\n")
    waiting = run_cli(*args, "--aggregate-only")  # nothing has run yet: nothing to tabulate, no run started
    assert waiting.returncode == 2 and "no finished run" in waiting.stderr and not (out / "runs").exists()
    first = run_cli(*args, "--doc", str(doc), "--doc-block", "testbed")
    assert first.returncode == 0, first.stderr[-2000:]
    result = json.loads((out / "compare.json").read_text())
    row = result["arms"]["by_class[temperatures.result=0.5]"]
    assert row["class_temperatures_last"] == pytest.approx({"choice": 1.0, "result": 0.5})
    assert result["headroom"]["best_fixed"] == "fixed:1.0" and result["headroom"]["paired"]["n"] == 2
    text = doc.read_text()
    assert "kept" in text and "old\n" not in text and "choice 1.00, result 0.50" in text and "Headroom:" in text
    assert (tmp_path / "images" / "compare_testbed_curves.png").stat().st_size > 0
    assert main([f"countdown={out}", "--doc", str(doc)]) == 0
    assert "old map" not in doc.read_text() and "| countdown | 2 | 40 |" in doc.read_text()
