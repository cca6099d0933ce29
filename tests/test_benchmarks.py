"""The benchmark suite runs end to end at its smallest size and writes every figure it promises.

Timings are not asserted (they belong to benchmarks/run.py, not to tests): only that each
benchmark produces positive, finite numbers in the results document.
"""

import json
import math
import sys
from pathlib import Path

import pytest
import torch

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"
sys.path.insert(0, str(BENCHMARKS))  # benchmarks/ is a folder of scripts that import each other, not a package

import rollout_vs_generate
import run as bench_run
import tampo_rescoring

SMALLEST = bench_run.Sizes(
    rollout_repeats=1, step_pairs=1, step_warmup=0, head_repeats=1, tampo_repeats=1, memory_tokens=64,
    memory_vocab=1000, naive_candidates=2, shape={"prompts_per_step": 2, "group_size": 2, "max_new_tokens": 6},
)


def _positive_finite(value) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value) and value > 0


def test_run_writes_every_ratio_and_its_goal(tmp_path):
    results = bench_run.run("tiny", "cpu", SMALLEST, log=lambda line: None)
    for row in results["summary"]:
        assert row["verdict"] != "ERROR", f"{row['name']}: {row['reason']}"
    path = tmp_path / "results.json"
    path.write_text(json.dumps(bench_run._finite(results)))
    results = json.loads(path.read_text())

    machine = results["machine"]
    assert machine["torch"] == torch.__version__ and machine["device"] == "cpu" and machine["torch_threads"] >= 1
    assert machine["date"] and machine["cpu_count"] >= 1

    rollout = results["rollout_vs_generate"]
    for key in ("thermorl_tokens_per_s", "generate_tokens_per_s", "thermorl_new_tokens", "generate_new_tokens",
                "ratio", "ratio_wall"):
        assert _positive_finite(rollout[key]), key
    assert rollout["rows"] == 4

    step = results["grpo_vs_trl"]
    try:
        import trl  # noqa: F401
    except ImportError:
        assert "skipped" in step
    else:
        for key in ("thermorl_step_s", "trl_step_s", "ratio", "ratio_wall", "thermorl_completion_length",
                    "trl_completion_length"):
            assert _positive_finite(step[key]), key

    head = results["head_overhead"]
    assert _positive_finite(head["fixed_ms_per_token"]) and _positive_finite(head["introspective_ms_per_token"])
    assert math.isfinite(head["overhead"])  # a ratio minus one: may be negative
    assert _positive_finite(results["tampo_rescoring"]["fraction_of_update_eager"])

    memory = results["rescoring_memory"]
    for key in ("one_pass_bytes", "rescoring_bytes", "naive_bytes", "naive_bytes_at_num_candidates",
                "naive_to_rescoring", "ratio_to_one_pass"):
        assert _positive_finite(memory[key]), key

    names = [row["name"] for row in results["summary"]]
    assert len(names) == 5
    for row in results["summary"]:
        if row["verdict"] != "SKIP":
            assert math.isfinite(row["value"]) and _positive_finite(row["goal"]) and row["verdict"] in ("PASS", "MISS")
    assert "goal" in bench_run.format_summary(results["summary"])


def test_generate_tokens_are_counted_up_to_and_including_the_first_eos():
    eos, pad = 2, 0
    completions = torch.tensor([[5, 6, eos, pad], [7, eos, pad, pad], [5, 5, 5, 5], [eos, 9, eos, pad]])
    assert rollout_vs_generate.new_tokens(completions, eos) == 3 + 2 + 4 + 1


def test_naive_rescoring_equals_the_chunked_one():
    from thermorl.algorithms.tampo import candidate_loglikelihoods

    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 7, 50, generator=generator)
    tokens = torch.randint(0, 50, (3, 7), generator=generator)
    mask = (torch.rand(3, 7, generator=generator) > 0.3).float()
    candidates = torch.tensor([0.6, 1.0, 1.4])
    naive = tampo_rescoring.naive_candidate_loglikelihoods(logits, tokens, mask, candidates)
    assert torch.allclose(naive, candidate_loglikelihoods(logits, tokens, mask, candidates, chunk_tokens=4), atol=1e-5)


@pytest.mark.slow
def test_the_gpu_presets_code_path_runs_on_cpu():
    """benchmarks/run.py --preset qwen2-smoke: the random-init Qwen2 path of the GPU script, at toy sizes."""
    sizes = bench_run.Sizes(rollout_repeats=1, step_pairs=1, step_warmup=0, head_repeats=0, tampo_repeats=0)
    results = bench_run.run("qwen2-smoke", "cpu", sizes, log=lambda line: None)
    for row in results["summary"]:
        assert row["verdict"] != "ERROR", f"{row['name']}: {row['reason']}"
    assert _positive_finite(results["rollout_vs_generate"]["ratio"])
    assert len(results["summary"]) == 2
