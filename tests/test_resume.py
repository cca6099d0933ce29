"""A run killed with SIGKILL, or stopped with Ctrl-C, and resumed equals an uninterrupted run.

Three real `thermorl train` processes start together: a reference, one killed with SIGKILL
after its step-4 checkpoint, one sent SIGINT after its step-2 checkpoint. Both stopped runs hold
at that point, inside their reward function (``tests/user_rewards.py:held_at_checkpoint``), until
the test has signalled them, so neither can finish first on a slow machine or run past the point
on a fast one. The two stopped runs are resumed with `thermorl train --resume RUN` (the killed one
after its newest checkpoint is corrupted, so resuming must skip it) and their metrics (timings
aside), samples and final weights, optimizer and RNG tensors must equal the reference's.

Exact equality is right here, on any CPU: the reference and the resumed runs are made by the same test on
the same machine, so they take the same arithmetic code paths; what it protects against is any state a
resume fails to restore (a random stream, an optimizer moment, the controller), which changes the floats
at the first step after the resume.
"""

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import REPO

STEPS = 12
TINY = [
    "--steps", str(STEPS), "--seed", "3", "--controller", "introspective",
    "--set", "model.path=builtin:random", "--set", "model.hidden_size=32", "--set", "model.num_layers=1",
    "--set", "model.num_heads=2", "--set", "task.eval_size=40", "--set", "train.eval_avg_problems=8",
    "--set", "train.eval_avg_k=2", "--set", "train.eval_every=3", "--set", "train.checkpoint_every=2",
    "--set", "train.keep_checkpoints=2", "--set", "train.threads=1", "--set", "rollout.prompts_per_step=4",
    "--set", "rollout.group_size=4", "--set", "rollout.max_new_tokens=12", "--set", "log.progress=false",
    "--set", "log.plot=false", "--set", "log.tensorboard=false",
    # a dense reward and the joint schedule: the model, the temperature head and both optimizers change every step
    "--set", f"task.reward={Path(__file__).resolve().parent / 'user_rewards.py'}:held_at_checkpoint",
    "--set", "task.reward_timeout_s=600",  # a run held at its gate must not time its reward call out
    "--set", "algorithm.lr=1e-3", "--set", "temperature.introspective.schedule=joint",
]
TIMEOUT = 1800  # seconds a run may take on a heavily loaded machine (a guard, not an expected duration)


def _thermorl(*args: str, gate: tuple[Path, Path] | None = None) -> subprocess.Popen:
    """A `thermorl train` process; with ``gate`` = (checkpoint, markers) its reward calls, once ``checkpoint``
    exists, write ``markers/held-0`` and wait until ``markers/release`` exists."""
    env = {k: v for k, v in os.environ.items() if k not in ("THERMORL_TEST_HOLD_AT", "THERMORL_TEST_MARKERS")}
    if gate is not None:
        gate[1].mkdir(parents=True, exist_ok=True)
        env["THERMORL_TEST_HOLD_AT"], env["THERMORL_TEST_MARKERS"] = str(gate[0]), str(gate[1])
    return subprocess.Popen(
        [sys.executable, "-m", "thermorl.cli", "train", *args], cwd=REPO, text=True, env=env,
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )


def _wait_until_held(markers: Path, process: subprocess.Popen, timeout: float = 1800) -> None:
    """Wait for a gated run to reach its gate (it stays there, so nothing here races the run)."""
    ready = markers / "held-0"
    deadline = time.time() + timeout
    while not ready.exists():
        assert process.poll() is None, f"run ended before its gate: {process.stderr.read()[-2000:]}"
        assert time.time() < deadline, f"{ready} did not appear"
        time.sleep(0.05)


def _rows(path: Path) -> list[dict]:
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    return [{k: v for k, v in row.items() if not k.startswith("step_time")} for row in rows]


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("resume")
    reference = _thermorl("--out", str(root / "reference"), *TINY)
    killed_gate, interrupted_gate = root / "killed-gate", root / "interrupted-gate"
    killed = _thermorl("--out", str(root / "killed"), *TINY,
                       gate=(root / "killed" / "checkpoints" / "step-000004", killed_gate))
    interrupted = _thermorl("--out", str(root / "interrupted"), *TINY,
                            gate=(root / "interrupted" / "checkpoints" / "step-000002", interrupted_gate))

    _wait_until_held(killed_gate, killed)  # in step 5's reward call, after the step-4 checkpoint
    killed.send_signal(signal.SIGKILL)
    killed.wait()
    killed_checkpoints = sorted(p.name for p in (root / "killed" / "checkpoints").iterdir())
    # the newest checkpoint of the killed run is corrupted (a flipped byte) and partial ones are left
    # behind: resuming must skip them and restart from step 2
    weights = root / "killed" / "checkpoints" / "step-000004" / "model" / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF
    weights.write_bytes(bytes(data))
    (root / "killed" / "checkpoints" / f"step-{STEPS:06d}").mkdir(exist_ok=True)
    (root / "killed" / "checkpoints" / ".tmp-step-000006").mkdir(exist_ok=True)
    resumed_killed = _thermorl("--resume", str(root / "killed"))

    _wait_until_held(interrupted_gate, interrupted)  # in step 3's reward call, after the step-2 checkpoint
    interrupted.send_signal(signal.SIGINT)
    (interrupted_gate / "release").touch()  # it finishes step 3 and stops
    interrupted_stderr = interrupted.communicate(timeout=TIMEOUT)[1]
    interrupted_rows = _rows(root / "interrupted" / "metrics.jsonl")
    resumed_interrupted = _thermorl("--resume", str(root / "interrupted"))

    assert reference.wait(timeout=TIMEOUT) == 0, reference.stderr.read()[-2000:]
    killed_stderr = resumed_killed.communicate(timeout=TIMEOUT)[1]
    assert resumed_killed.returncode == 0, killed_stderr[-2000:]
    assert resumed_interrupted.wait(timeout=TIMEOUT) == 0, resumed_interrupted.stderr.read()[-2000:]
    return {
        "root": root, "killed_returncode": killed.returncode, "killed_checkpoints": killed_checkpoints,
        "killed_resume_stderr": killed_stderr, "interrupted_returncode": interrupted.returncode,
        "interrupted_stderr": interrupted_stderr, "interrupted_rows": interrupted_rows,
    }


def test_killed_run_resumes_to_the_same_metrics(runs):
    root = runs["root"]
    assert runs["killed_returncode"] == -signal.SIGKILL
    assert "step-000004" in runs["killed_checkpoints"]
    reference = _rows(root / "reference" / "metrics.jsonl")
    assert [row["step"] for row in reference] == list(range(STEPS + 1))
    assert _rows(root / "killed" / "metrics.jsonl") == reference
    assert (root / "killed" / "samples.jsonl").read_text() == (root / "reference" / "samples.jsonl").read_text()


def test_resume_skips_a_corrupted_checkpoint_with_a_warning(runs):
    stderr = runs["killed_resume_stderr"]
    assert "skipping checkpoint" in stderr and "step-000004" in stderr
    assert "Traceback" not in stderr


def test_resumed_run_ends_with_identical_weights_optimizer_and_rng_state(runs):
    root = runs["root"]
    final = f"step-{STEPS:06d}"
    for run in ("killed", "interrupted"):
        for name in ("model/model.safetensors", "controller.safetensors", "optimizer.safetensors"):
            got = _sha(root / run / "checkpoints" / final / name)
            assert got == _sha(root / "reference" / "checkpoints" / final / name), (run, name)


def test_ctrl_c_saves_a_checkpoint_and_exits_cleanly(runs):
    from thermorl.runtime.checkpoint import list_checkpoints, verify_checkpoint

    assert runs["interrupted_returncode"] == 130
    stderr = runs["interrupted_stderr"]
    assert "Traceback" not in stderr
    assert "interrupted after step" in stderr and "thermorl train --resume" in stderr
    stopped_at = runs["interrupted_rows"][-1]["step"]
    assert stopped_at == 3  # the step it was signalled in (held at its gate)
    assert [row["step"] for row in runs["interrupted_rows"]] == list(range(stopped_at + 1))
    # the resumed run continued from the Ctrl-C checkpoint and matches the reference
    reference = _rows(runs["root"] / "reference" / "metrics.jsonl")
    assert _rows(runs["root"] / "interrupted" / "metrics.jsonl") == reference
    assert all(verify_checkpoint(p) for p in list_checkpoints(runs["root"] / "interrupted"))


def test_only_the_last_checkpoints_are_kept(runs):
    names = sorted(p.name for p in (runs["root"] / "reference" / "checkpoints").iterdir())
    assert names == [f"step-{STEPS - 2:06d}", f"step-{STEPS:06d}"]
    assert not any(name.startswith(".tmp") for name in os.listdir(runs["root"] / "killed" / "checkpoints"))
