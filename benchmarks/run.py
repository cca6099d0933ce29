"""Every performance benchmark of issue 7 in one run: each ratio beside its goal, saved as JSON.

    python benchmarks/run.py --quick                     # < 5 minutes on a 2-core CPU
    python benchmarks/run.py                             # more repeats
    python benchmarks/run.py --device cuda --preset qwen2-1.5b --quick   # GPU: rollout and step ratios
    python benchmarks/run.py --preset qwen2-smoke --quick                # CPU smoke test of the GPU path

The tiny preset (CPU) runs all five: rollout vs ``generate`` (rollout_vs_generate.py), GRPO step vs
TRL (grpo_vs_trl.py), introspective head overhead (head_overhead.py), TAMPO re-scoring time per
GRPO update and its peak memory at vocab 152064 x 2048 tokens against one log_softmax pass and
against the naive (K, N, T, V) re-scoring (tampo_rescoring.py). The random-init Qwen2 presets run
the rollout and step ratios only. The GRPO step needs TRL (``pip install -e '.[bench]'``); without
it that benchmark is reported as skipped.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpo_vs_trl
import head_overhead
import rollout_vs_generate
import tampo_rescoring
import torch
from harness import build_setup, machine_info, script_arguments, verdict


@dataclass(frozen=True)
class Sizes:
    """How long each benchmark runs, and optionally a smaller batch than the preset's (tests)."""

    rollout_repeats: int
    step_pairs: int
    step_warmup: int
    head_repeats: int
    tampo_repeats: int
    memory_tokens: int = 2048
    memory_vocab: int = 152_064
    naive_candidates: int = 2  # the naive re-scoring is measured at this K' (K = 10 would need ~13 GB)
    shape: dict[str, int] = dataclasses.field(default_factory=dict)  # prompts_per_step, group_size, max_new_tokens


SIZES = {
    "quick": Sizes(rollout_repeats=24, step_pairs=12, step_warmup=2, head_repeats=20, tampo_repeats=5),
    "full": Sizes(rollout_repeats=60, step_pairs=40, step_warmup=3, head_repeats=60, tampo_repeats=15,
                  naive_candidates=3),
}
GPU_SIZES = {  # a 1.5B model: a few long rollouts and steps keep the whole run under 8 minutes
    "quick": Sizes(rollout_repeats=3, step_pairs=3, step_warmup=1, head_repeats=0, tampo_repeats=0),
    "full": Sizes(rollout_repeats=5, step_pairs=5, step_warmup=1, head_repeats=0, tampo_repeats=0),
}
TAMPO_GOAL = 0.10
MEMORY_GOAL = 2.0  # re-scoring peak below two log_softmax passes (issue 5)


def run(preset: str, device: str, sizes: Sizes, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Run the preset's benchmarks; returns the results document (machine, summary, one entry per benchmark)."""
    start = time.perf_counter()
    results: dict[str, Any] = {"machine": machine_info(torch.device(device)), "preset": preset,
                               "sizes": dataclasses.asdict(sizes)}
    setup = build_setup(preset, device)
    if sizes.shape:
        setup.preset = dataclasses.replace(setup.preset, **sizes.shape)
    results["setup"] = {"description": setup.preset.description, "rows": setup.rows,
                        "prompts_per_step": setup.preset.prompts_per_step, "group_size": setup.preset.group_size,
                        "max_new_tokens": setup.preset.max_new_tokens}
    summary: list[dict[str, Any]] = []

    def attempt(key: str, name: str, measure: Callable[[], dict], describe: Callable[[dict], str],
                headline: Callable[[dict], tuple[float, float, bool, str]]) -> None:
        """Run one benchmark; a failure is recorded (the others still run), not raised.
        ``headline(result)`` is (value, goal, higher_is_better, unit) of its summary row."""
        log(f"{name} ...")
        try:
            result = measure()
        except ImportError as err:  # TRL is an optional extra
            result, status = {"skipped": f"{err} (pip install -e '.[bench]')"}, "SKIP"
        except Exception as err:  # noqa: BLE001 (reported in the results and the exit status)
            result, status = {"error": f"{type(err).__name__}: {err}"}, "ERROR"
        else:
            summary.append(_row(name, *headline(result)))
            log("  " + describe(result).replace("\n", "\n  "))
            results[key] = result
            return
        reason = result.get("skipped") or result["error"]
        summary.append({"name": name, "verdict": status, "reason": reason})
        log(f"  {status}: {reason}")
        results[key] = result

    attempt("rollout_vs_generate", "rollout new tokens/s vs HF generate",
            lambda: rollout_vs_generate.measure(setup, sizes.rollout_repeats), rollout_vs_generate.report,
            lambda r: (r["ratio"], r["goal"], True, "x"))
    attempt("grpo_vs_trl", "GRPO step speed-up vs TRL",
            lambda: grpo_vs_trl.measure(setup, sizes.step_pairs, sizes.step_warmup), grpo_vs_trl.report,
            lambda r: (r["ratio"], r["goal"], True, "x"))
    if preset == "tiny":
        overrides = tuple(f"rollout.{name}={value}" for name, value in sizes.shape.items())
        attempt("head_overhead", "introspective head rollout overhead",
                lambda: head_overhead.measure(sizes.head_repeats, device, overrides=overrides), head_overhead.report,
                lambda r: (r["overhead"], head_overhead.GOAL, False, "%"))
        attempt("tampo_rescoring", "TAMPO re-scoring / GRPO update",
                lambda: tampo_rescoring.measure_time("tiny", device, repeats=sizes.tampo_repeats), _tampo_report,
                lambda r: (r["fraction_of_update_eager"], TAMPO_GOAL, False, "%"))
        attempt("rescoring_memory", "re-scoring peak / one log_softmax pass",
                lambda: tampo_rescoring.measure_memory(sizes.memory_tokens, sizes.memory_vocab,
                                                       len(tampo_rescoring.CANDIDATES), device=device,
                                                       naive_candidates=sizes.naive_candidates),
                _memory_report, lambda r: (r["ratio_to_one_pass"], MEMORY_GOAL, False, "x"))

    results["summary"] = summary
    results["wall_time_s"] = time.perf_counter() - start
    return results


def _row(name: str, value: float, goal: float, higher_is_better: bool, unit: str) -> dict[str, Any]:
    return {"name": name, "value": value, "goal": goal, "higher_is_better": higher_is_better, "unit": unit,
            "verdict": verdict(value, goal, higher_is_better)}


def _tampo_report(tampo: dict) -> str:
    return (f"GRPO update {tampo['grpo_update_s'] * 1e3:.1f} ms, re-scoring at K={len(tampo_rescoring.CANDIDATES)} "
            f"{tampo['rescoring_eager_s'] * 1e3:.1f} ms ({100 * tampo['fraction_of_update_eager']:.1f}%)")


def _memory_report(memory: dict) -> str:
    mib = 2**20
    text = (f"one log_softmax pass {memory['one_pass_bytes'] / mib:.0f} MiB, chunked re-scoring at "
            f"K={memory['num_candidates']} {memory['rescoring_bytes'] / mib:.0f} MiB")
    if "naive_bytes" in memory:
        text += (f"; naive (K', N, T, V) at K'={memory['naive_candidates']} {memory['naive_bytes'] / mib:.0f} MiB "
                 f"measured, {memory['naive_bytes_at_num_candidates'] / mib:.0f} MiB at K={memory['num_candidates']} "
                 f"({memory['naive_to_rescoring']:.0f}x the chunked peak)")
    return text


def format_summary(summary: list[dict[str, Any]]) -> str:
    lines = [f"{'benchmark':42} {'measured':>9} {'goal':>9}  verdict"]
    for row in summary:
        if "value" not in row:
            lines.append(f"{row['name']:42} {'-':>9} {'-':>9}  {row['verdict']} ({row['reason']})")
            continue
        sign = ">=" if row["higher_is_better"] else "<="
        if row["unit"] == "%":
            value, goal = f"{100 * row['value']:+.1f}%", f"{sign} {100 * row['goal']:.0f}%"
        else:
            value, goal = f"{row['value']:.2f}x", f"{sign} {row['goal']:g}x"
        lines.append(f"{row['name']:42} {value:>9} {goal:>9}  {row['verdict']}")
    return "\n".join(lines)


def _finite(document: Any) -> Any:
    """JSON cannot hold NaN/inf: write them as null."""
    if isinstance(document, float) and not math.isfinite(document):
        return None
    if isinstance(document, dict):
        return {key: _finite(value) for key, value in document.items()}
    if isinstance(document, list):
        return [_finite(value) for value in document]
    return document


def main() -> None:
    def options(parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--quick", action="store_true", help="fewer repeats (< 5 minutes on a 2-core CPU)")

    # --out default (None): benchmarks/results.json for the tiny preset, results_PRESET.json otherwise
    args = script_arguments(__doc__, None, options)
    mode = "quick" if args.quick else "full"
    sizes = (SIZES if args.preset == "tiny" else GPU_SIZES)[mode]
    results = run(args.preset, args.device, sizes)
    results["mode"] = mode
    print()
    print(format_summary(results["summary"]))
    out = args.out or Path(__file__).with_name("results.json" if args.preset == "tiny" else f"results_{args.preset}.json")
    out.write_text(json.dumps(_finite(results), indent=2) + "\n")
    print(f"\nwrote {out} ({results['wall_time_s']:.0f} s)")
    if any(row["verdict"] == "ERROR" for row in results["summary"]):
        raise SystemExit(1)


if __name__ == "__main__":
    main()
