"""Decoding real chat models need: every EOS id stops a completion, top-k / top-p with the sampled
distribution's log-probs in sampler and trainer alike, system prompts and chat-template variables."""

import copy
import dataclasses
import random

import pytest
import torch

from thermorl.algorithms.logprobs import truncation_mask
from thermorl.engines.hf import (
    decode_completions, encode_prompts, sample, stop_token_ids, truncated_completions,
)
from thermorl.runtime.forward import score
from thermorl.models.policy import Policy
from thermorl.temperature.base import StepContext, TemperatureActions, TemperatureController

END_OF_TURN = "<|eot|>"


class PositionAndRowTemperature(TemperatureController):
    """A temperature that differs for every (row, position)."""

    def choose(self, ctx: StepContext):
        return 0.5 + 0.04 * ctx.position + 0.02 * ctx.rows.float(), TemperatureActions()


@pytest.fixture
def chat_policy(tiny_policy):
    """The tiny model with a Llama-3-style end-of-turn token that the generation config (not the tokenizer's
    eos_token) lists, its output head flattened so that every token, both stop tokens included, is likely."""
    tokenizer = copy.deepcopy(tiny_policy.tokenizer)
    tokenizer.add_special_tokens({"additional_special_tokens": [END_OF_TURN]})
    model = copy.deepcopy(tiny_policy.model)
    model.resize_token_embeddings(len(tokenizer))
    with torch.no_grad():
        model.get_output_embeddings().weight.mul_(0.01)
    eot = tokenizer.convert_tokens_to_ids(END_OF_TURN)
    model.generation_config.eos_token_id = [tokenizer.eos_token_id, eot]
    return Policy(model, tokenizer)


def test_sampling_stops_at_every_end_of_sequence_id(chat_policy):
    eos, eot = chat_policy.tokenizer.eos_token_id, chat_policy.tokenizer.convert_tokens_to_ids(END_OF_TURN)
    assert stop_token_ids(chat_policy) == [eos, eot] and eot != eos
    ids, mask = encode_prompts(chat_policy, ["1,2>3:"] * 64)
    batch = sample(chat_policy, PositionAndRowTemperature(), ids, mask, 80, torch.Generator().manual_seed(0))
    enders = []
    for row, length in zip(batch.completion_ids.tolist(), batch.completion_mask.sum(-1).long().tolist()):
        stops = [t for t, token in enumerate(row[:length]) if token in (eos, eot)]
        if stops:
            assert stops == [length - 1], "a completion ends at its first stop token, never later"
            enders.append(row[length - 1])
    assert enders.count(eot) > 0 and enders.count(eos) > 0
    lengths = batch.completion_mask.sum(-1).long().tolist()
    cut = [n == 80 and row[n - 1] not in (eos, eot) for row, n in zip(batch.completion_ids.tolist(), lengths)]
    assert truncated_completions(chat_policy, batch, 80).tolist() == cut and any(cut)
    assert all(END_OF_TURN not in text for text in decode_completions(chat_policy, batch))


@pytest.mark.parametrize("top_k, top_p", [(5, 1.0), (0, 0.8), (6, 0.7)])
def test_trainer_logprobs_equal_the_samplers_under_top_k_top_p_at_per_token_temperatures(tiny_policy, top_k, top_p):
    ids, mask = encode_prompts(tiny_policy, [f"{i},{i + 3},7>{i + 11}:" for i in range(12)])
    batch = sample(tiny_policy, PositionAndRowTemperature(), ids, mask, 20, torch.Generator().manual_seed(1),
                   top_k=top_k, top_p=top_p)
    valid = batch.completion_mask.bool()
    assert batch.temperatures[valid].unique().numel() > 20 and (batch.top_k, batch.top_p) == (top_k, top_p)
    scored = score(tiny_policy, batch.select(torch.randperm(12, generator=torch.Generator().manual_seed(2))))
    scored_rows = batch.select(torch.randperm(12, generator=torch.Generator().manual_seed(2)))
    mb_valid = scored_rows.completion_mask.bool()
    torch.testing.assert_close(scored.logprobs[mb_valid], scored_rows.logprobs[mb_valid], atol=1e-5, rtol=0)
    torch.testing.assert_close(scored.entropies[mb_valid], scored_rows.entropies[mb_valid], atol=1e-4, rtol=0)
    # every sampled token lies in the truncated set of the distribution it was drawn from
    kept = truncation_mask(scored.logits / scored_rows.temperatures.unsqueeze(-1), top_k, top_p)
    assert kept.gather(-1, scored_rows.completion_ids.unsqueeze(-1)).squeeze(-1)[mb_valid].all()
    # and the untruncated distribution would not match: the truncation is really there
    full = score(tiny_policy, dataclasses.replace(batch, top_k=0, top_p=1.0))
    assert (full.logprobs[valid] - batch.logprobs[valid]).abs().max() > 1e-3


def test_system_prompt_and_chat_template_kwargs_reach_the_template(tiny_policy):
    tokenizer = copy.deepcopy(tiny_policy.tokenizer)
    tokenizer.chat_template = (
        "{% for m in messages %}[{{ m['role'] }}:{{ m['content'] }}]{% endfor %}"
        "{% if think is defined and think %}T{% endif %}>"
    )
    policy = Policy(tiny_policy.model, tokenizer, system_prompt="be brief", chat_template_kwargs={"think": True})
    ids, mask = encode_prompts(policy, ["1,2>3:"])
    assert tokenizer.decode(ids[0][mask[0].bool()]) == "[system:be brief][user:1,2>3:]T>"
    plain = Policy(tiny_policy.model, tiny_policy.tokenizer, system_prompt="be brief")
    ids, mask = encode_prompts(plain, ["1,2>3:"])
    assert tiny_policy.tokenizer.decode(ids[0][mask[0].bool()]).endswith("be brief\n1,2>3:")


# --------------------------------------------------------------------------- the loss side: overlong filtering, entropy bonus

TINY = [  # the shipped warm start: some completions end with EOS within 14 tokens, others are cut
    "model.path=builtin", "task.eval_size=4", "rollout.prompts_per_step=8", "rollout.group_size=2",
    "rollout.max_new_tokens=14", "task.reward_workers=0",
]


def _update(*overrides: str, keep_rows=None):
    """One grpo_update from the same start on the same batch; ``keep_rows`` scores only those rows."""
    from thermorl.config import load_config
    from thermorl.runtime.trainer import build_components, grpo_update

    config = load_config(None, TINY + list(overrides))
    c = build_components(config)
    problems = [p for p in c.task.train_problems(random.Random(0), 8) for _ in range(2)]
    batch = c.engine.generate([p.prompt for p in problems], c.controller, torch.Generator().manual_seed(0),
                              group_ids=torch.arange(16) // 2)
    advantages = torch.tensor([1.0, -1.0, 0.5, -0.5, 2.0, -2.0, 1.0, -1.0] * 2)
    if keep_rows is not None:
        batch, advantages = batch.select(keep_rows), advantages[keep_rows]
    metrics = grpo_update(c, config, batch, advantages, 1, torch.Generator().manual_seed(0))
    return c, batch, metrics


def test_truncated_completions_are_left_out_of_the_loss():
    c, batch, masked = _update("algorithm.mask_truncated_completions=true")
    cut = truncated_completions(c.policy, batch, 14)
    assert cut.any() and not cut.all(), "the batch needs both kinds of completion"
    assert masked["truncated_fraction"] == pytest.approx(cut.float().mean().item())
    _, _, only_finished = _update(keep_rows=(~cut).nonzero().squeeze(-1))
    assert masked["pg_loss"] == pytest.approx(only_finished["pg_loss"], rel=1e-6, abs=1e-9)


def test_the_entropy_bonus_subtracts_its_coefficient_times_the_sampled_entropy():
    _, _, plain = _update()
    _, _, bonus = _update("algorithm.entropy_coef=0.05")
    assert bonus["lm_entropy"] > 0 and "lm_entropy" not in plain
    assert bonus["loss"] == pytest.approx(plain["loss"] - 0.05 * bonus["lm_entropy"], rel=1e-6, abs=1e-9)
