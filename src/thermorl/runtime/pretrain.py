"""Supervised warm start of the tiny model on a synthetic task's demonstrations.

RL needs a policy that already solves some problems: GRPO learns nothing from groups whose
rewards are all zero. ``thermorl pretrain`` trains the built-in Llama on demonstrations until
greedy held-out accuracy is in a useful range for RL, then saves it as a Hugging Face
directory (safetensors + tokenizer). The package ships the result as the ``builtin`` model.
"""

from __future__ import annotations

import json
import random
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F

from thermorl.config import ModelConfig, RolloutConfig, TaskConfig
from thermorl.config.loader import to_dict
from thermorl.engines import build_engine
from thermorl.engines.base import positions_from_mask
from thermorl.models.policy import Policy, load_policy
from thermorl.study.evaluate import greedy_accuracy
from thermorl.tasks import build_task


def demonstration_batch(policy: Policy, prompts: list[str], completions: list[str]) -> tuple[torch.Tensor, ...]:
    """Right-padded (bos + prompt + completion + eos) ids, mask, and the completion-token loss mask."""
    tok = policy.tokenizer
    rows, loss_rows = [], []
    for prompt, completion in zip(prompts, completions):
        prompt_ids = tok.encode(tok.bos_token + prompt, add_special_tokens=False)
        completion_ids = tok.encode(completion, add_special_tokens=False) + [tok.eos_token_id]
        rows.append(prompt_ids + completion_ids)
        loss_rows.append([0] * len(prompt_ids) + [1] * len(completion_ids))
    width = max(map(len, rows))
    ids = torch.full((len(rows), width), tok.pad_token_id, dtype=torch.long)
    mask = torch.zeros(len(rows), width, dtype=torch.long)
    loss_mask = torch.zeros(len(rows), width)
    for i, (row, loss_row) in enumerate(zip(rows, loss_rows)):
        ids[i, : len(row)] = torch.tensor(row)
        mask[i, : len(row)] = 1
        loss_mask[i, : len(row)] = torch.tensor(loss_row, dtype=torch.float)
    return ids.to(policy.device), mask.to(policy.device), loss_mask.to(policy.device)


def pretrain(
    task_config: TaskConfig,
    model_config: ModelConfig,
    out_dir: Path,
    steps: int = 6000,
    batch_size: int = 128,
    lr: float = 1e-3,
    seed: int = 0,
    eval_every: int = 500,
    max_new_tokens: int = 24,
    attempt_fraction: float = 0.0,
    on_eval: Callable[[int, float, float], None] | None = None,
    threads: int = 1,
) -> dict:
    """Train on demonstrations for ``steps`` steps; save to ``out_dir``; return a summary.

    With ``attempt_fraction`` f, each row is a target-blind attempt (right arithmetic, random
    choices) with probability f instead of a solution: the warm start then computes well but
    chooses poorly, leaving the choices for RL to learn by exploring.

    ``threads``: torch CPU threads, as ``train.threads`` (0 = torch's default).
    """
    if threads:
        torch.set_num_threads(threads)
    torch.manual_seed(seed)
    rng = random.Random(seed)
    task = build_task(task_config)
    policy = load_policy(ModelConfig(**{**model_config.__dict__, "path": "builtin:random"}), seed=seed)
    optimizer = torch.optim.AdamW(policy.model.parameters(), lr=lr, weight_decay=0.01)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=lr, total_steps=steps, pct_start=0.05)
    eval_problems = task.eval_problems()
    history = []
    start = time.time()
    policy.model.train()
    for step in range(1, steps + 1):
        problems = task.train_problems(rng, batch_size)
        targets = [task.attempt(p, rng) if rng.random() < attempt_fraction else task.demonstration(p) for p in problems]
        ids, mask, loss_mask = demonstration_batch(policy, [p.prompt for p in problems], targets)
        hidden, _ = policy.hidden(ids[:, :-1], mask[:, :-1], positions_from_mask(mask[:, :-1]))
        logits = policy.logits(hidden)
        token_loss = F.cross_entropy(logits.transpose(1, 2), ids[:, 1:], reduction="none")
        loss = (token_loss * loss_mask[:, 1:]).sum() / loss_mask[:, 1:].sum()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(policy.model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        if step % eval_every == 0 or step == steps:
            accuracy = greedy_accuracy(build_engine(RolloutConfig(max_new_tokens=max_new_tokens), policy), task, eval_problems)
            history.append({"step": step, "loss": loss.item(), "eval_accuracy": accuracy,
                            "elapsed_s": time.time() - start})
            if on_eval is not None:
                on_eval(step, loss.item(), accuracy)
    out_dir.mkdir(parents=True, exist_ok=True)
    policy.model.save_pretrained(out_dir)
    policy.tokenizer.save_pretrained(out_dir)
    summary = {
        "task": to_dict(task_config), "steps": steps, "batch_size": batch_size, "lr": lr, "seed": seed,
        "attempt_fraction": attempt_fraction, "threads": torch.get_num_threads(),
        "eval_accuracy": history[-1]["eval_accuracy"], "history": history, "wall_time_s": time.time() - start,
    }
    (out_dir / "pretrain.json").write_text(json.dumps(summary, indent=2))
    return summary
