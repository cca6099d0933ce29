"""Whole runs through the real CLI: TRL's accuracy_reward on the math task, a reward stuck in C code,
a reward that fails only in the end-of-run report, SIGTERM while a reward call is stuck, then --resume."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from thermorl.runtime import checkpoint as ckpt

REPO = Path(__file__).resolve().parent.parent
USER_REWARDS = Path(__file__).resolve().parent / "user_rewards.py"
TINY = [
    "model.path=builtin:random", "model.hidden_size=32", "model.num_layers=1", "model.num_heads=2",
    "task.eval_size=4", "train.eval_avg_problems=2", "train.eval_avg_k=2", "rollout.prompts_per_step=2",
    "rollout.group_size=2", "rollout.max_new_tokens=8", "log.progress=false", "log.tensorboard=false",
]


def _command(out: Path, *overrides: str, steps: int = 2) -> list[str]:
    sets = [arg for item in (*TINY, *overrides) for arg in ("--set", item)]
    return [sys.executable, "-m", "thermorl.cli", "train", "--steps", str(steps), "--out", str(out), *sets]


def _run(command: list[str], env: dict[str, str] | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout, cwd=REPO,
                          env={**os.environ, **(env or {})})


def _rows(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_trl_accuracy_reward_trains_on_the_math_task(tmp_path):
    run = tmp_path / "run"
    result = _run(_command(
        run, "task.name=math", "task.dataset=math500", "task.eval_dataset=math500",
        "task.reward=trl.rewards:accuracy_reward", "task.reward_completions=conversational", "log.plot=false",
    ))
    assert result.returncode == 0, result.stderr[-2000:]
    last = _rows(run)[-1]
    assert last["step"] == 2 and last["reward_errors"] == 0 and last["reward_timeouts"] == 0
    assert last["reward_calls"] > 0 and last["reward_mean"] == 0.0  # a random model writes no right answer


def test_trl_accuracy_reward_needs_a_solution_column_and_says_so(tmp_path):
    result = _run(_command(tmp_path / "run", "task.name=math", "task.dataset=math500", "task.eval_dataset=aime24",
                           "task.reward=trl.rewards:accuracy_reward"))
    assert result.returncode == 2
    assert "accuracy_reward needs the column 'solution', which the held-out problems lack" in result.stderr
    assert not (tmp_path / "run").exists()


def test_a_reward_stuck_in_c_code_is_killed_and_the_run_completes(tmp_path):
    run = tmp_path / "run"
    started = time.monotonic()
    result = _run(_command(run, f"task.reward={USER_REWARDS}:stuck_in_c", "task.reward_timeout_s=2",
                           "log.plot=false"))
    elapsed = time.monotonic() - started
    assert result.returncode == 0, result.stderr[-2000:]
    rows = _rows(run)
    calls = rows[-1]["reward_timeouts"] // 4  # every call of the run timed out: 2 steps of 4 completions ...
    assert rows[-1]["reward_timeouts"] == rows[-1]["reward_calls"] and rows[-1]["reward_errors"] == 0
    assert elapsed < 60 + 6 * (2 + 2), f"{calls} killed calls took {elapsed:.0f} s"  # ... plus 4 evaluation calls
    assert "did not return within 2 s; scored 0 and counted in reward_timeouts" in result.stderr


def test_a_reward_failing_only_in_the_end_of_run_report_goes_through_the_guard(tmp_path):
    run = tmp_path / "run"
    result = _run(_command(run, f"task.reward={USER_REWARDS}:raises_after_training"),
                  env={"THERMORL_TEST_RUN_DIR": str(run)})
    assert result.returncode == 0, result.stderr[-2000:]
    assert _rows(run)[-1]["reward_errors"] == 0  # training and evaluation never saw it raise
    traces = [json.loads(line) for line in (run / "temperature_traces.jsonl").read_text().splitlines()]
    assert traces and all(row["reward"] == 0.0 for row in traces)
    assert "raised RuntimeError: raised after training; scored 0" in result.stderr


@pytest.mark.parametrize("signum", [signal.SIGTERM, pytest.param(signal.SIGINT, marks=pytest.mark.slow)])
def test_a_stop_signal_during_a_stuck_reward_call_stops_at_once_and_resumes(tmp_path, signum):
    run, marker = tmp_path / "run", tmp_path / "stuck"
    command = _command(run, f"task.reward={USER_REWARDS}:stuck_from_step_2", "task.reward_timeout_s=600",
                       "train.checkpoint_every=1", "log.plot=false", steps=3)
    process = subprocess.Popen(command, cwd=REPO, env={**os.environ, "THERMORL_TEST_STUCK": str(marker)},
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines: list[tuple[float, str]] = []
    reader = threading.Thread(target=lambda: lines.extend((time.monotonic(), line) for line in process.stdout))
    reader.start()
    try:
        deadline = time.monotonic() + 240
        while not marker.exists() and process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.2)
        assert marker.exists(), "".join(line for _, line in lines)[-2000:]
        signalled = time.monotonic()
        process.send_signal(signum)
        process.wait(timeout=120)  # the interpreter's own exit (garbage collection) can take a while on a busy machine
        reader.join(timeout=30)
    finally:
        process.kill()
    output = "".join(line for _, line in lines)
    assert process.returncode == 130, output[-2000:]
    stopped = next(t for t, line in lines if line.startswith("interrupted after step 1"))
    assert stopped - signalled < 15, f"the run took {stopped - signalled:.1f} s to stop"  # 5 s grace for the call
    last = ckpt.latest_valid_checkpoint(run)
    assert last is not None and ckpt.checkpoint_step(last) == 1 and ckpt.verify_checkpoint(last)
    resumed = _run([sys.executable, "-m", "thermorl.cli", "train", "--resume", str(run), "--set", "log.plot=false"])
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert [row["step"] for row in _rows(run)] == [0, 1, 2, 3]


def test_two_weighted_reward_functions_train_on_their_weighted_sum(tmp_path):
    run = tmp_path / "run"
    result = _run(_command(
        run, f"task.rewards=[{USER_REWARDS}:digit_fraction, {USER_REWARDS}:length_and_columns]",
        "task.reward_weights=[1, 0.5]", "log.plot=false",
    ))
    assert result.returncode == 0, result.stderr[-2000:]
    steps = [row for row in _rows(run) if "reward_mean" in row]
    assert len(steps) == 2
    for row in steps:
        means = {key: value for key, value in row.items() if key.startswith("rewards/")}
        assert len(means) == 2, sorted(row)
        digits = next(v for k, v in means.items() if "digit_fraction" in k)
        length = next(v for k, v in means.items() if "length_and_columns" in k)
        assert length >= 1  # completion length plus the step: a weight on it shows in the sum
        assert row["reward_mean"] == pytest.approx(digits + 0.5 * length, rel=1e-6)


def _alive(pid: int) -> bool:
    """Whether process ``pid`` exists and is not a zombie (a dead child its new parent has not reaped yet)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state != "Z"


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="workers die with the trainer through Linux's prctl")
def test_a_reward_worker_stuck_in_c_dies_with_a_killed_trainer(tmp_path):
    run, marker = tmp_path / "run", tmp_path / "stuck"
    command = _command(run, f"task.reward={USER_REWARDS}:stuck_from_step_2", "task.reward_timeout_s=600",
                       "log.plot=false", steps=3)
    process = subprocess.Popen(command, cwd=REPO, env={**os.environ, "THERMORL_TEST_STUCK": str(marker)},
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 240
        while not marker.exists() and process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.2)
        assert marker.exists(), "the run never reached the stuck reward call"
        while not marker.read_text() and time.monotonic() < deadline:  # the pid may still be being written
            time.sleep(0.05)
        worker = int(marker.read_text())
        assert worker != process.pid and _alive(worker)
        process.kill()  # SIGKILL: the trainer gets no chance to kill its workers
        process.wait(timeout=60)
        deadline = time.monotonic() + 60  # an upper bound for a busy machine; it is usually immediate
        while _alive(worker) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not _alive(worker), "the reward worker outlived its killed trainer"
    finally:
        process.kill()


def test_trl_accuracy_reward_trains_on_aime24_with_its_answer_column_as_solution(tmp_path):
    """AIME24 ships 'answer' only; task.reward_columns passes it as TRL's 'solution' (issue 23's acceptance)."""
    run = tmp_path / "run"
    result = _run(_command(
        run, "task.name=math", "task.dataset=math500", "task.eval_dataset=aime24",
        "task.reward=trl.rewards:accuracy_reward", "task.reward_completions=conversational",
        "task.reward_columns.solution=answer", "log.plot=false",
    ))
    assert result.returncode == 0, result.stderr[-2000:]
    rows = _rows(run)
    assert [row["step"] for row in rows] == [0, 1, 2]
    assert rows[-1]["reward_errors"] == 0 and rows[-1]["reward_timeouts"] == 0 and rows[-1]["reward_calls"] > 0
    assert rows[-1]["reward_none"] == 0  # every gold answer parsed: each sample got a reward
