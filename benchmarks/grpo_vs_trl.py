"""GRPO step time: thermorl's training step vs TRL's ``GRPOTrainer`` on the same job.

Goal (issue 7): thermorl >= 2x faster per step. One step = sample prompts_per_step x group_size
completions, reward them (the countdown verifier), group-normalised advantages, one clipped-ratio
update (AdamW, gradient clipping at 1.0). Both sides start from copies of the same model and get
the same prompts in the same order (TRL's dataset unshuffled), with temperature 1.0, beta 0 (no
reference model), one iteration, the same constant lr, clip range (0.2, 0.28) and token-mean loss (TRL's
``dapo``); TRL without gradient checkpointing or mixed precision (its defaults turn both on), no
logging, saving or evaluation. thermorl runs ``trainer.train_step`` (what ``thermorl train``
runs per step, with the fixed controller); TRL's step is timed from ``on_step_begin`` to
``on_step_end`` (generation, reward, loss, backward, clipping, optimizer step). The two are
interleaved inside TRL's loop by a callback (thermorl's step i runs after TRL's step i for even i,
before it for odd i); the first ``warmup`` pairs are discarded.

    pip install -e '.[bench]'                       # TRL
    python benchmarks/grpo_vs_trl.py                # tiny model, CPU
    python benchmarks/grpo_vs_trl.py --device cuda --preset qwen2-1.5b
"""

from __future__ import annotations

import argparse
import copy
import tempfile
import time
from pathlib import Path

import torch
from harness import (
    Setup,
    Timing,
    build_setup,
    headline_clock,
    median,
    ratio_fields,
    script_arguments,
    timed,
    write_result,
)

GOAL = 2.0


def countdown_reward(prompts: list, completions: list[str], numbers: list, target: list, **_: object) -> list[float]:
    """The countdown verifier with TRL's reward signature (dataset columns arrive as keyword lists)."""
    from thermorl.tasks.countdown import check_countdown

    return [float(check_countdown(n, t, c)) for c, n, t in zip(completions, numbers, target)]


def measure(setup: Setup, steps: int = 10, warmup: int = 2, controller: str = "fixed") -> dict:
    """Paired per-step seconds of thermorl and TRL; the first ``warmup`` pairs are discarded."""
    from datasets import Dataset
    from transformers import TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    from thermorl.config import load_config
    from thermorl.models.policy import Policy
    from thermorl.runtime.components import build_components
    from thermorl.runtime.resume import LoopState
    from thermorl.runtime.trainer import train_step

    preset, device = setup.preset, setup.device
    total = warmup + steps
    problems = setup.problems(total, seed=1)
    config = load_config(None, [
        f"rollout.prompts_per_step={preset.prompts_per_step}", f"rollout.group_size={preset.group_size}",
        f"rollout.max_new_tokens={preset.max_new_tokens}", f"temperature.controller={controller}",
        f"train.steps={total}", "train.threads=0",  # the script's --threads stands
        "algorithm.lr_schedule=constant", "algorithm.warmup_steps=0",  # TRL's constant lr below
    ])
    algo = config.algorithm
    # a copy of the set-up's model: it may be a random-init model built from a config, with no directory
    components = build_components(config, policy=Policy(copy.deepcopy(setup.policy.model), setup.policy.tokenizer))
    state = LoopState.fresh(config.train.seed, device)
    lengths: list[float] = []

    def thermorl_step(step: int) -> Timing:
        chunk = problems[step * preset.prompts_per_step : (step + 1) * preset.prompts_per_step]
        batch_problems = [p for p in chunk for _ in range(preset.group_size)]
        run = timed(lambda: train_step(components, config, state, step + 1, batch_problems), device)
        lengths.append(run.result[0]["completion_length"])
        return run

    class Pairs(TrainerCallback):
        """Times TRL's steps and runs thermorl's step i next to TRL's step i."""

        def __init__(self) -> None:
            self.trl: list[Timing] = []
            self.thermorl: list[Timing] = []
            self.trl_lengths: list[float] = []
            self.trainer = None

        def on_step_begin(self, args, state, control, **kwargs):
            if state.global_step % 2 == 1:
                self.thermorl.append(thermorl_step(state.global_step))
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            self.start = (time.process_time(), time.perf_counter())

        def on_step_end(self, args, state, control, **kwargs):
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            self.trl.append(Timing(None, time.process_time() - self.start[0], time.perf_counter() - self.start[1]))
            self.trl_lengths.append(self.trainer._metrics["train"]["completions/mean_length"][-1])
            step = state.global_step - 1  # global_step counts the step that just ended
            if step % 2 == 0:
                self.thermorl.append(thermorl_step(step))

    bos = setup.policy.tokenizer.bos_token or ""
    dataset = Dataset.from_list([
        {"prompt": bos + p.prompt, "numbers": p.data["numbers"], "target": int(p.answer)} for p in problems
    ])
    pairs = Pairs()
    with tempfile.TemporaryDirectory() as out_dir:
        args = GRPOConfig(
            output_dir=out_dir, use_cpu=device.type == "cpu", bf16=False, fp16=False, gradient_checkpointing=False,
            per_device_train_batch_size=setup.rows, gradient_accumulation_steps=1, num_generations=preset.group_size,
            max_completion_length=preset.max_new_tokens, temperature=1.0, top_k=0, top_p=1.0, beta=0.0,
            num_iterations=1, epsilon=algo.epsilon, epsilon_high=algo.epsilon_high, loss_type="dapo",
            scale_rewards="group", learning_rate=algo.lr, lr_scheduler_type="constant", warmup_steps=0,
            weight_decay=algo.weight_decay, max_grad_norm=algo.max_grad_norm, max_steps=total, shuffle_dataset=False,
            logging_strategy="no", save_strategy="no", eval_strategy="no", report_to="none", disable_tqdm=True,
            log_completions=False, dataloader_num_workers=0, seed=0,
        )
        trainer = GRPOTrainer(
            model=copy.deepcopy(setup.policy.model), reward_funcs=countdown_reward, args=args, train_dataset=dataset,
            processing_class=setup.policy.tokenizer, callbacks=[pairs],
        )
        pairs.trainer = trainer
        trainer.train()

    clock = headline_clock(device)
    trl, ours = pairs.trl[warmup:], pairs.thermorl[warmup:]

    def paired(clock: str) -> list[float]:
        return [theirs.seconds(clock) / mine.seconds(clock) for theirs, mine in zip(trl, ours)]

    return {
        "preset": setup.name, "device": str(device), "rows": setup.rows, "group_size": preset.group_size,
        "max_new_tokens": preset.max_new_tokens, "steps": steps, "warmup": warmup, "controller": controller,
        "clock": clock,
        "thermorl_step_s": median([t.seconds(clock) for t in ours]),
        "trl_step_s": median([t.seconds(clock) for t in trl]),
        "thermorl_completion_length": median(lengths[warmup:]),
        "trl_completion_length": median(pairs.trl_lengths[warmup:]),
        **ratio_fields(paired, clock, GOAL),
    }


def report(result: dict) -> str:
    return (
        f"GRPO step, {result['rows']} rows x <= {result['max_new_tokens']} tokens, {result['clock']} time: "
        f"thermorl ({result['controller']}) {result['thermorl_step_s']:.3f} s, TRL {result['trl_step_s']:.3f} s "
        f"-> {result['ratio']:.2f}x (wall {result['ratio_wall']:.2f}x; goal >= {result['goal']}x: "
        f"{result['verdict']}); mean completion length {result['thermorl_completion_length']:.1f} vs "
        f"{result['trl_completion_length']:.1f}"
    )


def main() -> None:
    def options(parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--steps", type=int, default=20, help="timed (thermorl, TRL) step pairs")
        parser.add_argument("--warmup", type=int, default=2, help="untimed pairs first")
        parser.add_argument("--controller", default="fixed", help="thermorl's temperature controller")

    args = script_arguments(__doc__, Path(__file__).with_name("results_trl.json"), options)
    result = measure(build_setup(args.preset, args.device), args.steps, args.warmup, args.controller)
    write_result(result, report(result), args.out)


if __name__ == "__main__":
    main()
