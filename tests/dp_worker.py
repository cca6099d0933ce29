"""Data-parallel equivalence worker, run once in-process and once under
``accelerate launch --num_processes 2 --cpu`` by test_distributed.py.

Every process samples the same *global* batch (same weights, same seed), keeps its contiguous
share of whole groups and runs the real ``grpo_update``; with gradients all-reduced and losses
scaled by token share, two processes must reproduce the one-process metrics and weights.
Then a short real ``train()`` runs in the same processes (the end-to-end path).
"""

from __future__ import annotations

import json
import random
import sys
from pathlib import Path

import torch

from thermorl.algorithms.grpo import group_advantages
from thermorl.config import load_config
from thermorl.engines.hf import decode_completions, encode_prompts, sample
from thermorl.runtime.distributed import gather_batch
from thermorl.runtime.trainer import batch_statistics, build_components, grpo_update, train

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


def run(out: Path) -> dict:
    config = load_config(None, OVERRIDES)
    c = build_components(config)
    steps = []
    for step in (1, 2):
        problems = [p for p in c.task.train_problems(random.Random(step), PROMPTS) for _ in range(GROUP)]
        prompt_ids, prompt_mask = encode_prompts(c.policy, [p.prompt for p in problems])
        c.policy.model.eval()
        batch = sample(c.policy, c.controller, prompt_ids, prompt_mask, 8, torch.Generator().manual_seed(step))
        c.policy.model.train()
        rewards = torch.tensor([c.task.reward(p, t) for p, t in zip(problems, decode_completions(c.policy, batch))])
        rows = torch.tensor(c.dist.shard(list(range(len(problems)))))
        local, local_rewards = batch.select(rows), rewards[rows]
        advantages = group_advantages(local_rewards, GROUP)
        metrics = batch_statistics(*gather_batch(c.dist, local, local_rewards), GROUP)
        metrics.update(grpo_update(c, config, local, advantages, step, torch.Generator().manual_seed(0)))
        steps.append(metrics)
    weights = {n: p.detach().clone() for n, p in c.policy.model.named_parameters()}
    weights.update({f"head.{n}": p.detach().clone() for n, p in c.controller.module.named_parameters()})
    result = {"world_size": c.dist.world_size, "steps": steps}
    if c.dist.is_main:
        out.mkdir(parents=True, exist_ok=True)
        torch.save(weights, out / f"weights-{c.dist.world_size}.pt")
        (out / f"metrics-{c.dist.world_size}.json").write_text(json.dumps(result))
    train(config, out / f"run-{c.dist.world_size}")
    return result


if __name__ == "__main__":
    run(Path(sys.argv[1]))
