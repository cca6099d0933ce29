"""The update of one GRPO step: mu epochs of minibatch steps on the sampled batch (DeepSeekMath, Alg. 1, l. 8-10).

Each minibatch is re-scored at the temperatures sampling used (or those the controller trains at), the
token objective (``algorithms.objective``) gives the LM loss, the controller adds its own loss, and the
LM's and the head's gradients are each clipped to ``algorithm.max_grad_norm`` (two norms, both logged).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import torch

from thermorl.algorithms.grpo import high_entropy_mask, truncated_importance_weights
from thermorl.algorithms.objective import token_objective
from thermorl.config import AlgorithmConfig, Config
from thermorl.config.registry import AGGREGATIONS
from thermorl.engines import RolloutBatch
from thermorl.engines.hf import distinct_prompts, truncated_completions
from thermorl.errors import NonFiniteError
from thermorl.models.policy import Policy
from thermorl.runtime import fsdp
from thermorl.runtime.components import Components, finite_gradients
from thermorl.runtime.correction import (
    CorrectionSpec, OldPolicy, combine_totals, correction_spec, head_logprobs, mismatch_report, old_policy,
    total_kind,
)
from thermorl.runtime.forward import Scored, score


def grpo_update(
    c: Components, config: Config, batch: RolloutBatch, advantages: torch.Tensor, step: int,
    generator: torch.Generator,
) -> dict[str, float]:
    """mu epochs of clipped-ratio updates on one batch; returns averaged diagnostics, the rollout-correction
    metrics and the optimizer steps taken (``lm_steps``, ``head_steps``).

    pi_old is the sampler's log-probs when the engine's log-probs are the trainer's (hf) and nothing asks
    for a recomputation; otherwise the trainer's own, with the rollout correction (``runtime.correction``).
    When the step makes one optimizer step, the trainer's pi_old and the correction weights come from the
    update's own forward pass, detached (``one_forward``); a separate no-grad pass gives them otherwise. An
    engine that records no entropies (vLLM) gets the trainer's written into ``batch.entropies``.
    """
    algo = config.algorithm
    trains_lm = c.controller.trains_lm(step)
    sampled_logprobs = batch.logprobs
    train_temperatures = c.controller.training_temperatures(batch.temperatures)
    off_policy = train_temperatures is not batch.temperatures  # e.g. EAD's T = 1 mode
    exact = engine_logprobs_are_the_trainers(c.engine)
    recomputes = not exact or algo.recompute_old_logprobs  # pi_old = the trainer's own log-probs
    rows = config.train.micro_batch_rows
    split = 0 < rows < len(batch)
    # the top-entropy mask of a vLLM batch needs its entropies before any loss: micro-batched, a pass of its own
    late_entropies = not exact and algo.top_entropy_fraction < 1.0
    one_forward = recomputes and not off_policy and single_optimizer_step(config) and not (split and late_entropies)
    spec = correction_spec(config) if recomputes else CorrectionSpec()
    chunk = 0 if c.controller.needs_logits_after_update else config.train.logit_chunk_tokens  # TAMPO reads logits
    old = None if recomputes else OldPolicy(batch.logprobs)
    if recomputes and not one_forward:
        scored = score_without_gradients(c.policy, batch, rows, chunk)
        old = old_policy(batch, scored.logprobs, head_logprobs(c.controller, scored.hidden, batch.actions), spec)
        if not exact:
            batch.entropies = scored.entropies
    if off_policy:  # pi_old at the training temperatures, w_t = min(pi_old(y_t | T_train) / pi(y_t | T_sampled), C)
        batch = replace(batch, temperatures=train_temperatures)
        at_train = score_without_gradients(c.policy, batch, rows, chunk).logprobs
        cap = c.controller.is_cap
        importance = (truncated_importance_weights(at_train, sampled_logprobs, cap),
                      (at_train - sampled_logprobs > math.log(cap)).float())
        old = replace(old, logprobs=at_train, weights=importance[0], outside=importance[1])
    ref_logprobs = None
    if c.reference is not None:
        ref_logprobs = score_without_gradients(c.reference, batch, rows, chunk).logprobs

    # the top-entropy mask needs the batch's entropies: one_forward without the sampler's has them after its pass
    late_pg_mask = one_forward and late_entropies
    kept, overlong = None, {}  # DAPO's overlong filtering: completions cut at max_new_tokens weigh nothing
    if algo.mask_truncated_completions:
        kept = (~truncated_completions(c.policy, batch, config.rollout.max_new_tokens)).float()
        overlong = {"truncated_fraction": 1.0 - kept.mean().item()}
    passes = Passes(
        batch=batch, advantages=advantages, head_advantages=c.controller.head_advantages(advantages, batch.group_ids),
        old=None if one_forward else old, spec=spec,
        pg_mask=None if late_pg_mask else high_entropy_mask(batch.entropies, batch.completion_mask,
                                                            algo.top_entropy_fraction),
        kept=kept, ref_logprobs=ref_logprobs, chunk=chunk, trains_lm=trains_lm,
        writes_entropies=one_forward and not exact, step=step,
    )
    token_scaled = AGGREGATIONS[algo.loss_aggregation].build.scaled_by_token_share
    totals: dict[str, float] = {}
    mismatch = {} if one_forward else old.totals  # the one-forward path adds up its micro-batches' totals
    updates = lm_steps = head_steps = 0
    logits_for_controller = []
    for epoch in range(algo.num_iterations):
        order = torch.randperm(len(batch), generator=generator, device=generator.device)  # the model's device
        for index in order.chunk(algo.num_minibatches):
            minibatch_mask = _loss_mask(batch, kept, index)
            share = c.dist.token_share(minibatch_mask)  # 1.0 in one process; see thermorl.runtime.distributed
            micros = micro_batches(index, rows, batch)
            metrics: dict[str, float] = {}
            loss_sum, backward, trains_head = 0.0, False, False
            _zero_grad(c)
            for micro in micros:
                # the micro-batch's part of its minibatch's loss: of the tokens (token means) or of the rows
                tokens_part = 1.0 if len(micros) == 1 else \
                    (_loss_mask(batch, kept, micro).sum() / minibatch_mask.sum().clamp_min(1.0)).item()
                loss_part = tokens_part if token_scaled else len(micro) / len(index)
                done = one_pass(c, algo, passes, micro, share, loss_part, tokens_part)
                mismatch = combine_totals(mismatch, done.mismatch)
                loss_sum += done.loss
                backward |= done.backward
                trains_head |= done.trains_head
                for key, value in done.metrics.items():  # the minibatch's means from its micro-batches'
                    weight = loss_part if key == "pg_loss" else tokens_part  # pg_loss: the loss's aggregation
                    metrics[key] = metrics.get(key, 0.0) + value * weight
                if epoch == 0 and c.controller.needs_logits_after_update:
                    logits_for_controller.append((micro, done.logits))
            if backward:
                metrics.update(_optimizer_step(c, trains_lm, trains_head, algo.max_grad_norm))
                lm_steps += trains_lm
                head_steps += trains_head and c.head_optimizer is not None
            metrics["loss"] = loss_sum
            metrics = c.dist.reduce_metrics(metrics, share, () if token_scaled else ("pg_loss",))
            for key, value in metrics.items():
                totals[key] = totals.get(key, 0.0) + value
            updates += 1

    c.controller.after_update(
        batch.actions, advantages, batch.completion_mask, batch.completion_ids,
        _reassemble(logits_for_controller, len(batch)),
    )
    c.dist.sync_controller(c.controller)
    mismatch = c.dist.combine(mismatch, {key: total_kind(key) for key in mismatch})  # the global batch's
    return {
        **{key: value / updates for key, value in totals.items()}, **overlong, **mismatch_report(mismatch),
        "lm_steps": lm_steps, "head_steps": head_steps,
    }


@dataclass
class Passes:
    """What every forward and backward pass of one update reads, settled before the first (``grpo_update``)."""

    batch: RolloutBatch
    advantages: torch.Tensor  # (N,) the LM's
    head_advantages: torch.Tensor  # the controller's (``head_advantages``)
    old: OldPolicy | None  # pi_old and the correction weights; None: each pass's own forward, detached
    spec: CorrectionSpec  # the rollout correction a pass's own pi_old gets
    pg_mask: torch.Tensor | None  # (N, T) the top-entropy mask; None: each pass's, from its own entropies
    kept: torch.Tensor | None  # (N,) DAPO's overlong filter (1 = kept), or None
    ref_logprobs: torch.Tensor | None  # (N, T) the reference model's, for the KL term
    chunk: int  # ``train.logit_chunk_tokens`` (0 for controllers that read the logits)
    trains_lm: bool
    writes_entropies: bool  # the engine recorded none (vLLM): the trainer's go into ``batch.entropies``
    step: int


@dataclass
class PassResult:
    """What one pass (``one_pass``) leaves for its minibatch to add up."""

    loss: float  # the pass's part of the minibatch's loss
    metrics: dict[str, float]  # the pass's own means (its minibatch's are weighted sums of these)
    mismatch: dict[str, float]  # its rollout-correction totals when it was its own pi_old, else empty
    backward: bool  # whether it accumulated gradients
    trains_head: bool  # whether the controller had a loss
    logits: torch.Tensor | None  # its training logits, detached (for controllers that read them)


def one_pass(
    c: Components, algo: AlgorithmConfig, passes: Passes, micro: torch.Tensor, share: float, loss_part: float,
    tokens_part: float,
) -> PassResult:
    """Forward and backward over rows ``micro``, gradients accumulated: the LM's token objective scaled by
    ``loss_part`` (the pass's part of its minibatch's loss), the controller's loss by ``share`` (the minibatch's
    part of the global batch's tokens) x ``tokens_part`` (the pass's part of the minibatch's tokens)."""
    batch = passes.batch
    mb, mask = batch.select(micro), _loss_mask(batch, passes.kept, micro)
    with torch.set_grad_enabled(passes.trains_lm):
        scored = score(c.policy, mb, chunk_tokens=passes.chunk)
    mismatch: dict[str, float] = {}
    if passes.old is None:  # the one optimizer step's own forward is pi_old, detached (ratio exactly 1)
        old = old_policy(mb, scored.logprobs, head_logprobs(c.controller, scored.hidden, mb.actions), passes.spec)
        mismatch = old.totals
        if passes.writes_entropies:
            batch.entropies[micro] = scored.entropies.detach()
            mb.entropies = scored.entropies.detach()
    else:
        old = passes.old.select(micro)
    pg_mask = high_entropy_mask(mb.entropies, mb.completion_mask, algo.top_entropy_fraction) \
        if passes.pg_mask is None else passes.pg_mask[micro]
    metrics: dict[str, float] = {}
    loss = torch.zeros((), device=mask.device)
    if passes.trains_lm:
        loss, diagnostics = token_objective(
            scored.logprobs, old.logprobs, passes.advantages[micro], mask, epsilon=algo.epsilon,
            epsilon_high=algo.epsilon_high, aggregation=algo.loss_aggregation, loss=algo.policy_loss,
            pg_mask=pg_mask, importance=old.importance(),
            ref_logprobs=None if passes.ref_logprobs is None else passes.ref_logprobs[micro], beta=algo.beta,
            kl_estimator=algo.kl_estimator, token_share=share,
            entropies=scored.entropies, entropy_coef=algo.entropy_coef,
        )
        metrics.update({name: value.item() for name, value in diagnostics.items()})
        loss = loss * loss_part
    head_loss, head_metrics = c.controller.policy_loss(
        scored.hidden, old.head_actions(mb.actions), passes.head_advantages[micro], mask, passes.step
    )
    metrics.update(head_metrics)
    if head_loss is not None:
        loss = loss + head_loss * (share * tokens_part)
    if loss.requires_grad:
        _backward(c, loss)
    logits = None if scored.logits is None else scored.logits.detach()
    return PassResult(loss.item(), metrics, mismatch, loss.requires_grad, head_loss is not None, logits)


@torch.no_grad()
def score_without_gradients(policy: Policy, batch: RolloutBatch, rows: int, chunk: int) -> Scored:
    """``score`` of the whole batch without gradients (pi_old's pass, the reference model's), in passes of
    ``rows`` rows (``train.micro_batch_rows``) like the update's, so its memory is bounded the same way; the
    outputs in batch order."""
    parts = micro_batches(torch.arange(len(batch), device=batch.completion_ids.device), rows, batch)
    if len(parts) == 1:
        return score(policy, batch, chunk_tokens=chunk)
    scored = [score(policy, batch.select(part), chunk_tokens=chunk) for part in parts]
    order = torch.cat(parts).argsort()
    whole = lambda name: torch.cat([getattr(s, name) for s in scored])[order]  # noqa: E731
    return Scored(whole("logprobs"), whole("entropies"), whole("hidden"),
                  None if scored[0].logits is None else whole("logits"))


def micro_batches(index: torch.Tensor, rows: int, batch: RolloutBatch | None = None) -> list[torch.Tensor]:
    """A minibatch's rows in passes of ``rows`` (``train.micro_batch_rows``; 0 = one pass).

    Split, the rows go in one of two orders, whichever leaves fewer positions to run (``pass_positions``;
    batch order when no ``batch`` is given): batch order keeps whole prompt groups together (one shared prompt
    pass each); completion-length order puts rows of like length together, so each pass is cut to its own
    longest completion (``runtime.forward.trim_padding``). Either gives the same update (the loss is a sum over
    passes, tested); only the cost differs. Long completions of spread lengths favour length order, long
    prompts with short completions batch order."""
    if rows <= 0 or rows >= len(index):
        return [index]
    in_batch_order = list(index.sort().values.split(rows))
    if batch is None:
        return in_batch_order
    lengths = batch.completion_mask[index].sum(-1)
    by_length = list(index[torch.argsort(lengths, stable=True)].split(rows))
    return min(in_batch_order, by_length, key=lambda parts: pass_positions(batch, parts))


def pass_positions(batch: RolloutBatch, parts: list[torch.Tensor]) -> int:
    """The positions the passes over ``parts`` run: per pass, each distinct prompt once (its longest prompt's
    width) and every row to the pass's longest completion."""
    total = 0
    for part in parts:
        prompt_mask = batch.prompt_mask[part]
        distinct = len(distinct_prompts(batch.prompt_ids[part], prompt_mask)[0])
        total += distinct * int(prompt_mask.sum(-1).max()) + len(part) * int(batch.completion_mask[part].sum(-1).max())
    return total


def single_optimizer_step(config: Config) -> bool:
    """Whether a step makes one optimizer step per rollout (``num_iterations`` = ``num_minibatches`` = 1), so
    pi_old is the update's own forward, unless ``algorithm.separate_old_logprob_pass`` asks for a pass of its own."""
    algo = config.algorithm
    return algo.num_iterations == 1 and algo.num_minibatches == 1 and not algo.separate_old_logprob_pass


def engine_logprobs_are_the_trainers(engine: object) -> bool:
    """Whether the engine's sampling log-probs are the trainer's own numbers (hf: the same model and code)."""
    return getattr(engine, "exact_logprobs", True)


def _loss_mask(batch: RolloutBatch, kept: torch.Tensor | None, index: torch.Tensor) -> torch.Tensor:
    """The completion mask of rows ``index``, with DAPO's overlong filtering (``kept``) applied."""
    mask = batch.completion_mask[index]
    return mask if kept is None else mask * kept[index].unsqueeze(-1)


def _zero_grad(c: Components) -> None:
    c.lm_optimizer.zero_grad(set_to_none=True)
    if c.head_optimizer is not None:
        c.head_optimizer.zero_grad(set_to_none=True)


def _backward(c: Components, loss: torch.Tensor) -> None:
    """Accumulate one (micro-batch's) loss's gradients; every process skips a non-finite one, none waits."""
    if not c.dist.agree(bool(torch.isfinite(loss))):
        raise NonFiniteError("non-finite loss")
    loss.backward()


def _optimizer_step(c: Components, trains_lm: bool, trains_head: bool, max_norm: float) -> dict:
    """Average the accumulated gradients over processes, clip the LM's and the head's separately, step."""
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
