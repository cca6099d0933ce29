"""Data-parallel and FSDP equivalence worker, run once in-process and under
``torch.distributed.run --nproc_per_node 2`` (``python dp_worker.py OUT [ddp|fsdp]``) by test_distributed.py.

Every process samples the same *global* batch (same weights, same seed), keeps its contiguous
share of whole groups and runs the real ``grpo_update``; with gradients averaged (all-reduce, or
FSDP's reduce-scatter) and losses scaled by token share, two processes must reproduce the
one-process metrics and weights. TAMPO's outer update runs on the same global batch of logits.
Then short real ``train()`` runs in the same processes: the end-to-end path (data-parallel: a run
resumed after step 2 and its uninterrupted reference; FSDP: the
uninterrupted reference of the kill/resume test, and a run with activation checkpointing and a NaN in
one process only).

The update itself runs as with another engine than the trainer (``UPDATE``): the batch's recorded log-probs
(the LM's and the head's) carry seeded noise, the trainer recomputes pi_old and caps the token ratios, so the
rollout-mismatch metrics must be those of the global batch in every process; under FSDP the update also
accumulates gradients over micro-batches of 3 rows.
"""

from __future__ import annotations

import json
import os
import random
import sys
from dataclasses import replace
from pathlib import Path

import torch

from thermorl.algorithms.grpo import group_advantages
from thermorl.config import TampoConfig, load_config
from thermorl.engines.hf import decode_completions, encode_prompts, sample
from thermorl.runtime.components import build_components
from thermorl.runtime.distributed import gather_batch
from thermorl.runtime.fsdp import full_weights
from thermorl.runtime.trainer import batch_statistics, train
from thermorl.runtime.update import grpo_update
from thermorl.temperature import CONTROLLERS, ControllerEnv
from thermorl.temperature.base import TemperatureActions
from thermorl.temperature.tampo import TampoController

HERE = Path(__file__).resolve().parent
PROMPTS, GROUP = 4, 4
OVERRIDES = [
    "model.path=builtin:random", "model.device=cpu", "model.hidden_size=32", "model.num_layers=2",
    "model.num_heads=2", f"rollout.prompts_per_step={PROMPTS}", f"rollout.group_size={GROUP}",
    "rollout.max_new_tokens=8", "task.eval_size=8", "train.eval_avg_problems=4", "train.eval_avg_k=2",
    "train.steps=2", "train.eval_every=2", "train.threads=1", "log.progress=false", "log.plot=false",
    "log.tensorboard=false", f"task.reward={HERE / 'user_rewards.py'}:digit_fraction", "algorithm.lr=0.01",
    "temperature.controller=introspective", "temperature.introspective.schedule=joint",
]
UPDATE = [  # the equivalence update only: pi_old recomputed and capped against a noisy "engine" record
    "algorithm.recompute_old_logprobs=true", "algorithm.rollout_correction.mode=token_truncate",
    "algorithm.rollout_correction.clip_max=1.3",
]
# the FSDP kill/resume runs (tests/test_distributed.py passes the same settings to `thermorl train`)
RESUME_STEPS = 6
RESUME_OVERRIDES = [
    *OVERRIDES, "distributed.strategy=fsdp", f"train.steps={RESUME_STEPS}", "train.checkpoint_every=2",
    "train.keep_checkpoints=3", "task.reward_timeout_s=600",
    f"task.reward={HERE / 'user_rewards.py'}:held_at_checkpoint",
    "task.reward_workers=0",  # held in the training process itself: the test signals the pid the reward writes
]


def full_parameters(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Every parameter unsharded (a collective under FSDP, same order in every process)."""
    from torch.distributed.tensor import DTensor

    return {n: (p.full_tensor() if isinstance(p, DTensor) else p).detach().clone() for n, p in model.named_parameters()}


def tampo_distribution(dist) -> list[float]:
    """pi after one outer update on a fixed global batch of 8 rows, each process holding its share."""
    torch.manual_seed(11)
    logits, tokens = torch.randn(8, 5, 7) * 3, torch.randint(0, 7, (8, 5))
    mask = (torch.rand(8, 5) > 0.2).float()
    advantages = torch.randn(8)
    env = ControllerEnv(4, 10, torch.device("cpu"), 2, 0, dist.gather_rows, dist.rank, dist.world_size)
    controller = TampoController(TampoConfig(), env)
    rows = torch.tensor(dist.shard(list(range(8))))
    controller.after_update(TemperatureActions(), advantages[rows], mask[rows], tokens[rows], logits[rows])
    return controller.pi.tolist()


class NanInProcessOne(CONTROLLERS["introspective"].build):
    """The introspective controller, except that process 1 samples NaN temperatures at step 2."""

    def choose(self, ctx):
        temperatures, records = super().choose(ctx)
        if ctx.training_step == 2 and os.environ.get("RANK") == "1":
            temperatures = temperatures * float("nan")
        return temperatures, records


def engine_record(batch, step: int):
    """The global batch as another engine would have recorded it: seeded noise on its LM and head log-probs."""
    noise = torch.Generator().manual_seed(100 + step)
    shift = lambda x: x + 0.3 * torch.randn(x.shape, generator=noise) * batch.completion_mask  # noqa: E731
    actions = replace(batch.actions, logprob=shift(batch.actions.logprob))
    return replace(batch, logprobs=shift(batch.logprobs), actions=actions)


def run(out: Path, strategy: str = "ddp") -> dict:
    config = load_config(None, [*OVERRIDES, f"distributed.strategy={strategy}"])
    c = build_components(config)
    tag = "fsdp" if c.dist.fsdp is not None else str(c.dist.world_size)
    micro = ["train.micro_batch_rows=3"] if tag == "fsdp" else []
    update_config = load_config(None, [*OVERRIDES, f"distributed.strategy={strategy}", *UPDATE, *micro])
    steps = []
    for step in (1, 2):
        problems = [p for p in c.task.train_problems(random.Random(step), PROMPTS) for _ in range(GROUP)]
        prompt_ids, prompt_mask = encode_prompts(c.policy, [p.prompt for p in problems])
        c.policy.model.eval()
        with full_weights(c.policy):
            batch = sample(c.policy, c.controller, prompt_ids, prompt_mask, 8, torch.Generator().manual_seed(step))
        c.policy.model.train()
        batch = engine_record(batch, step)
        rewards = torch.tensor(c.reward.score(problems, decode_completions(c.policy, batch)).values())  # the run's reward
        rows = torch.tensor(c.dist.shard(list(range(len(problems)))))
        local, local_rewards = batch.select(rows), rewards[rows]
        advantages = group_advantages(local_rewards, GROUP)
        metrics = batch_statistics(*gather_batch(c.dist, local, local_rewards), GROUP)
        metrics.update(grpo_update(c, update_config, local, advantages, step, torch.Generator().manual_seed(0)))
        steps.append(metrics)
    weights = full_parameters(c.policy.model)
    weights.update({f"head.{n}": p.detach().clone() for n, p in c.controller.module.named_parameters()})
    result = {"world_size": c.dist.world_size, "steps": steps, "tampo_pi": tampo_distribution(c.dist)}
    if c.dist.is_main:
        out.mkdir(parents=True, exist_ok=True)
        torch.save(weights, out / f"weights-{tag}.pt")
        (out / f"metrics-{tag}.json").write_text(json.dumps(result))
    train(config, out / f"run-{tag}")
    if tag == "2":  # stopped after step 2 and resumed to 3 == 3 uninterrupted steps (every process's streams saved)
        longer = load_config(None, [*OVERRIDES, "train.steps=3"])
        train(longer, out / "ddp-reference")
        train(config, out / "ddp-resumed")
        train(longer, out / "ddp-resumed", resume=True)
    if tag == "fsdp":
        train(load_config(None, RESUME_OVERRIDES), out / "fsdp-reference")
        CONTROLLERS["introspective"] = replace(CONTROLLERS["introspective"], build=NanInProcessOne)
        # also with activation checkpointing (recomputed layers under FSDP)
        nan_config = load_config(
            None, [*OVERRIDES, "distributed.strategy=fsdp", "train.steps=3", "model.gradient_checkpointing=true"]
        )
        train(nan_config, out / "fsdp-nan")
    return result


if __name__ == "__main__":
    run(Path(sys.argv[1]), sys.argv[2] if len(sys.argv) > 2 else "ddp")
