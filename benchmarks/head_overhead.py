"""Rollout cost of the Introspective temperature head against the fixed controller.

Acceptance (issue 4): rollout overhead of the head <= 5% on the CPU default task. Both
controllers roll out the same prompts with the same model and batch, in one process, in
interleaved pairs (alternating which goes first) after a warm-up. Completions can stop at
different lengths (the temperatures differ), so each rollout's time is divided by its
generated tokens; the overhead is the median over pairs of
(introspective s/token) / (fixed s/token) - 1.

On CPU the headline is the process's CPU time (one thread by default): on a shared machine
wall time mostly measures the other tenants, while CPU time is what the rollout itself costs.
Wall-clock ratios are reported beside it. On CUDA the headline is wall time (synchronised).
A lower-variance cross-check: the share of each introspective rollout's CPU time spent inside
the head's ``choose`` (timed within the same rollout, so contention hits both alike).

    python benchmarks/head_overhead.py                          # default task shapes, CPU
    python benchmarks/head_overhead.py --device cuda --out benchmarks/results_head_gpu.json
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import time
from pathlib import Path

import torch

from thermorl.config import load_config
from thermorl.engines.hf import encode_prompts, sample
from thermorl.models.policy import load_policy
from thermorl.tasks import build_task
from thermorl.temperature import ControllerEnv, StepContext, TemperatureController, build_controller

GOAL = 0.05


class TimedController(TemperatureController):
    """Delegates to ``inner`` and adds up the CPU time spent in its ``choose``."""

    def __init__(self, inner: TemperatureController) -> None:
        self.inner, self.seconds = inner, 0.0

    def start(self, num_rows: int, training_step: int) -> None:
        self.inner.start(num_rows, training_step)

    def choose(self, ctx: StepContext):
        start = time.process_time()
        out = self.inner.choose(ctx)
        self.seconds += time.process_time() - start
        return out


def measure(repeats: int = 10, device: str = "cpu", head: str = "beta", overrides: tuple[str, ...] = ()) -> dict:
    """Paired seconds per generated token of the fixed and introspective controllers (see the module doc)."""
    config = load_config(None, ["model.path=builtin:random", f"model.device={device}", *overrides])
    policy = load_policy(config.model)
    policy.model.eval()
    rollout = config.rollout
    task = build_task(config.task)
    problems = task.train_problems(random.Random(0), rollout.prompts_per_step)
    prompt_ids, prompt_mask = encode_prompts(policy, [p.prompt for p in problems for _ in range(rollout.group_size)])
    env = ControllerEnv(policy.hidden_size, 1, policy.device, rollout.group_size, seed=0)
    controllers = {}
    for name in ("fixed", "introspective"):
        temperature = load_config(None, [f"temperature.controller={name}",
                                         f"temperature.introspective.head={head}"]).temperature
        controllers[name] = TimedController(build_controller(temperature, env))

    cuda = policy.device.type == "cuda"

    def seconds_per_token(name: str, seed: int) -> tuple[float, float]:
        """(CPU seconds, wall seconds) per generated token of one rollout."""
        if cuda:
            torch.cuda.synchronize()
        controllers[name].seconds = 0.0
        cpu, wall = time.process_time(), time.perf_counter()
        batch = sample(policy, controllers[name], prompt_ids, prompt_mask, rollout.max_new_tokens,
                       torch.Generator(device=policy.device).manual_seed(seed))
        if cuda:
            torch.cuda.synchronize()
        cpu = time.process_time() - cpu
        shares[name].append(controllers[name].seconds / cpu)
        tokens = batch.completion_mask.sum().item()
        return cpu / tokens, (time.perf_counter() - wall) / tokens

    shares: dict[str, list[float]] = {name: [] for name in controllers}  # CPU share of choose per rollout
    for name in controllers:  # warm-up
        seconds_per_token(name, seed=repeats)
    times: dict[str, list[tuple[float, float]]] = {name: [] for name in controllers}
    for repeat in range(repeats):
        order = ("fixed", "introspective") if repeat % 2 == 0 else ("introspective", "fixed")
        for name in order:
            times[name].append(seconds_per_token(name, seed=repeat))

    def paired_ratios(clock: int) -> list[float]:
        return [i[clock] / f[clock] for i, f in zip(times["introspective"], times["fixed"])]

    def median_ms(name: str, clock: int) -> float:
        return 1e3 * statistics.median(t[clock] for t in times[name])

    headline = 1 if cuda else 0  # wall time on CUDA, CPU time on CPU
    overhead = statistics.median(paired_ratios(headline)) - 1.0
    return {
        "device": str(policy.device),
        "threads": torch.get_num_threads(),
        "head": head,
        "rows": prompt_ids.shape[0],
        "max_new_tokens": rollout.max_new_tokens,
        "hidden_size": policy.hidden_size,
        "repeats": repeats,
        "clock": "wall" if cuda else "cpu",
        "fixed_ms_per_token": median_ms("fixed", headline),
        "introspective_ms_per_token": median_ms("introspective", headline),
        "overhead": overhead,
        "overhead_wall": statistics.median(paired_ratios(1)) - 1.0,
        "choose_cpu_share": {name: statistics.median(v[1:]) for name, v in shares.items()},
        "paired_ratios": [round(r, 4) for r in paired_ratios(headline)],
        "paired_ratios_wall": [round(r, 4) for r in paired_ratios(1)],
        "goal": GOAL,
        "meets_goal": overhead <= GOAL,
    }


def report(result: dict) -> str:
    share = result["choose_cpu_share"]
    return "\n".join([
        (f"rollout {result['rows']} rows x {result['max_new_tokens']} tokens on {result['device']} "
         f"({result['threads']} threads, {result['clock']} time): fixed {result['fixed_ms_per_token']:.4f} ms/token, "
         f"introspective ({result['head']}) {result['introspective_ms_per_token']:.4f} ms/token"),
        (f"head overhead {100 * result['overhead']:+.1f}% (median of {result['repeats']} paired ratios; wall clock "
         f"{100 * result['overhead_wall']:+.1f}%); goal <= {100 * GOAL:.0f}%: "
         f"{'meets' if result['meets_goal'] else 'MISSES'}"),
        (f"cross-check, CPU share of choose() within a rollout: introspective {100 * share['introspective']:.1f}%, "
         f"fixed {100 * share['fixed']:.1f}%"),
    ])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=10, help="Interleaved (fixed, introspective) pairs.")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (0 = torch's default); one "
                        "thread keeps timings stable on a shared machine, where idle threads spin.")
    parser.add_argument("--head", choices=["beta", "bins"], default="beta")
    parser.add_argument("--set", action="append", default=[], help="Extra config override (model shape, rollout).")
    parser.add_argument("--out", type=Path, default=Path(__file__).with_name("results_head.json"))
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    result = measure(args.repeats, args.device, args.head, tuple(args.set))
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(report(result))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
