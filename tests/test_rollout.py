"""The sampler records exactly what the trainer later recomputes."""

import pytest
import torch

from thermorl.engines.hf import decode_completions, encode_prompts, sample
from thermorl.runtime.forward import score
from thermorl.temperature.base import ControllerEnv, StepContext, TemperatureActions, TemperatureController
from thermorl.temperature.entropy import EntropyConfig, EntropyController
from thermorl.temperature.fixed import FixedConfig, FixedController


class PositionAndRowTemperature(TemperatureController):
    """A test controller whose temperature differs for every (row, position)."""

    def choose(self, ctx: StepContext):
        tau = 0.4 + 0.05 * ctx.position + 0.01 * ctx.rows.float()
        return tau, TemperatureActions(logprob=ctx.rows.float())  # the row index, to check alignment


def _prompts(policy, n=12):
    return encode_prompts(policy, [f"{i},{i + 3},7>{i + 11}:" for i in range(n)])


def test_training_logprobs_match_sampling_with_per_token_temperatures(tiny_policy):
    ids, mask = _prompts(tiny_policy)
    generator = torch.Generator().manual_seed(0)
    batch = sample(tiny_policy, PositionAndRowTemperature(), ids, mask, 20, generator)
    valid = batch.completion_mask.bool()
    # temperatures really vary per token within a row and across rows
    assert batch.temperatures[valid].unique().numel() > 20
    scored = score(tiny_policy, batch)
    assert torch.allclose(scored.logprobs[valid], batch.logprobs[valid], atol=1e-5)
    assert torch.allclose(scored.entropies[valid], batch.entropies[valid], atol=1e-4)
    # and scoring at the wrong (constant) temperature would not match
    batch.temperatures = torch.ones_like(batch.temperatures)
    wrong = score(tiny_policy, batch).logprobs
    assert (wrong[valid] - batch.logprobs[valid]).abs().max() > 1e-2


def test_groups_share_one_prompt_pass_with_the_full_pass_gradients(tiny_policy):
    # GRPO groups: 4 prompts of different lengths (left padding), 5 rows each, rows shuffled
    prompts = [p for p in ["1,2>3:", "12,3,7>33:", "4,4>16:", "11,10,9>90:"] for _ in range(5)]
    ids, mask = encode_prompts(tiny_policy, prompts)
    batch = sample(tiny_policy, PositionAndRowTemperature(), ids, mask, 16, torch.Generator().manual_seed(1))
    batch = batch.select(torch.randperm(len(batch), generator=torch.Generator().manual_seed(2)))
    valid = batch.completion_mask.bool()
    results = []
    for share in (True, False):
        tiny_policy.model.zero_grad(set_to_none=True)
        scored = score(tiny_policy, batch, share_prompts=share)
        (scored.logprobs * batch.completion_mask).sum().backward()
        grads = torch.cat([p.grad.reshape(-1) for p in tiny_policy.model.parameters() if p.grad is not None])
        results.append((scored.logprobs.detach(), scored.hidden.detach(), grads))
    (shared_lp, shared_h, shared_g), (full_lp, full_h, full_g) = results
    tiny_policy.model.zero_grad(set_to_none=True)
    assert torch.allclose(shared_lp[valid], full_lp[valid], atol=1e-5)
    assert torch.allclose(shared_lp[valid], batch.logprobs[valid], atol=1e-5)
    assert torch.allclose(shared_h[valid], full_h[valid], atol=1e-5)
    assert full_g.norm() > 0 and (shared_g - full_g).norm() / full_g.norm() < 1e-5  # float32 summation order


def test_records_are_aligned_with_rows(tiny_policy):
    ids, mask = _prompts(tiny_policy, 6)
    batch = sample(tiny_policy, PositionAndRowTemperature(), ids, mask, 8, torch.Generator().manual_seed(1))
    rows = torch.arange(6).float().unsqueeze(1).expand(-1, 8)
    valid = batch.completion_mask.bool()
    assert torch.equal(batch.actions.logprob[valid], rows[valid])


def test_finished_rows_stop_and_are_padded(tiny_policy):
    ids, mask = _prompts(tiny_policy, 32)
    env = ControllerEnv(tiny_policy.hidden_size, 1, tiny_policy.device)
    batch = sample(tiny_policy, FixedController(FixedConfig(3.0), env), ids, mask, 30, torch.Generator().manual_seed(2))
    eos = tiny_policy.tokenizer.eos_token_id
    lengths = batch.completion_mask.sum(1).long()
    for row, length in enumerate(lengths.tolist()):
        assert batch.completion_mask[row, :length].all() and not batch.completion_mask[row, length:].any()
        assert (batch.completion_ids[row, length:] == tiny_policy.tokenizer.pad_token_id).all()
        if length < 30:
            assert batch.completion_ids[row, length - 1] == eos
    assert lengths.min() < 30, "at temperature 3 on a vocabulary of 100, some row should hit EOS"


def test_sampling_is_reproducible_with_a_seed(tiny_policy):
    ids, mask = _prompts(tiny_policy)
    env = ControllerEnv(tiny_policy.hidden_size, 1, tiny_policy.device)
    controller = EntropyController(EntropyConfig(), env)
    a = sample(tiny_policy, controller, ids, mask, 10, torch.Generator().manual_seed(5))
    b = sample(tiny_policy, controller, ids, mask, 10, torch.Generator().manual_seed(5))
    assert torch.equal(a.completion_ids, b.completion_ids)
    assert decode_completions(tiny_policy, a) == decode_completions(tiny_policy, b)


def test_left_padding_does_not_change_a_rows_distribution(tiny_policy):
    """A prompt scored alone and inside a left-padded batch gets the same first-token log-probs."""
    env = ControllerEnv(tiny_policy.hidden_size, 1, tiny_policy.device)
    controller = FixedController(FixedConfig(1.0), env)
    short = "1,2>3:"
    ids_alone, mask_alone = encode_prompts(tiny_policy, [short])
    ids_batch, mask_batch = encode_prompts(tiny_policy, [short, "12,11,10,9>99:"])
    assert mask_batch[0].sum() < mask_batch.shape[1]  # really padded
    alone = sample(tiny_policy, controller, ids_alone, mask_alone, 1, greedy=True)
    batched = sample(tiny_policy, controller, ids_batch, mask_batch, 1, greedy=True)
    assert torch.allclose(alone.logprobs[0], batched.logprobs[0], atol=1e-5)


@pytest.mark.parametrize("chunk", [0, 5])
def test_columns_of_padding_in_every_row_are_cut_and_give_the_uncut_pass(tiny_policy, chunk):
    """A micro-batch of short rows with short prompts: ``score`` runs without its common left padding and its
    columns past the longest completion, and gives the uncut pass's log-probs, entropies, hidden states and
    gradients, with 0 in the cut columns and the batch's full width."""
    from thermorl.runtime.forward import _score, trim_padding

    prompts = [p for p in ["1,2>3:", "12,3,7,40>33:", "4,4>16:", "11,10,9,2>90:"] for _ in range(3)]
    ids, mask = encode_prompts(tiny_policy, prompts)
    batch = sample(tiny_policy, PositionAndRowTemperature(), ids, mask, 16, torch.Generator().manual_seed(5))
    lengths = torch.tensor([3, 16, 5, 9, 16, 2, 7, 12, 16, 4, 16, 6])
    batch.completion_mask = (torch.arange(batch.completion_mask.shape[1]) < lengths.unsqueeze(1)).float()
    short = batch.select(torch.tensor([0, 2, 6, 8]))  # short prompts; lengths 3, 5, 7 and 16 ...
    short.completion_mask[3, 9:] = 0  # ... the last cut to 9, so the rows end at 9 of 16 columns
    cut = trim_padding(short)
    assert cut.completion_ids.shape[1] == 9 and cut.prompt_ids.shape[1] < short.prompt_ids.shape[1]
    valid = short.completion_mask.bool()
    weights = torch.randn(valid.shape, generator=torch.Generator().manual_seed(6))
    results = []
    for run in (score, lambda p, b, chunk_tokens: _score(p, b, True, chunk_tokens)):
        tiny_policy.model.zero_grad(set_to_none=True)
        scored = run(tiny_policy, short, chunk_tokens=chunk)
        ((scored.logprobs * weights + 0.3 * scored.entropies) * short.completion_mask).sum().backward()
        grads = torch.cat([p.grad.reshape(-1) for p in tiny_policy.model.parameters() if p.grad is not None])
        results.append((scored, grads))
    tiny_policy.model.zero_grad(set_to_none=True)
    (trimmed, trimmed_g), (full, full_g) = results
    assert trimmed.logprobs.shape == full.logprobs.shape == valid.shape
    for name in ("logprobs", "entropies", "hidden"):
        torch.testing.assert_close(getattr(trimmed, name)[valid], getattr(full, name)[valid], rtol=1e-5, atol=1e-5)
    assert torch.all(trimmed.logprobs[:, 9:] == 0) and torch.all(trimmed.hidden[:, 9:] == 0)
    assert full_g.norm() > 0 and (trimmed_g - full_g).norm() / full_g.norm() < 1e-5


@pytest.mark.parametrize("top_k, top_p", [(0, 1.0), (5, 0.9)])
def test_chunked_fused_head_equals_the_full_logits_in_values_and_gradients(tiny_policy, top_k, top_p):
    """score(chunk_tokens=7): the LM head and log-softmax applied 7 generated tokens at a time under
    checkpointing give the full pass's log-probs and entropies, 0 at padding, and the same gradients of a loss
    that reads both (so the recomputed backward is right), with per-token temperatures and truncation."""
    ids, mask = _prompts(tiny_policy)
    batch = sample(tiny_policy, PositionAndRowTemperature(), ids, mask, 20, torch.Generator().manual_seed(3),
                   top_k=top_k, top_p=top_p)
    lengths = torch.tensor([20, 13, 5, 17, 1, 20, 8, 11, 19, 2, 20, 9])  # completions that stopped early
    batch.completion_mask = (torch.arange(batch.completion_mask.shape[1]) < lengths.unsqueeze(1)).float()
    valid = batch.completion_mask.bool()
    assert (~valid).any() and valid.sum() % 7 != 0  # padding to skip, and a last chunk that is not full
    weights = torch.randn(batch.completion_mask.shape, generator=torch.Generator().manual_seed(4))
    results = []
    for chunk in (0, 7):
        tiny_policy.model.zero_grad(set_to_none=True)
        scored = score(tiny_policy, batch, chunk_tokens=chunk)
        assert (scored.logits is None) == (chunk > 0)
        ((scored.logprobs * weights + 0.3 * scored.entropies) * batch.completion_mask).sum().backward()
        grads = {n: p.grad.clone() for n, p in tiny_policy.model.named_parameters() if p.grad is not None}
        results.append((scored.logprobs.detach(), scored.entropies.detach(), grads))
    tiny_policy.model.zero_grad(set_to_none=True)
    (full_lp, full_h, full_g), (chunk_lp, chunk_h, chunk_g) = results
    torch.testing.assert_close(chunk_lp[valid], full_lp[valid], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(chunk_h[valid], full_h[valid], rtol=1e-5, atol=1e-5)
    assert torch.all(chunk_lp[~valid] == 0) and torch.all(chunk_h[~valid] == 0)
    assert set(chunk_g) == set(full_g) and len(full_g) == len(list(tiny_policy.model.parameters()))
    for name in full_g:
        error = (chunk_g[name] - full_g[name]).norm() / full_g[name].norm()
        assert full_g[name].norm() > 0 and error < 1e-5, name  # float32 summation order
    with torch.no_grad():  # without gradients the chunks run plainly, to the same numbers
        torch.testing.assert_close(score(tiny_policy, batch, chunk_tokens=7).logprobs[valid], full_lp[valid],
                                   rtol=1e-5, atol=1e-5)
