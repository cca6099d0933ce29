"""One script for a machine with one GPU (issue 25, item 7): under 10 minutes, it runs

1. the tests on CUDA: the fast unit tier (``pytest -m fast``; ``model.device`` defaults to ``auto``, so every
   test that builds a model builds it on the GPU) and, where vLLM is installed, ``tests/vllm_engine``
   (its default tier: the engine, scheduling under pressure, controllers from test files);
2. the bf16 paths: ``thermorl train`` 2 steps with ``model.dtype=bfloat16`` in one process, and the same job
   under FSDP2 with one process (NCCL, world size 1, ``mixed_precision=bf16``: bf16 compute, float32 master
   weights and reductions), each with the vLLM engine where it is installed, else the hf engine;
3. the rollout and GRPO-step ratios on the 0.5-1.5B-class preset (``benchmarks/run.py --preset qwen2-1.5b
   --quick``: thermorl's sampler vs ``generate``, thermorl's GRPO step vs TRL's) and, where vLLM is
   installed, ``engine_vllm_vs_hf.py`` (vLLM vs hf rollouts and GRPO steps on SmolLM2-135M, bf16).

Each part runs in a child process with a time limit, so one that hangs cannot take the others' time; what
each part did, its return code, its time and its output's tail go to ``--out`` (default
``benchmarks/results_gpu_check.json``), and a table to stdout. Exit status 1 if a part failed.

    python benchmarks/gpu_check.py                  # on the GPU machine (the vLLM venv if there is one)
    python benchmarks/gpu_check.py --device cpu --parts bf16   # a CPU smoke test of the script's plumbing
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
PARTS = ("tests", "bf16", "fsdp", "ratios")
TINY = [  # the default job, shortened: two steps, a small evaluation
    "--steps", "2", "--set", "task.eval_size=16", "--set", "train.eval_avg_problems=4", "--set", "train.eval_avg_k=2",
    "--set", "log.progress=false", "--set", "log.plot=false", "--set", "log.tensorboard=false",
]

FSDP_ONE_PROCESS = r'''
import os, sys, json, math, torch
from dataclasses import replace
from thermorl.config import load_config
from thermorl.runtime import fsdp
from thermorl.runtime.components import build_components
from thermorl.runtime.resume import LoopState
from thermorl.runtime.trainer import train_step
from thermorl.runtime.dynamic_sampling import draw_groups

device, engine = sys.argv[1], sys.argv[2]
torch.distributed.init_process_group("nccl" if device == "cuda" else "gloo")
config = load_config(None, [f"model.device={device}", "model.dtype=float32", f"rollout.engine={engine}",
                            "rollout.vllm.max_model_len=256", "rollout.vllm.gpu_memory_utilization=0.3"])
c = build_components(config)  # world size 1: built as one process, then sharded as FSDP would be
settings = fsdp.FsdpSettings(mixed_precision="bf16")
fsdp.shard_policy(c.policy, settings)
c.dist = replace(c.dist, fsdp=settings, device=c.policy.device)
c.lm_optimizer = torch.optim.AdamW(c.policy.model.parameters(), lr=config.algorithm.lr)
c.engine.sync_weights()  # the engine's copy from the sharded parameters, gathered one at a time
state = LoopState.fresh(config.train.seed, c.policy.device)
losses = []
for step in (1, 2):
    metrics = train_step(c, config, state, step, draw_groups(c, config, state))[0]
    losses.append(metrics["loss"])
print(json.dumps({"losses": losses, "finite": all(math.isfinite(x) for x in losses)}))
assert all(math.isfinite(x) for x in losses)
'''


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


SLACK = [1.0]


def run_part(name: str, command: list[str], limit: float, env: dict | None = None) -> dict:
    """Run ``command`` from the repository root with a time limit; what happened, as JSON."""
    limit *= SLACK[0]
    started = time.time()
    print(f"[{name}] {' '.join(command)}", flush=True)
    try:
        done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=limit,
                              env={**os.environ, **(env or {})})
        code, output = done.returncode, done.stdout + done.stderr
    except subprocess.TimeoutExpired as err:
        code, output = 124, f"timed out after {limit:.0f} s\n{(err.stdout or '')}{(err.stderr or '')}"
    seconds = time.time() - started
    print(f"[{name}] rc {code} in {seconds:.0f} s", flush=True)
    return {"part": name, "command": command, "returncode": code, "seconds": round(seconds, 1),
            "tail": output[-4000:] if isinstance(output, str) else ""}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    parser.add_argument("--parts", default=",".join(PARTS), help=f"comma-separated subset of {', '.join(PARTS)}")
    parser.add_argument("--out", type=Path, default=HERE / "results_gpu_check.json")
    parser.add_argument("--slack", type=float, default=1.0, help="multiply every part's time limit (slow machines)")
    args = parser.parse_args()
    SLACK[0] = args.slack
    python = sys.executable
    has_vllm = importlib.util.find_spec("vllm") is not None
    engine = "vllm" if has_vllm else "hf"
    vllm_sets = ["--set", f"rollout.engine={engine}", "--set", "rollout.vllm.max_model_len=256"]
    parts = [p for p in args.parts.split(",") if p]
    results: list[dict] = []
    if "tests" in parts:
        results.append(run_part("tests: pytest -m fast (CUDA)", [python, "-m", "pytest", "-q", "-m", "fast", "-x"], 150))
        if has_vllm:
            results.append(run_part("tests: tests/vllm_engine", [python, "-m", "pytest", "-q", "-x", "tests/vllm_engine"],
                                    120, {"THERMORL_REQUIRE_VLLM": "1"}))
    if "bf16" in parts:
        results.append(run_part(
            f"bf16: train, one process, {engine} engine",
            [python, "-m", "thermorl.cli", "train", "--out", str(Path(tempfile.mkdtemp()) / "bf16"), *TINY,
             "--set", f"model.device={args.device}", "--set", "model.dtype=bfloat16", *vllm_sets], 60,
        ))
    if "fsdp" in parts:
        env = {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(free_port()), "RANK": "0", "LOCAL_RANK": "0",
               "WORLD_SIZE": "1"}
        results.append(run_part(f"bf16: FSDP2 with one process, {engine} engine",
                                [python, "-c", FSDP_ONE_PROCESS, args.device, engine], 60, env))
    if "ratios" in parts:
        results.append(run_part("ratios: run.py --preset qwen2-1.5b --quick",
                                [python, "benchmarks/run.py", "--device", args.device, "--preset", "qwen2-1.5b",
                                 "--quick"], 120))
        if has_vllm:
            results.append(run_part(
                "ratios: engine_vllm_vs_hf.py (SmolLM2-135M bf16)",
                [python, "benchmarks/engine_vllm_vs_hf.py", "--model", "smollm2", "--dtype", "bfloat16",
                 "--prompts", "8", "--group", "8", "--new-tokens", "128", "--repeats", "2", "--step-repeats", "1",
                 "--out", str(HERE / "results_engine_gpu.json")], 90,
            ))
    document = {"device": args.device, "vllm_installed": has_vllm, "parts": results,
                "total_seconds": round(sum(r["seconds"] for r in results), 1)}
    try:
        import torch

        document["gpu"] = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    except Exception:  # noqa: BLE001  (the report is written whatever the torch build)
        document["gpu"] = None
    args.out.write_text(json.dumps(document, indent=2) + "\n")
    print("\n| part | rc | s |\n|---|---|---|")
    for r in results:
        print(f"| {r['part']} | {r['returncode']} | {r['seconds']:.0f} |")
    print(f"\nwrote {args.out} ({document['total_seconds']:.0f} s)")
    if any(r["returncode"] != 0 for r in results):
        raise SystemExit(1)


if __name__ == "__main__":
    main()
