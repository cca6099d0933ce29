"""The update of one GRPO step: mu epochs of minibatch steps on the sampled batch (DeepSeekMath, Alg. 1, l. 8-10).

Each minibatch is re-scored at the temperatures sampling used (or those the controller trains at), the
token objective (``algorithms.objective``) gives the LM loss, the controller adds its own loss, and the
LM's and the head's gradients are each clipped to ``algorithm.max_grad_norm`` (two norms, both logged).
"""

from __future__ import annotations

import math
from dataclasses import replace

import torch

from thermorl.algorithms.grpo import high_entropy_mask, truncated_importance_weights
from thermorl.algorithms.objective import token_objective
from thermorl.config import Config
from thermorl.engines import RolloutBatch
from thermorl.engines.hf import score, truncated_completions
from thermorl.errors import NonFiniteError
from thermorl.runtime import fsdp
from thermorl.runtime.components import Components, finite_gradients


def grpo_update(
    c: Components, config: Config, batch: RolloutBatch, advantages: torch.Tensor, step: int,
    generator: torch.Generator, trainer_logprobs: torch.Tensor | None = None,
) -> dict[str, float]:
    """mu epochs of clipped-ratio updates on one batch; returns averaged diagnostics and the optimizer
    steps taken (``lm_steps``, ``head_steps``).

    ``trainer_logprobs``: the trainer's own log-probs of the batch at the sampling temperatures when
    another engine (vLLM) sampled it; they are pi_old, and with ``algorithm.rollout_is`` = tis each
    token's term is weighted by min(pi_old / pi_engine, rollout_is_cap).
    """
    algo = config.algorithm
    trains_lm = c.controller.trains_lm(step)
    sampled_logprobs = batch.logprobs
    train_temperatures = c.controller.training_temperatures(batch.temperatures)
    off_policy = train_temperatures is not batch.temperatures  # e.g. EAD's T = 1 mode
    if off_policy:
        batch = replace(batch, temperatures=train_temperatures)
    old_logprobs = batch.logprobs if trainer_logprobs is None or off_policy else trainer_logprobs
    if (algo.recompute_old_logprobs and trainer_logprobs is None) or off_policy:
        with torch.no_grad():
            old_logprobs = score(c.policy, batch).logprobs
    is_cap = None
    if off_policy:  # w_t = min(pi_old(y_t | T_train) / pi(y_t | T_sampled), C)
        is_cap = c.controller.is_cap
    elif trainer_logprobs is not None and rollout_is(config) == "tis":  # w_t = min(pi_old / pi_engine, C)
        is_cap = algo.rollout_is_cap
    importance = None
    if is_cap is not None:
        weights = truncated_importance_weights(old_logprobs, sampled_logprobs, is_cap)
        importance = (weights, (old_logprobs - sampled_logprobs > math.log(is_cap)).float())
    ref_logprobs = None
    if c.reference is not None:
        with torch.no_grad():
            ref_logprobs = score(c.reference, batch).logprobs

    pg_mask = high_entropy_mask(batch.entropies, batch.completion_mask, algo.top_entropy_fraction)
    kept, overlong = None, {}  # DAPO's overlong filtering: completions cut at max_new_tokens weigh nothing
    if algo.mask_truncated_completions:
        kept = (~truncated_completions(c.policy, batch, config.rollout.max_new_tokens)).float()
        overlong = {"truncated_fraction": 1.0 - kept.mean().item()}
    totals: dict[str, float] = {}
    updates = lm_steps = head_steps = 0
    logits_for_controller = []
    for epoch in range(algo.num_iterations):
        order = torch.randperm(len(batch), generator=generator, device=generator.device)  # the model's device
        for index in order.chunk(algo.num_minibatches):
            mb = batch.select(index)
            mask = mb.completion_mask if kept is None else mb.completion_mask * kept[index].unsqueeze(-1)
            share = c.dist.token_share(mask)  # 1.0 in one process; see thermorl.runtime.distributed
            with torch.set_grad_enabled(trains_lm):
                scored = score(c.policy, mb)
            metrics: dict[str, float] = {}
            loss = torch.zeros((), device=mask.device)
            if trains_lm:
                loss, diagnostics = token_objective(
                    scored.logprobs, old_logprobs[index], advantages[index], mask, epsilon=algo.epsilon,
                    epsilon_high=algo.epsilon_high, aggregation=algo.loss_aggregation, loss=algo.policy_loss,
                    pg_mask=pg_mask[index],
                    importance=None if importance is None else (importance[0][index], importance[1][index]),
                    ref_logprobs=None if ref_logprobs is None else ref_logprobs[index], beta=algo.beta,
                    kl_estimator=algo.kl_estimator, token_share=share, entropies=scored.entropies,
                    entropy_coef=algo.entropy_coef,
                )
                metrics.update({name: value.item() for name, value in diagnostics.items()})
            head_loss, head_metrics = c.controller.policy_loss(
                scored.hidden, mb.actions, advantages[index], mask, step
            )
            metrics.update(head_metrics)
            if head_loss is not None:
                loss = loss + head_loss * share
            if loss.requires_grad:
                metrics.update(_optimizer_step(c, loss, trains_lm, head_loss is not None, algo.max_grad_norm))
                lm_steps += trains_lm
                head_steps += head_loss is not None and c.head_optimizer is not None
            metrics["loss"] = loss.item()
            if epoch == 0 and c.controller.needs_logits_after_update:
                logits_for_controller.append((index, scored.logits.detach()))
            metrics = c.dist.reduce_metrics(metrics, share)
            for key, value in metrics.items():
                totals[key] = totals.get(key, 0.0) + value
            updates += 1

    c.controller.after_update(
        batch.actions, advantages, batch.completion_mask, batch.completion_ids,
        _reassemble(logits_for_controller, len(batch)),
    )
    c.dist.sync_controller(c.controller)
    return {
        **{key: value / updates for key, value in totals.items()}, **overlong,
        "lm_steps": lm_steps, "head_steps": head_steps,
    }


def _optimizer_step(c: Components, loss: torch.Tensor, trains_lm: bool, trains_head: bool, max_norm: float) -> dict:
    """Backward, average over processes, clip the LM's and the head's gradients separately, step."""
    if not c.dist.agree(bool(torch.isfinite(loss))):  # every process skips, none waits in backward
        raise NonFiniteError("non-finite loss")
    c.lm_optimizer.zero_grad(set_to_none=True)
    if c.head_optimizer is not None:
        c.head_optimizer.zero_grad(set_to_none=True)
    loss.backward()
    c.dist.average_gradients(c.policy.model, c.controller.module)
    metrics = {}
    if max_norm > 0:
        metrics["grad_norm"] = fsdp.clip_grad_norm(list(c.policy.model.parameters()), max_norm).item()
        if trains_head and c.controller.module is not None:  # the head is replicated, never sharded
            metrics["head_grad_norm"] = torch.nn.utils.clip_grad_norm_(c.controller.module.parameters(), max_norm).item()
    if not finite_gradients(c):
        raise NonFiniteError("non-finite gradients")
    if trains_lm:
        c.lm_optimizer.step()
    if trains_head and c.head_optimizer is not None:
        c.head_optimizer.step()
    return metrics


def rollout_is(config: Config) -> str:
    """algorithm.rollout_is with 'auto' resolved: tis with the vLLM engine, none with thermorl's own."""
    if config.algorithm.rollout_is == "auto":
        return "tis" if config.rollout.engine == "vllm" else "none"
    return config.algorithm.rollout_is


def _reassemble(parts: list[tuple[torch.Tensor, torch.Tensor]], rows: int) -> torch.Tensor | None:
    """The training logits of every row of the batch from its minibatches (TAMPO's outer update reads them)."""
    if not parts:
        return None
    logits = torch.empty(rows, *parts[0][1].shape[1:], device=parts[0][1].device)
    for index, part in parts:
        logits[index] = part
    return logits


def batch_statistics(batch: RolloutBatch, rewards: torch.Tensor, group_size: int) -> dict[str, float]:
    """Reward, temperature, entropy and length statistics of the (global) batch; its groups are consecutive."""
    mask = batch.completion_mask
    tokens = mask.sum().clamp_min(1.0)
    grouped = rewards.view(-1, group_size)
    mean_temp = (batch.temperatures * mask).sum() / tokens
    var_temp = (((batch.temperatures - mean_temp) ** 2) * mask).sum() / tokens
    if torch.isnan(rewards).any():  # samples without a reward are left out of the reward statistics
        given = rewards[~torch.isnan(rewards)]
        spread = [g[~torch.isnan(g)] for g in grouped]
        reward_stats = {
            "reward_mean": given.mean().item() if len(given) else float("nan"),
            "reward_std": given.std().item() if len(given) > 1 else float("nan"),
            "zero_variance_groups": sum(len(g) < 2 or bool(g.std() == 0) for g in spread) / len(spread),
        }
    else:
        reward_stats = {
            "reward_mean": rewards.mean().item(),
            "reward_std": rewards.std().item(),
            "zero_variance_groups": (grouped.std(dim=1) == 0).float().mean().item(),
        }
    return {
        **reward_stats,
        "temperature_mean": mean_temp.item(),
        "temperature_std": var_temp.sqrt().item(),
        "entropy_mean": ((batch.entropies * mask).sum() / tokens).item(),
        "completion_length": mask.sum(-1).mean().item(),
    }
