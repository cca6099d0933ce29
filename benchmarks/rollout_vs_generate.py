"""Rollout speed: thermorl's sampler with the introspective controller vs Hugging Face ``generate``.

Goal (issue 7): new tokens per second >= 1.3x ``model.generate(do_sample=True, temperature=1.0)``.
Both generate for the same model, the same left-padded batch (prompts_per_step distinct countdown
prompts, each repeated group_size times, as in a GRPO step) and the same ``max_new_tokens``.
Completions end at different lengths: thermorl's sampler drops finished rows from the batch and
the KV cache, and runs the prompt pass once per distinct prompt; ``generate`` keeps every row
until the last one finishes. Each side's new tokens are counted per row up to and including its
first EOS (all of them for a row that hits ``max_new_tokens``). The thermorl side also draws a
temperature per token from the introspective head and records its log-probs and entropies;
``generate`` samples at one fixed temperature and records nothing.

    python benchmarks/rollout_vs_generate.py                                # tiny model, CPU
    python benchmarks/rollout_vs_generate.py --device cuda --preset qwen2-1.5b
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from harness import (
    Setup,
    Timing,
    build_setup,
    headline_clock,
    interleaved,
    median,
    ratio_fields,
    script_arguments,
    timed,
    write_result,
)

GOAL = 1.3


def new_tokens(completions: torch.Tensor, eos_id: int) -> int:
    """Tokens per row up to and including its first EOS (the whole row if it has none)."""
    is_eos = completions == eos_id
    first_eos = torch.where(is_eos.any(dim=1), is_eos.int().argmax(dim=1) + 1, completions.shape[1])
    return int(first_eos.sum())


def measure(setup: Setup, repeats: int = 10, warmup: int = 1) -> dict:
    """Paired new-tokens/s of ``thermorl.engines.hf.sample`` (introspective) and ``model.generate``."""
    from transformers import GenerationConfig

    from thermorl.config import load_config
    from thermorl.engines.hf import encode_prompts, sample
    from thermorl.temperature import ControllerEnv, build_controller

    policy, preset = setup.policy, setup.preset
    problems = setup.problems(1)
    prompt_ids, prompt_mask = encode_prompts(policy, [p.prompt for p in problems for _ in range(preset.group_size)])
    temperature = load_config(None, ["temperature.controller=introspective"]).temperature
    env = ControllerEnv(policy.hidden_size, 1, policy.device, preset.group_size, seed=0)
    controller = build_controller(temperature, env)
    eos_id, pad_id = policy.tokenizer.eos_token_id, policy.tokenizer.pad_token_id
    generation = GenerationConfig(
        do_sample=True, temperature=1.0, top_k=0, top_p=1.0, max_new_tokens=preset.max_new_tokens,
        eos_token_id=eos_id, pad_token_id=pad_id,
    )

    def thermorl(seed: int) -> Timing:
        generator = torch.Generator(device=policy.device).manual_seed(seed)
        run = timed(lambda: sample(policy, controller, prompt_ids, prompt_mask, preset.max_new_tokens, generator),
                    policy.device)
        run.result = int(run.result.completion_mask.sum())
        return run

    def generate(seed: int) -> Timing:
        torch.manual_seed(seed)
        run = timed(lambda: policy.model.generate(input_ids=prompt_ids, attention_mask=prompt_mask,
                                                  generation_config=generation), policy.device)
        run.result = new_tokens(run.result[:, prompt_ids.shape[1]:], eos_id)
        return run

    with torch.no_grad():
        runs = interleaved({"thermorl": thermorl, "generate": generate}, repeats, warmup)
    clock = headline_clock(policy.device)

    def rates(name: str, clock: str) -> list[float]:
        return [run.result / run.seconds(clock) for run in runs[name]]

    def paired(clock: str) -> list[float]:
        return [ours / theirs for ours, theirs in zip(rates("thermorl", clock), rates("generate", clock))]

    return {
        "preset": setup.name, "device": str(policy.device), "rows": len(prompt_ids),
        "distinct_prompts": preset.prompts_per_step, "max_new_tokens": preset.max_new_tokens,
        "repeats": repeats, "clock": clock,
        "thermorl_tokens_per_s": median(rates("thermorl", clock)),
        "generate_tokens_per_s": median(rates("generate", clock)),
        "thermorl_new_tokens": median([run.result for run in runs["thermorl"]]),
        "generate_new_tokens": median([run.result for run in runs["generate"]]),
        **ratio_fields(paired, clock, GOAL),
    }


def report(result: dict) -> str:
    return (
        f"rollout {result['rows']} rows ({result['distinct_prompts']} prompts), <= {result['max_new_tokens']} new "
        f"tokens, {result['clock']} time: thermorl+introspective {result['thermorl_tokens_per_s']:.0f} tok/s, "
        f"generate {result['generate_tokens_per_s']:.0f} tok/s -> {result['ratio']:.2f}x "
        f"(wall {result['ratio_wall']:.2f}x; goal >= {result['goal']}x: {result['verdict']})"
    )


def main() -> None:
    def options(parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--repeats", type=int, default=20, help="interleaved (thermorl, generate) pairs")

    args = script_arguments(__doc__, Path(__file__).with_name("results_rollout.json"), options)
    result = measure(build_setup(args.preset, args.device), args.repeats)
    write_result(result, report(result), args.out)


if __name__ == "__main__":
    main()
