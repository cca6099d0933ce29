"""One writer per run directory: a second `thermorl train --resume RUN` while one trains exits 2 with
one line naming the holder; a lock left by a process killed with SIGKILL does not block a later one."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import REPO, run_cli

from thermorl.runtime.runlock import RunLock, RunLockedError

USER_REWARDS = Path(__file__).resolve().parent / "user_rewards.py"
TINY = [
    "--set", "model.path=builtin:random", "--set", "model.hidden_size=32", "--set", "model.num_layers=1",
    "--set", "model.num_heads=2", "--set", "task.eval_size=8", "--set", "train.eval_avg_problems=2",
    "--set", "train.eval_avg_k=2", "--set", "train.eval_every=100", "--set", "train.checkpoint_every=1",
    "--set", "rollout.prompts_per_step=2", "--set", "rollout.group_size=2", "--set", "rollout.max_new_tokens=6",
    "--set", "log.progress=false", "--set", "log.plot=false", "--set", "log.tensorboard=false",
    "--set", "task.reward_timeout_s=600", "--set", f"task.reward={USER_REWARDS}:held_at_checkpoint",
    "--set", "task.reward_workers=0",  # held in the training process itself, whose pid the reward writes
]


def _holder(directory: Path) -> subprocess.Popen:
    """Another process that takes the lock of ``directory`` and keeps it until killed."""
    code = (
        "import sys, time; from thermorl.runtime.runlock import RunLock; RunLock(sys.argv[1]).acquire(); "
        "print('locked', flush=True); time.sleep(600)"
    )
    process = subprocess.Popen([sys.executable, "-c", code, str(directory)], stdout=subprocess.PIPE, text=True)
    assert process.stdout.readline().strip() == "locked"
    return process


def test_a_held_lock_names_its_holder_and_a_killed_holder_releases_it(tmp_path):
    holder = _holder(tmp_path)
    try:
        with pytest.raises(RunLockedError, match=f"being trained by pid {holder.pid} on "):
            RunLock(tmp_path).acquire()
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    assert json.loads((tmp_path / ".lock").read_text())["pid"] == holder.pid  # the stale file is still there
    with RunLock(tmp_path), pytest.raises(RunLockedError, match="by this process already"):
        RunLock(tmp_path).acquire()
    RunLock(tmp_path).acquire().release()  # released on exit from the block


def test_a_new_run_into_a_locked_directory_is_refused_and_not_removed(tmp_path):
    (tmp_path / "run").mkdir()
    holder = _holder(tmp_path / "run")
    try:
        result = run_cli("train", "--out", str(tmp_path / "run"), "--steps", "1", *TINY)
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [result.stderr.strip()]
    assert f"pid {holder.pid}" in result.stderr
    assert (tmp_path / "run" / ".lock").is_file()  # the directory was left to its holder


def _train(*args: str, env: dict | None = None) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "thermorl.cli", "train", *args], cwd=REPO, text=True,
        env={**os.environ, **(env or {})}, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )


def _wait_for(path: Path, process: subprocess.Popen, timeout: float = 240) -> None:
    deadline = time.time() + timeout
    while not path.exists():
        assert process.poll() is None, f"run ended early: {process.stderr.read()[-2000:]}"
        assert time.time() < deadline, f"{path} did not appear"
        time.sleep(0.01)


def test_two_concurrent_resumes_one_trains_and_after_kill_9_of_the_holder_resume_works(tmp_path):
    run = tmp_path / "run"
    first = run_cli("train", "--out", str(run), "--steps", "1", *TINY)
    assert first.returncode == 0, first.stderr[-2000:]
    # A resumes and is held inside step 2's reward (checkpoint 1 exists) while B tries to resume
    markers = tmp_path / "a"
    markers.mkdir()
    hold = {"THERMORL_TEST_HOLD_AT": str(run / "checkpoints" / "step-000001"), "THERMORL_TEST_MARKERS": str(markers)}
    a = _train("--resume", str(run), "--steps", "3", env=hold)
    try:
        _wait_for(markers / "held-0", a)
        b = run_cli("train", "--resume", str(run), "--steps", "3")
        assert b.returncode == 2
        assert b.stderr.strip().splitlines() == [b.stderr.strip()]  # one line
        assert f"being trained by pid {a.pid} " in b.stderr
        (markers / "release").touch()
        assert a.wait(timeout=240) == 0, a.stderr.read()[-2000:]
    finally:
        a.kill()
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [row["step"] for row in rows] == [0, 1, 2, 3]  # written by A alone
    # C resumes and is killed with SIGKILL in step 4; D resumes past the lock C left behind
    markers = tmp_path / "c"
    markers.mkdir()
    hold = {"THERMORL_TEST_HOLD_AT": str(run / "checkpoints" / "step-000003"), "THERMORL_TEST_MARKERS": str(markers)}
    c = _train("--resume", str(run), "--steps", "4", env=hold)
    try:
        _wait_for(markers / "held-0", c)
    finally:
        c.send_signal(signal.SIGKILL)
        c.wait()
    assert json.loads((run / ".lock").read_text())["pid"] == c.pid
    d = run_cli("train", "--resume", str(run), "--steps", "4")
    assert d.returncode == 0, d.stderr[-2000:]
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [row["step"] for row in rows] == [0, 1, 2, 3, 4]
