"""Top-k / top-p log-probs: the distribution actually sampled, the same rules as transformers' warpers."""

import pytest
import torch
from transformers.generation.logits_process import TopKLogitsWarper, TopPLogitsWarper

from thermorl.algorithms.logprobs import (
    sampled_logprobs,
    sampling_log_softmax,
    tempered_log_softmax,
    tempered_logprobs,
    truncation_mask,
)


def test_no_truncation_is_exactly_the_tempered_distribution():
    logits, tau = torch.randn(3, 5, 17), torch.rand(3, 5) + 0.3
    tokens = torch.randint(0, 17, (3, 5))
    assert torch.equal(sampling_log_softmax(logits, tau), tempered_log_softmax(logits, tau))
    for got, want in zip(sampled_logprobs(logits, tokens, tau), tempered_logprobs(logits, tokens, tau)):
        assert torch.equal(got, want)


@pytest.mark.parametrize("top_k, top_p", [(5, 1.0), (0, 0.7), (8, 0.9), (1, 0.5), (0, 0.05)])
def test_truncation_matches_transformers_top_k_then_top_p_warpers(top_k, top_p):
    torch.manual_seed(top_k)
    logits = torch.randn(6, 50) * 3
    tau = torch.tensor([0.3, 0.7, 1.0, 1.3, 2.0, 0.9])
    logp = sampling_log_softmax(logits, tau, top_k, top_p)
    for row in range(6):
        scores = (logits[row] / tau[row]).unsqueeze(0)
        if top_k:
            scores = TopKLogitsWarper(top_k)(None, scores)
        if top_p < 1:
            scores = TopPLogitsWarper(top_p)(None, scores)
        want = torch.log_softmax(scores, dim=-1)[0]
        assert torch.equal(torch.isfinite(logp[row]), torch.isfinite(want))
        kept = torch.isfinite(want)
        torch.testing.assert_close(logp[row][kept], want[kept], atol=1e-6, rtol=1e-6)
        assert torch.exp(logp[row]).sum().item() == pytest.approx(1.0, abs=1e-6)


def test_nucleus_keeps_the_fewest_likeliest_tokens_reaching_p():
    probs = torch.tensor([[0.5, 0.3, 0.15, 0.05]])
    keep = truncation_mask(probs.log(), top_p=0.8)
    assert keep.tolist() == [[True, True, False, False]]  # 0.5 + 0.3 reaches 0.8
    assert truncation_mask(probs.log(), top_p=0.81).tolist() == [[True, True, True, False]]
    assert truncation_mask(probs.log(), top_k=1).tolist() == [[True, False, False, False]]


def test_the_sampled_token_stays_finite_and_entropy_counts_kept_tokens_only():
    logits = torch.tensor([[4.0, 3.0, 0.0, -2.0]])
    tau, token = torch.tensor([1.0]), torch.tensor([3])  # outside the top-2 set
    logp, entropy = sampled_logprobs(logits, token, tau, top_k=2)
    assert torch.isfinite(logp).all() and torch.isfinite(entropy).all()
    kept = torch.log_softmax(torch.tensor([4.0, 3.0, -2.0]), dim=-1)
    assert logp.item() == pytest.approx(kept[2].item(), abs=1e-6)
    assert entropy.item() == pytest.approx(-(kept.exp() * kept).sum().item(), abs=1e-6)


def test_gradients_flow_through_the_kept_tokens_only():
    logits = torch.randn(2, 10, requires_grad=True)
    tokens = logits.detach().argmax(-1)
    logp, _ = sampled_logprobs(logits, tokens, torch.ones(2), top_k=3)
    logp.sum().backward()
    kept = truncation_mask(logits.detach(), top_k=3)
    assert torch.all(logits.grad[~kept] == 0) and torch.all(logits.grad[kept] != 0)
