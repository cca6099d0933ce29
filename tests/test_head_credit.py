"""introspective credit=signal: the head is credited with its group's learning signal, not the token reward."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from thermorl.algorithms.hierarchical import group_signal_advantages
from thermorl.config import load_config
from thermorl.engines.hf import encode_prompts, sample
from thermorl.runtime.components import build_components
from thermorl.runtime.update import grpo_update

TINY = ["model.path=builtin:random", "model.hidden_size=32", "model.num_layers=1", "model.num_heads=2",
        "rollout.group_size=4", "temperature.controller=introspective", "temperature.introspective.kl_coef=0"]


def test_group_signal_credit_is_hand_computed():
    # groups named 5, 2, 9 (any ids, any order): no variance, variance, variance
    advantages = torch.tensor([0.0, 0.0, 0.7, -0.7, -1.0, 1.0])
    group_ids = torch.tensor([5, 5, 2, 2, 9, 9])
    # s = (0, 1, 1), batch rate 2/3: -2/3 for the zero-variance group, +1/3 for the others
    expected = torch.tensor([-2 / 3, -2 / 3, 1 / 3, 1 / 3, 1 / 3, 1 / 3])
    assert torch.allclose(group_signal_advantages(advantages, group_ids), expected)
    # one nonzero advantage is enough (Dr. GRPO's r - mean is also zero exactly in zero-variance groups)
    assert group_signal_advantages(torch.tensor([0.0, 0.0, 0.0, 0.3]), torch.tensor([0, 0, 1, 1])).tolist() == \
        pytest.approx([-0.5, -0.5, 0.5, 0.5])


@pytest.mark.parametrize("credit", ["reward", "signal"])
def test_head_follows_the_credit_it_is_given(credit):
    """Every group carries signal, so credit=signal gives each row 0 (no preference: no gradient) while
    credit=reward moves it; with half the groups silent, credit=signal moves it too."""
    config = load_config(None, [*TINY, f"temperature.introspective.credit={credit}"])
    c = build_components(config)
    with torch.no_grad():
        c.controller.head.out.weight.normal_(0, 1, generator=torch.Generator().manual_seed(3))
    prompts = [p for p in ["3,7,2>23:", "5,3,9>12:", "8,2,1>6:", "4,4,6>40:"] for _ in range(4)]
    ids, mask = encode_prompts(c.policy, prompts)
    batch = sample(c.policy, c.controller, ids, mask, 8, torch.Generator().manual_seed(0))
    batch = dataclasses.replace(batch, group_ids=torch.arange(16) // 4)
    mixed = torch.tensor([1.0, -1.0, 0.5, -0.5] * 4)  # every group has reward variance
    half = mixed * (torch.arange(16) < 8)  # groups 2 and 3 carry none
    for advantages, head_moves in ((mixed, credit == "reward"), (half, True)):
        before = [p.detach().clone() for p in c.controller.module.parameters()]
        grpo_update(c, config, batch, advantages, 1, torch.Generator().manual_seed(1))
        # a credited head moves by ~lr = 1e-3 (Adam's first step); an uncredited one only by AdamW's weight
        # decay, lr * 0.01 * |w| < 1e-4
        change = max((b - p).abs().max().item() for b, p in zip(before, c.controller.module.parameters()))
        assert (change > 2e-4) is head_moves, change
