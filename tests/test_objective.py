"""The token objective is one pure function with registered variants; the head's gradients are clipped."""

from __future__ import annotations

import pytest
import torch

from thermorl.algorithms.grpo import aggregate, group_advantages
from thermorl.algorithms.objective import advantages, token_objective
from thermorl.config import ADVANTAGES, load_config

TINY = ["model.path=builtin:random", "model.hidden_size=32", "model.num_layers=1", "model.num_heads=2",
        "task.eval_size=10", "train.threads=1"]


def test_advantages_follow_the_group_ids_not_the_row_order():
    rewards = torch.tensor([1.0, 0.0, 3.0, 5.0, 0.0, 7.0])
    group_ids = torch.tensor([0, 1, 0, 1, 0, 1])  # two interleaved groups of three
    got = advantages("drgrpo", rewards, group_ids)
    assert got.tolist() == pytest.approx([-1 / 3, -4.0, 5 / 3, 1.0, -4 / 3, 3.0])
    contiguous = torch.tensor([0, 0, 1, 1, 2, 2])
    assert torch.equal(advantages("grpo", rewards, contiguous), group_advantages(rewards, 2))
    with pytest.raises(ValueError, match="every group needs as many rows"):
        advantages("grpo", rewards, torch.tensor([0, 0, 0, 1, 1, 2]))


def test_a_registered_advantage_estimator_is_selected_by_config():
    @ADVANTAGES.register("rank")
    def rank(rewards, group_ids):
        return rewards.argsort().argsort().float()

    try:
        assert load_config(None, ["algorithm.advantage=rank"]).algorithm.advantage == "rank"
        assert advantages("rank", torch.tensor([3.0, 1.0, 2.0]), torch.zeros(3)).tolist() == [2.0, 0.0, 1.0]
    finally:
        del ADVANTAGES["rank"]


def test_token_objective_by_hand():
    logprobs = torch.log(torch.tensor([[0.5, 0.25], [0.5, 0.5]]))
    old = torch.log(torch.tensor([[0.25, 0.25], [0.5, 0.5]]))  # ratio 2 on the first token
    mask = torch.tensor([[1.0, 1.0], [1.0, 0.0]])
    adv = torch.tensor([1.0, -1.0])
    loss, diagnostics = token_objective(logprobs, old, adv, mask, epsilon=0.2, epsilon_high=0.28)
    # token losses: -min(2, 1.28) = -1.28, -1, +1 (the padded token is masked out)
    assert loss.item() == pytest.approx((-1.28 - 1.0 + 1.0) / 3)
    assert diagnostics["clip_fraction"].item() == pytest.approx(1 / 3)
    seq, _ = token_objective(logprobs, old, adv, mask, epsilon=0.2, epsilon_high=0.28, aggregation="seq_mean",
                             token_share=0.5)  # a sequence mean is not rescaled by the token share
    assert seq.item() == pytest.approx(((-1.28 - 1.0) / 2 + 1.0) / 2)
    ref = old.clone()
    with_kl, diagnostics = token_objective(logprobs, old, adv, mask, epsilon=0.2, epsilon_high=0.28,
                                           ref_logprobs=ref, beta=0.5, kl_estimator="k1")
    kl = aggregate(logprobs - ref, mask)
    assert diagnostics["kl_ref"].item() == pytest.approx(kl.item())
    assert with_kl.item() == pytest.approx(loss.item() + 0.5 * kl.item())


def test_the_head_gradients_are_clipped_to_their_own_norm_and_logged():
    from thermorl.engines.hf import encode_prompts, sample
    from thermorl.runtime.components import build_components
    from thermorl.runtime.update import grpo_update

    config = load_config(None, TINY + ["temperature.controller=introspective", "rollout.group_size=4",
                                       "algorithm.max_grad_norm=0.001"])
    c = build_components(config)
    with torch.no_grad():  # a head whose output depends on the hidden state
        c.controller.head.out.weight.normal_(generator=torch.Generator().manual_seed(1))
    prompt_ids, prompt_mask = encode_prompts(c.policy, ["3,7,2>23:", "4,4,1>9:"] * 2)
    generator = torch.Generator().manual_seed(0)
    batch = sample(c.policy, c.controller, prompt_ids, prompt_mask, 8, generator)
    metrics = grpo_update(c, config, batch, torch.tensor([1.0, -1.0, 0.5, -0.5]), 1, generator)
    assert metrics["head_grad_norm"] > 0.001 and metrics["grad_norm"] > 0.001  # norms before clipping
    head_norm = torch.stack([p.grad.norm() for p in c.controller.module.parameters()]).norm()
    lm_norm = torch.stack([p.grad.norm() for p in c.policy.model.parameters() if p.grad is not None]).norm()
    assert head_norm.item() == pytest.approx(0.001, rel=1e-3)
    assert lm_norm.item() == pytest.approx(0.001, rel=1e-3)


@pytest.mark.parametrize("policy_loss", ["gspo", "cispo"])
def test_a_registered_policy_loss_drives_the_update(policy_loss):
    from thermorl.engines.hf import encode_prompts, sample
    from thermorl.runtime.components import build_components
    from thermorl.runtime.update import grpo_update

    config = load_config(None, TINY + ["rollout.group_size=2", f"algorithm.policy_loss={policy_loss}"])
    c = build_components(config)
    before = [p.detach().clone() for p in c.policy.model.parameters()]
    prompt_ids, prompt_mask = encode_prompts(c.policy, ["3,7,2>23:", "4,4,1>9:"] * 2)
    generator = torch.Generator().manual_seed(0)
    batch = sample(c.policy, c.controller, prompt_ids, prompt_mask, 8, generator)
    metrics = grpo_update(c, config, batch, torch.tensor([1.0, -1.0, 0.5, -0.5]), 1, generator)
    assert metrics["grad_norm"] > 0 and metrics["clip_fraction"] == 0.0  # one pass on its own samples: ratio 1
    assert any(not torch.equal(a, b) for a, b in zip(before, c.policy.model.parameters()))
