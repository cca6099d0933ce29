"""Policy losses are registered by name; GSPO's and CISPO's values and gradients match hand computation."""

from __future__ import annotations

import math

import pytest
import torch

from thermorl.algorithms.grpo import clipped_policy_loss
from thermorl.algorithms.objective import token_objective
from thermorl.algorithms.policy_loss import policy_loss
from thermorl.config import POLICY_LOSSES, load_config
from thermorl.errors import ConfigError

pytestmark = pytest.mark.fast


def _batch():
    # two sequences of two tokens; the second sequence's last token is padding
    old = torch.log(torch.tensor([[0.5, 0.25], [0.5, 0.5]]))
    new = torch.log(torch.tensor([[0.5, 0.5], [0.25, 0.9]])).requires_grad_()  # ratios (1, 2), (0.5, pad)
    mask = torch.tensor([[1.0, 1.0], [1.0, 0.0]])
    return new, old, mask


def test_the_default_policy_loss_is_the_clipped_ratio():
    new, old, mask = _batch()
    adv = torch.tensor([1.0, -1.0])
    assert load_config().algorithm.policy_loss == "clip"
    got = policy_loss("clip")(new, old, adv, mask, epsilon_low=0.2, epsilon_high=0.28)
    want = clipped_policy_loss(new, old, adv, 0.2, 0.28)
    assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])


def test_gspo_clips_each_sequence_by_its_length_normalised_ratio():
    new, old, mask = _batch()
    adv = torch.tensor([1.0, -1.0])
    loss, clipped = policy_loss("gspo")(new, old, adv, mask, epsilon_low=0.2, epsilon_high=0.28)
    # s_1 = exp((log 1 + log 2) / 2) = sqrt 2 = 1.414 > 1.28: clipped, A = 1 -> l = -1.28 on both tokens
    # s_2 = exp(log 0.5 / 1) = 0.5 < 0.8, A = -1: -min(-0.5, -0.8) = 0.8 on its one token (the pad is masked later)
    assert loss[0].tolist() == pytest.approx([-1.28, -1.28])
    assert loss[1, 0].item() == pytest.approx(0.8)
    assert clipped[0].tolist() == [1.0, 1.0] and clipped[1, 0].item() == 1.0
    # a sequence inside the clip range: gradient s_i * A * grad log pi(y_t) on each token (GSPO-token, eq. 14)
    loss, _ = policy_loss("gspo")(new, old, adv, mask, epsilon_low=0.6, epsilon_high=0.6)
    assert loss[0].tolist() == pytest.approx([-math.sqrt(2), -math.sqrt(2)])
    (loss * mask).sum().backward()
    assert new.grad[0].tolist() == pytest.approx([-math.sqrt(2), -math.sqrt(2)])  # d/d log pi of -s A
    assert new.grad[1].tolist() == pytest.approx([0.5, 0.0])  # s_2 = 0.5 inside [0.4, 1.6], A = -1


def test_cispo_clips_the_weight_but_keeps_every_gradient():
    new, old, mask = _batch()
    adv = torch.tensor([1.0, -1.0])
    loss, clipped = policy_loss("cispo")(new, old, adv, mask, epsilon_low=0.2, epsilon_high=0.28)
    # weights clip(r, 0.8, 1.28): (1, 1.28), (0.8, .); loss -w A: (-1, -1.28), (0.8, .)
    assert loss[0].tolist() == pytest.approx([-1.0, -1.28])
    assert loss[1, 0].item() == pytest.approx(0.8)
    assert clipped[0].tolist() == [0.0, 1.0] and clipped[1, 0].item() == 1.0
    (loss * mask).sum().backward()
    # grad = -sg(w) A on d log pi: the clipped tokens still get a gradient (the clipped ratio gives them 0)
    assert new.grad[0].tolist() == pytest.approx([-1.0, -1.28])
    assert new.grad[1].tolist() == pytest.approx([0.8, 0.0])
    ppo_new = new.detach().clone().requires_grad_()
    ppo, _ = clipped_policy_loss(ppo_new, old, adv, 0.2, 0.28)
    (ppo * mask).sum().backward()
    assert ppo_new.grad[0, 1].item() == 0.0 and ppo_new.grad[1, 0].item() == 0.0


def test_token_objective_uses_the_selected_policy_loss():
    new, old, mask = _batch()
    adv = torch.tensor([1.0, -1.0])
    loss, diagnostics = token_objective(new, old, adv, mask, epsilon=0.2, epsilon_high=0.28, loss="cispo")
    assert loss.item() == pytest.approx((-1.0 - 1.28 + 0.8) / 3)
    assert diagnostics["clip_fraction"].item() == pytest.approx(2 / 3)


def test_a_registered_policy_loss_is_selected_by_config_and_an_unknown_one_is_refused():
    @POLICY_LOSSES.register("reinforce")
    def reinforce(logprobs, old_logprobs, advantages, mask, *, epsilon_low, epsilon_high):
        return -logprobs * advantages.unsqueeze(-1), torch.zeros_like(logprobs)

    try:
        assert load_config(None, ["algorithm.policy_loss=reinforce"]).algorithm.policy_loss == "reinforce"
        new, old, mask = _batch()
        loss, _ = token_objective(new, old, torch.tensor([1.0, 0.0]), mask, epsilon=0.2, epsilon_high=0.2,
                                  loss="reinforce")
        assert loss.item() == pytest.approx(-(math.log(0.5) * 2) / 3)
    finally:
        del POLICY_LOSSES["reinforce"]
    with pytest.raises(ConfigError, match="algorithm.policy_loss must be one of 'clip', 'gspo', 'cispo'"):
        load_config(None, ["algorithm.policy_loss=reinforce"])
