"""Data-parallel and FSDP training: two gloo processes on the same global batch reproduce one process (their
rollout-mismatch metrics included; FSDP with micro-batches of the minibatch);
a 2-process FSDP run stopped (SIGTERM to one process, kill -9 of all) and resumed equals an
uninterrupted one; a NaN in one process skips the step in both; TAMPO updates on the global batch.

CPU command (what CI runs): ``torchrun --standalone --nproc_per_node 2 -m thermorl.cli train
--set distributed.strategy=fsdp ...`` with ``ACCELERATE_USE_CPU=true`` (gloo).

Every comparison is between runs made by the same test on the same machine. One process against two (or
DDP against FSDP) reorders the sums of the all-reduce, so those floats are compared at rel 1e-4 / abs 1e-6:
reordered sums move the default job's metrics by at most 1.5e-5 relative (benchmarks/code_path_drift.py),
while a wrong gradient average (a factor of 2) or a process training on another process's rows moves them
by far more. The resume comparison is exact: the same processes and code paths, only state restored.
"""

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import dp_worker
import pytest
import torch
from conftest import REPO, run_cli

from thermorl.runtime.checkpoint import verify_checkpoint

WORKER = Path(dp_worker.__file__)
TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
ENV = {**os.environ, "ACCELERATE_USE_CPU": "true", "OMP_NUM_THREADS": "1"}


def _torchrun(*args: str) -> subprocess.CompletedProcess:
    result = subprocess.run([*TORCHRUN, *args], check=False, capture_output=True, text=True, timeout=400, env=ENV)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    out = tmp_path_factory.mktemp("dp")
    threads = torch.get_num_threads()
    try:
        dp_worker.run(out)  # one process, in this interpreter
    finally:
        torch.set_num_threads(threads)
    _torchrun(str(WORKER), str(out), "ddp")
    return out


@pytest.fixture(scope="module")
def fsdp_runs(runs):
    _torchrun(str(WORKER), str(runs), "fsdp")
    return runs


def _rows(run: Path) -> list[dict]:
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in row.items() if not k.startswith("step_time")} for row in rows]


@pytest.mark.parametrize("tag", ["2", "fsdp"])
def test_two_processes_give_the_one_process_losses_metrics_and_weights(fsdp_runs, tag):
    single = json.loads((fsdp_runs / "metrics-1.json").read_text())
    double = json.loads((fsdp_runs / f"metrics-{tag}.json").read_text())
    assert double["world_size"] == 2
    for one, two in zip(single["steps"], double["steps"], strict=True):
        assert one.keys() == two.keys()
        assert one["loss"] != 0.0 and one["grad_norm"] > 0.0  # a real update, not a no-op
        # the mismatch metrics are the global batch's (a process's own rows give other ones)
        assert one["rollout_logprob_diff_max"] > 0.3 and 0.0 < one["rollout_token_capped_fraction"] < 1.0
        assert one["rollout_head_logprob_diff_mean"] > 0.1
        for key in one:
            assert two[key] == pytest.approx(one[key], rel=1e-4, abs=1e-6), key
    weights_one = torch.load(fsdp_runs / "weights-1.pt", weights_only=True)
    weights_two = torch.load(fsdp_runs / f"weights-{tag}.pt", weights_only=True)
    assert weights_one.keys() == weights_two.keys()
    for name, tensor in weights_one.items():
        assert torch.allclose(tensor, weights_two[name], atol=1e-4), name


@pytest.mark.parametrize("tag", ["2", "fsdp"])
def test_tampo_meta_policy_is_updated_on_the_global_batch(fsdp_runs, tag):
    single = json.loads((fsdp_runs / "metrics-1.json").read_text())["tampo_pi"]
    double = json.loads((fsdp_runs / f"metrics-{tag}.json").read_text())["tampo_pi"]
    assert max(single) > min(single)  # the update moved pi away from uniform
    assert double == pytest.approx(single, abs=1e-6)


def test_train_under_two_processes_writes_one_run_directory(runs):
    run = runs / "run-2"
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [row["step"] for row in rows] == [0, 1, 2]
    assert all(math.isfinite(rows[step]["loss"]) for step in (1, 2))
    assert [p.name for p in (run / "checkpoints").iterdir()] == ["step-000002"]
    assert (run / "summary.json").is_file()
    single = [json.loads(line) for line in (runs / "run-1" / "metrics.jsonl").read_text().splitlines()]
    assert rows[0]["eval_accuracy"] == pytest.approx(single[0]["eval_accuracy"])  # greedy, sharded over processes
    state = json.loads((run / "checkpoints" / "step-000002" / "state.json").read_text())
    assert state["world_size"] == 2 and set(state["ranks"]) == {"1"}  # process 1's random streams are saved


def test_data_parallel_resume_continues_every_processs_sampling_stream(runs):
    reference, resumed = _rows(runs / "ddp-reference"), _rows(runs / "ddp-resumed")
    assert [row["step"] for row in resumed] == [0, 1, 2, 3]
    assert resumed == reference  # before, --resume reseeded process 1's sampler and step 3 differed


def test_fsdp_train_equals_data_parallel_and_writes_sharded_checkpoints(fsdp_runs):
    ddp, fsdp = _rows(fsdp_runs / "run-2"), _rows(fsdp_runs / "run-fsdp")
    assert [row["step"] for row in fsdp] == [0, 1, 2]
    for a, b in zip(ddp, fsdp, strict=True):
        assert a.keys() == b.keys()
        for key, value in a.items():
            assert b[key] == pytest.approx(value, rel=1e-4, abs=1e-6), key
    checkpoint = fsdp_runs / "run-fsdp" / "checkpoints" / "step-000002"
    assert verify_checkpoint(checkpoint)
    shards = sorted(p.name for p in (checkpoint / "sharded").iterdir())
    assert len(shards) == 2 and all(name.endswith(".safetensors") for name in shards)  # one per process, no pickle
    assert (checkpoint / "model" / "config.json").is_file()  # the last checkpoint is consolidated too


def test_nan_in_one_process_skips_the_step_in_both(fsdp_runs):
    assert "gradient_checkpointing: true" in (fsdp_runs / "fsdp-nan" / "config.yaml").read_text()
    rows = _rows(fsdp_runs / "fsdp-nan")  # process 0's log; only process 1 sampled NaN temperatures
    assert rows[2]["skipped"] == 1 and "(in process 1)" in rows[2]["skip_reason"]
    assert "skipped" not in rows[1] and "skipped" not in rows[3] and rows[3]["skipped_steps"] == 1
    assert math.isfinite(rows[3]["loss"])
    assert verify_checkpoint(fsdp_runs / "fsdp-nan" / "checkpoints" / "step-000003")


def _thermorl_fsdp(*args: str, env: dict | None = None) -> subprocess.Popen:
    return subprocess.Popen(
        [*TORCHRUN, "-m", "thermorl.cli", "train", *args], cwd=REPO, text=True, env={**ENV, **(env or {})},
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True,  # killpg reaches the launcher
    )


@pytest.fixture
def held_pids():
    """Pid files of held workers; whatever a failed test leaves running is killed."""
    files: list[Path] = []
    yield files
    for path in files:
        try:
            pid = int(path.read_text())
            if b"thermorl.cli" in Path(f"/proc/{pid}/cmdline").read_bytes():  # still that worker, not a reused pid
                os.kill(pid, signal.SIGKILL)
        except (OSError, ValueError):
            pass


def _wait_for(paths: list[Path], process: subprocess.Popen, timeout: float = 300) -> None:
    deadline = time.time() + timeout
    while not all(p.exists() for p in paths):
        assert process.poll() is None, f"run ended early: {process.stderr.read()[-3000:]}"
        assert time.time() < deadline, f"{paths} did not appear"
        time.sleep(0.01)


@pytest.mark.slow
def test_fsdp_run_stopped_by_sigterm_to_one_process_then_killed_resumes_to_the_same_metrics(
    fsdp_runs, tmp_path, held_pids
):
    run = tmp_path / "run"
    sets = [arg for item in dp_worker.RESUME_OVERRIDES for arg in ("--set", item)]
    # 1. held in step 3's reward (after checkpoint 2) in both processes; SIGTERM reaches process 1 only
    markers = tmp_path / "first"
    markers.mkdir()
    hold = {"THERMORL_TEST_HOLD_AT": str(run / "checkpoints" / "step-000002"), "THERMORL_TEST_MARKERS": str(markers)}
    first = _thermorl_fsdp("--out", str(run), *sets, env=hold)
    held_pids += [markers / "held-0", markers / "held-1"]
    _wait_for([markers / "held-0", markers / "held-1"], first)
    os.kill(int((markers / "held-1").read_text()), signal.SIGTERM)
    (markers / "release").touch()
    stderr = first.communicate(timeout=300)[1]
    assert "interrupted after step 3" in stderr, stderr[-3000:]  # both stopped at the same step, checkpointed
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["step-000002", "step-000003"]
    # 2. resumed, held in step 5 (after checkpoint 4), then every process killed with SIGKILL
    markers = tmp_path / "second"
    markers.mkdir()
    hold = {"THERMORL_TEST_HOLD_AT": str(run / "checkpoints" / "step-000004"), "THERMORL_TEST_MARKERS": str(markers)}
    second = _thermorl_fsdp("--resume", str(run), env=hold)
    held_pids += [markers / "held-0", markers / "held-1"]
    _wait_for([markers / "held-0", markers / "held-1"], second)
    for rank in (0, 1):  # the workers (each in its own session under torchrun), then the launcher
        os.kill(int((markers / f"held-{rank}").read_text()), signal.SIGKILL)
    os.killpg(second.pid, signal.SIGKILL)
    second.wait()
    # 3. resumed to the end: the kill left the run lock behind, which must not block this
    third = _thermorl_fsdp("--resume", str(run))
    assert third.wait(timeout=300) == 0, third.stderr.read()[-3000:]
    reference = _rows(fsdp_runs / "fsdp-reference")
    assert [row["step"] for row in reference] == list(range(dp_worker.RESUME_STEPS + 1))
    assert _rows(run) == reference
    assert verify_checkpoint(run / "checkpoints" / f"step-{dp_worker.RESUME_STEPS:06d}")
    # a sharded-only checkpoint is consolidated on demand for eval
    result = run_cli("eval", "--checkpoint", str(run / "checkpoints" / "step-000004"), "--k", "1", "--problems", "2")
    assert result.returncode == 0, result.stderr[-2000:]
    assert json.loads(result.stdout)["problems"] == 2 and (run / "checkpoints" / "step-000004" / "model").is_dir()


def test_an_accelerate_fsdp_config_is_read_through_accelerates_plugin(monkeypatch):
    from thermorl.errors import ConfigError
    from thermorl.runtime.fsdp import FsdpSettings, accelerate_fsdp_settings

    assert accelerate_fsdp_settings(FsdpSettings()) is None  # no accelerate FSDP config: thermorl's own settings
    for name, value in [("ACCELERATE_USE_FSDP", "true"), ("FSDP_VERSION", "2"), ("FSDP_RESHARD_AFTER_FORWARD", "false"),
                        ("FSDP_ACTIVATION_CHECKPOINTING", "true"), ("ACCELERATE_MIXED_PRECISION", "bf16")]:
        monkeypatch.setenv(name, value)  # what `accelerate launch --config_file` sets from the config's fsdp_config
    assert accelerate_fsdp_settings(FsdpSettings()) == FsdpSettings(False, "bf16", True)
    monkeypatch.setenv("FSDP_VERSION", "1")
    with pytest.raises(ConfigError, match="fsdp_version: 2"):
        accelerate_fsdp_settings(FsdpSettings())


def test_deepspeed_is_refused_in_one_line_that_says_what_to_use(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "thermorl.cli", "train", "--out", str(tmp_path / "run"), "--steps", "1",
         "--set", "model.path=builtin:random"],
        check=False, capture_output=True, text=True, timeout=300, cwd=REPO,
        env={**os.environ, "ACCELERATE_USE_DEEPSPEED": "true"},
    )
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0
    assert "DeepSpeed ZeRO is not supported" in result.stderr and "distributed_type: FSDP" in result.stderr
    assert not (tmp_path / "run").exists()
