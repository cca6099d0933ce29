"""Data-parallel training: two gloo processes on the same global batch reproduce one process."""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import dp_worker
import pytest
import torch

WORKER = Path(dp_worker.__file__)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    out = tmp_path_factory.mktemp("dp")
    threads = torch.get_num_threads()
    try:
        dp_worker.run(out)  # one process, in this interpreter
    finally:
        torch.set_num_threads(threads)
    result = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", str(WORKER), str(out)],
        check=False, capture_output=True, text=True, timeout=300,
        env={**os.environ, "ACCELERATE_USE_CPU": "true", "OMP_NUM_THREADS": "1"},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return out


def test_two_processes_give_the_one_process_losses_metrics_and_weights(runs):
    single = json.loads((runs / "metrics-1.json").read_text())
    double = json.loads((runs / "metrics-2.json").read_text())
    assert double["world_size"] == 2
    for one, two in zip(single["steps"], double["steps"], strict=True):
        assert one.keys() == two.keys()
        assert one["loss"] != 0.0 and one["grad_norm"] > 0.0  # a real update, not a no-op
        for key in one:
            assert two[key] == pytest.approx(one[key], rel=1e-4, abs=1e-6), key
    weights_one = torch.load(runs / "weights-1.pt", weights_only=True)
    weights_two = torch.load(runs / "weights-2.pt", weights_only=True)
    assert weights_one.keys() == weights_two.keys()
    for name, tensor in weights_one.items():
        assert torch.allclose(tensor, weights_two[name], atol=1e-4), name


def test_train_under_two_processes_writes_one_run_directory(runs):
    run = runs / "run-2"
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [row["step"] for row in rows] == [0, 1, 2]
    assert all(math.isfinite(rows[step]["loss"]) for step in (1, 2))
    assert [p.name for p in (run / "checkpoints").iterdir()] == ["step-000002"]
    assert (run / "summary.json").is_file()
    single = [json.loads(line) for line in (runs / "run-1" / "metrics.jsonl").read_text().splitlines()]
    assert rows[0]["eval_accuracy"] == pytest.approx(single[0]["eval_accuracy"])  # greedy, sharded over processes
