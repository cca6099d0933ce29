"""Every GRPO equation against values computed by hand."""

import math

import pytest
import torch

from thermorl.algorithms import (
    aggregate,
    approx_kl,
    clipped_policy_loss,
    group_advantages,
    high_entropy_mask,
    kl_penalty,
    lr_factor,
    tempered_logprobs,
)


def test_group_advantages_std_normalised_by_hand():
    rewards = torch.tensor([1.0, 0.0, 0.0, 0.0, 1.0, 1.0, 1.0, 1.0])
    adv = group_advantages(rewards, group_size=4, scale=True, eps=0.0)
    # group 1: mean 0.25, unbiased std sqrt(((.75)^2 + 3 (.25)^2) / 3) = 0.5
    assert adv[:4].tolist() == pytest.approx([1.5, -0.5, -0.5, -0.5])
    # group 2 has no variance: advantage 0, not NaN
    assert adv[4:].tolist() == [0.0, 0.0, 0.0, 0.0]


def test_group_advantages_drgrpo_only_centres():
    rewards = torch.tensor([3.0, 1.0, 2.0, 2.0])
    adv = group_advantages(rewards, group_size=2, scale=False)
    assert adv.tolist() == pytest.approx([1.0, -1.0, 0.0, 0.0])


def test_samples_without_a_reward_are_left_out_of_their_groups_advantage_by_hand():
    nan = float("nan")
    rewards = torch.tensor([1.0, nan, 0.0, 0.0, nan, 1.0, nan, nan, 2.0, 2.0, nan, 1.0])
    adv = group_advantages(rewards, group_size=4, scale=True, eps=0.0)
    # group 1: rewards (1, 0, 0): mean 1/3, unbiased std sqrt((4/9 + 1/9 + 1/9) / 2) = sqrt(1/3)
    third = 1 / math.sqrt(3)
    assert adv[:4].tolist() == pytest.approx([(2 / 3) / third, 0.0, -(1 / 3) / third, -(1 / 3) / third])
    # group 2: one reward left (1.0): no spread, every advantage 0; group 3: (2, 2, 1): mean 5/3, std sqrt(1/3)
    assert adv[4:8].tolist() == [0.0, 0.0, 0.0, 0.0]
    assert adv[8:].tolist() == pytest.approx([(1 / 3) / third, (1 / 3) / third, 0.0, -(2 / 3) / third])
    # the same group without its missing samples gives the same advantages to the others
    assert adv[[0, 2, 3]].tolist() == pytest.approx(group_advantages(torch.tensor([1.0, 0.0, 0.0]), 3, eps=0.0).tolist())
    centred = group_advantages(rewards, group_size=4, scale=False)
    assert centred[:4].tolist() == pytest.approx([2 / 3, 0.0, -1 / 3, -1 / 3])
    assert not torch.isnan(adv).any() and not torch.isnan(centred).any()


def test_clipped_loss_by_hand():
    old = torch.zeros(1, 4)
    new = torch.log(torch.tensor([[1.5, 0.5, 1.1, 0.7]]))
    loss, clipped = clipped_policy_loss(new, old, torch.tensor([1.0]), epsilon_low=0.2, epsilon_high=0.28)
    # A > 0: -min(r, clip(r, 0.8, 1.28))
    assert loss[0].tolist() == pytest.approx([-1.28, -0.5, -1.1, -0.7])
    assert clipped[0].tolist() == [1.0, 0.0, 0.0, 0.0]
    loss, clipped = clipped_policy_loss(new, old, torch.tensor([-2.0]), epsilon_low=0.2, epsilon_high=0.28)
    # A < 0: -min(-2 r, -2 clip(r)) = 2 max(r, clip(r))
    assert loss[0].tolist() == pytest.approx([3.0, 1.6, 2.2, 1.6])
    assert clipped[0].tolist() == [0.0, 1.0, 0.0, 1.0]


def test_clipped_loss_gradient_is_zero_when_clipped():
    new = torch.log(torch.tensor([[1.5]])).requires_grad_()
    loss, _ = clipped_policy_loss(new, torch.zeros(1, 1), torch.tensor([1.0]), 0.2, 0.28)
    loss.sum().backward()
    assert new.grad.item() == 0.0


def test_kl_estimators_by_hand():
    logp = torch.tensor([math.log(0.5)])
    ref = torch.tensor([math.log(0.25)])
    assert kl_penalty(logp, ref, "k1").item() == pytest.approx(math.log(2))
    # k3 = r - 1 - log r with r = pi_ref / pi = 0.5
    assert kl_penalty(logp, ref, "k3").item() == pytest.approx(0.5 - 1 - math.log(0.5))
    assert kl_penalty(logp, logp, "k3").item() == 0.0


def test_aggregation_modes_differ_by_hand():
    values = torch.tensor([[1.0, 1.0, 1.0, 1.0], [4.0, 0.0, 0.0, 0.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0, 1.0], [1.0, 0.0, 0.0, 0.0]])
    assert aggregate(values, mask, "token_mean").item() == pytest.approx(8 / 5)
    assert aggregate(values, mask, "seq_mean").item() == pytest.approx((1 + 4) / 2)


def test_approx_kl_is_zero_on_policy():
    logp = torch.randn(3, 5)
    assert approx_kl(logp, logp, torch.ones(3, 5)).item() == 0.0


def test_tempered_logprobs_by_hand():
    logits = torch.tensor([[2.0, 0.0]])
    token = torch.tensor([0])
    logp, entropy = tempered_logprobs(logits, token, torch.tensor([2.0]))
    # softmax([1, 0])[0] = e / (e + 1)
    p = math.e / (math.e + 1)
    assert logp.item() == pytest.approx(math.log(p))
    assert entropy.item() == pytest.approx(-(p * math.log(p) + (1 - p) * math.log(1 - p)))


def test_lr_factor_by_hand():
    # constant: linear warm-up over 4 steps, then 1
    assert [lr_factor(s, 10, 4, "constant") for s in (1, 2, 4, 9)] == pytest.approx([0.25, 0.5, 1.0, 1.0])
    # cosine without warm-up: 1 at the first step, 1/2 half way, (1 + cos(pi * 3 / 4)) / 2 at the last of 4
    assert [lr_factor(s, 4, 0, "cosine") for s in (1, 3, 4)] == pytest.approx(
        [1.0, 0.5, (1 + math.cos(math.pi * 0.75)) / 2]
    )
    # the two multiply: step 2 of a 2-step warm-up on a 4-step cosine
    assert lr_factor(2, 4, 2, "cosine") == pytest.approx((1 + math.cos(math.pi / 4)) / 2)
    # past the end (a resumed run given fewer steps) stays at the floor instead of rising again
    assert lr_factor(9, 4, 0, "cosine") == pytest.approx(0.0)
    with pytest.raises(ValueError, match="linear"):
        lr_factor(1, 4, 0, "linear")


def test_high_entropy_mask_keeps_the_top_fraction_of_generated_tokens():
    entropies = torch.tensor([[0.1, 0.9, 0.5, 7.0], [0.3, 0.8, 0.2, 0.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0, 0.0], [1.0, 1.0, 1.0, 1.0]])  # the 7.0 is padding
    # generated entropies sorted: 0.0 0.1 0.2 0.3 0.5 0.8 0.9; the 0.75-quantile is 0.65
    kept = high_entropy_mask(entropies, mask, 0.25)
    assert kept.tolist() == [[0.0, 1.0, 0.0, 0.0], [0.0, 1.0, 0.0, 0.0]]
    assert torch.equal(high_entropy_mask(entropies, mask, 1.0), mask)


def test_top_entropy_fraction_keeps_only_the_forking_tokens_in_the_loss():
    from thermorl.config import load_config
    from thermorl.engines.hf import encode_prompts, sample
    from thermorl.runtime.components import build_components
    from thermorl.runtime.update import grpo_update

    config = load_config(None, [
        "model.path=builtin:random", "model.hidden_size=32", "model.num_layers=1", "model.num_heads=2",
        "task.eval_size=10", "train.threads=1",
    ])
    c = build_components(config)
    generator = torch.Generator().manual_seed(0)
    prompt_ids, prompt_mask = encode_prompts(c.policy, ["3,7,2>23:"] * 4)
    batch = sample(c.policy, c.controller, prompt_ids, prompt_mask, 6, generator)
    mask = batch.completion_mask
    # rows 0 and 1 are the batch's high-entropy half, rows 2 and 3 the low-entropy half
    batch.entropies = torch.tensor([[2.0], [2.0], [0.1], [0.1]]).expand_as(mask).clone()
    config.algorithm.top_entropy_fraction = (mask[:2].sum() / mask.sum()).item()
    advantages = torch.tensor([1.0, -1.0, 5.0, 5.0])
    metrics = grpo_update(c, config, batch, advantages, 1, generator)
    # first update: ratio 1, so the token loss is -A on kept tokens, over every generated token
    kept = mask[:2].sum(-1)
    expected = -(advantages[:2] * kept).sum() / mask.sum()
    assert metrics["pg_loss"] == pytest.approx(expected.item(), abs=1e-6)
