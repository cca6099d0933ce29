"""One forward per step: with one optimizer step per rollout, pi_old and the rollout-correction weights come
from the update's own forward pass; the separate no-grad pass gives the same loss, gradients and metrics.
Micro-batches (``train.micro_batch_rows``): gradients accumulated over passes of a few rows give the update of
one pass over the whole minibatch, and the mismatch metrics of the whole batch."""

from __future__ import annotations

import dataclasses
import random

import pytest
import torch

from thermorl.config import load_config
from thermorl.runtime.components import build_components
from thermorl.runtime.update import grpo_update

TINY = [  # the shipped warm start; the trainer's pi_old (recomputed) and token TIS, as with another engine
    "model.path=builtin", "task.eval_size=4", "rollout.prompts_per_step=4", "rollout.group_size=2",
    "rollout.max_new_tokens=10", "task.reward_workers=0", "algorithm.recompute_old_logprobs=true",
    "algorithm.rollout_correction.mode=token_truncate", "algorithm.rollout_correction.clip_max=1.3",
]


UNEVEN = torch.tensor([1, 10, 2, 9, 3, 8, 10, 4])  # completion lengths far from equal within each micro-batch of 3


def _update(controller: str, separate: bool, engine_noise: float, extra: tuple[str, ...] = (), uneven: bool = False):
    """One grpo_update from the same start on the same batch; the batch's recorded (engine) log-probs are
    shifted by seeded noise, as if another engine with other numerics had sampled it, so the correction
    weights differ from 1 and some are capped."""
    config = load_config(None, [*TINY, f"temperature.controller={controller}",
                                f"algorithm.separate_old_logprob_pass={str(separate).lower()}", *extra])
    c = build_components(config)
    problems = [p for p in c.task.train_problems(random.Random(0), 4) for _ in range(2)]
    batch = c.engine.generate([p.prompt for p in problems], c.controller, torch.Generator().manual_seed(0),
                              group_ids=torch.arange(8) // 2)
    if uneven:  # completions cut to UNEVEN lengths, so a micro-batch's share of the tokens is not its share of rows
        keep = (torch.arange(batch.completion_mask.shape[1]) < UNEVEN.unsqueeze(-1)).float()
        batch = dataclasses.replace(batch, completion_mask=batch.completion_mask * keep)
    noise = torch.Generator().manual_seed(1)
    shift = lambda x: x + engine_noise * torch.randn(x.shape, generator=noise) * batch.completion_mask  # noqa: E731
    batch = dataclasses.replace(batch, logprobs=shift(batch.logprobs))
    if batch.actions.logprob is not None:
        batch = dataclasses.replace(batch, actions=dataclasses.replace(batch.actions, logprob=shift(batch.actions.logprob)))
    advantages = torch.tensor([1.0, -1.0, 0.5, -0.5, 2.0, -2.0, 1.0, -1.0])
    metrics = grpo_update(c, config, batch, advantages, 1, torch.Generator().manual_seed(0))
    modules = [c.policy.model] + ([c.controller.module] if c.controller.module is not None else [])
    grads = {f"{i}.{n}": p.grad.clone() for i, m in enumerate(modules) for n, p in m.named_parameters()
             if p.grad is not None}
    weights = {f"{i}.{n}": p.detach().clone() for i, m in enumerate(modules) for n, p in m.named_parameters()}
    return metrics, grads, weights


@pytest.mark.parametrize("controller", ["fixed", "introspective"])
def test_one_forward_update_equals_the_recomputation_update(controller):
    one, one_grads, one_weights = _update(controller, separate=False, engine_noise=0.3)
    two, two_grads, two_weights = _update(controller, separate=True, engine_noise=0.3)
    assert set(one) == set(two)
    assert 0.0 < one["is_clipped_fraction"] < 1.0  # the LM's weights are not all 1: capped ones among them
    assert one["rollout_logprob_diff_mean"] > 0.1
    if controller == "introspective":
        assert one["temp_is_weight_mean"] != pytest.approx(1.0, abs=1e-3)  # the head is corrected too
        assert one["rollout_head_logprob_diff_mean"] > 0.1
        assert one["head_steps"] == 1
    _assert_same_update((one, one_grads, one_weights), (two, two_grads, two_weights))


def _assert_same_update(first, second):
    """Two updates' metrics, gradients and stepped weights agree (rel 1e-4: float reordering only)."""
    (metrics, grads, weights), (other_metrics, other_grads, other_weights) = first, second
    for key in metrics:
        assert other_metrics[key] == pytest.approx(metrics[key], rel=1e-4, abs=1e-6), key
    assert set(grads) == set(other_grads) and len(grads) > 0
    for name in grads:
        torch.testing.assert_close(other_grads[name], grads[name], rtol=1e-4, atol=1e-6, msg=name)
    for name in weights:
        torch.testing.assert_close(other_weights[name], weights[name], rtol=1e-4, atol=1e-6, msg=name)


@pytest.mark.parametrize("aggregation, separate", [("token_mean", False), ("seq_mean", False), ("token_mean", True)])
@pytest.mark.parametrize("controller", ["fixed", "introspective"])
def test_micro_batches_accumulate_the_one_pass_update(controller, aggregation, separate):
    """3 passes of 3, 3 and 2 rows (uneven token counts) = one pass over the 8 rows: the loss, every metric
    (the mismatch metrics of the whole batch included), the gradients and the stepped weights; with a separate
    pi_old pass, that pass in micro-batches too."""
    extra = (f"algorithm.loss_aggregation={aggregation}",)
    whole = _update(controller, separate, 0.3, extra, uneven=True)
    split = _update(controller, separate, 0.3, (*extra, "train.micro_batch_rows=3"), True)
    assert set(whole[0]) == set(split[0]) and whole[0]["lm_steps"] == split[0]["lm_steps"] == 1
    assert whole[0]["rollout_logprob_diff_max"] > 0.3 and 0.0 < whole[0]["rollout_token_capped_fraction"] < 1.0
    _assert_same_update(whole, split)


def test_the_micro_batches_above_weigh_tokens_and_rows_differently():
    """The comparison above can fail: in its micro-batches of 3 rows the shares of tokens and of rows differ by
    far more than its tolerance, so weighing one as the other (or every micro-batch alike) would be seen."""
    from thermorl.runtime.update import micro_batches

    parts = micro_batches(torch.arange(8), 3)
    assert [len(p) for p in parts] == [3, 3, 2]
    token_shares = [UNEVEN[p].sum().item() / UNEVEN.sum().item() for p in parts]
    row_shares = [len(p) / 8 for p in parts]
    assert max(abs(t - r) for t, r in zip(token_shares, row_shares)) > 0.05
    token_mean, _, _ = _update("fixed", False, 0.3, ("algorithm.loss_aggregation=token_mean",), uneven=True)
    seq_mean, _, _ = _update("fixed", False, 0.3, ("algorithm.loss_aggregation=seq_mean",), uneven=True)
    assert token_mean["loss"] != pytest.approx(seq_mean["loss"], rel=1e-2)


def test_micro_batches_take_the_order_with_fewer_positions_to_run():
    """Spread completion lengths and short prompts: rows go by length (each pass cut to its longest row);
    long prompts and equal completions: batch order (whole groups, one prompt pass each). Either way every
    row is in exactly one pass."""
    from thermorl.engines import RolloutBatch
    from thermorl.runtime.update import micro_batches, pass_positions

    def batch(prompt_len: int, lengths: list[int]) -> RolloutBatch:
        rows, width = len(lengths), max(lengths)
        prompt_ids = (torch.arange(rows) // 2).unsqueeze(1).repeat(1, prompt_len) + 5  # groups of 2 rows
        mask = (torch.arange(width) < torch.tensor(lengths).unsqueeze(1)).float()
        zeros = torch.zeros(rows, width)
        return RolloutBatch(prompt_ids, torch.ones_like(prompt_ids), torch.zeros(rows, width, dtype=torch.long), mask,
                            zeros + 1, zeros, zeros, torch.arange(rows) // 2)

    spread = batch(2, [1, 30, 2, 29, 3, 28, 30, 4])
    parts = micro_batches(torch.arange(8), 4, spread)
    assert sorted(torch.cat(parts).tolist()) == list(range(8))
    assert [sorted(spread.completion_mask[p].sum(-1).int().tolist()) for p in parts] == [[1, 2, 3, 4], [28, 29, 30, 30]]
    assert pass_positions(spread, parts) < pass_positions(spread, micro_batches(torch.arange(8), 4))
    long_prompts = batch(50, [10, 9, 10, 10, 8, 10, 10, 7])
    assert [p.tolist() for p in micro_batches(torch.arange(8), 4, long_prompts)] == [[0, 1, 2, 3], [4, 5, 6, 7]]


def test_the_no_grad_passes_run_in_micro_batches_and_give_the_whole_pass(monkeypatch):
    """pi_old's separate pass (and the reference model's) scores the batch in passes of ``micro_batch_rows``
    rows, so the update's memory bound holds there too, and returns the whole pass's outputs in batch order."""
    from thermorl.runtime import update
    from thermorl.runtime.forward import score

    config = load_config(None, TINY)
    c = build_components(config)
    problems = [p for p in c.task.train_problems(random.Random(0), 4) for _ in range(2)]
    batch = c.engine.generate([p.prompt for p in problems], c.controller, torch.Generator().manual_seed(0),
                              group_ids=torch.arange(8) // 2)
    keep = (torch.arange(batch.completion_mask.shape[1]) < UNEVEN.unsqueeze(-1)).float()
    batch = dataclasses.replace(batch, completion_mask=batch.completion_mask * keep)
    sizes = []
    monkeypatch.setattr(update, "score", lambda policy, b, **kw: sizes.append(len(b)) or score(policy, b, **kw))
    parts = update.score_without_gradients(c.policy, batch, 3, 0)
    assert sorted(sizes) == [2, 3, 3]
    with torch.no_grad():
        whole = score(c.policy, batch)
    valid = batch.completion_mask.bool()
    for name in ("logprobs", "entropies", "hidden", "logits"):
        torch.testing.assert_close(getattr(parts, name)[valid], getattr(whole, name)[valid], rtol=1e-5, atol=1e-5)
