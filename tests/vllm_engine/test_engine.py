"""The vLLM engine against thermorl's own recomputation on the shipped tiny model (one shared engine)."""

import dataclasses
import random

import pytest
import torch

from thermorl.algorithms.hierarchical import temperature_logprob
from thermorl.config import load_config
from thermorl.engines.hf import encode_prompts
from thermorl.runtime.forward import score
from thermorl.temperature import ControllerEnv, build_controller

CONTROLLERS = ["fixed", "linear", "tampo", "ead", "entropy", "introspective"]


def prompts(components, count=4, group=8):
    problems = components.task.train_problems(random.Random(0), count)
    return encode_prompts(components.policy, [p.prompt for p in problems for _ in range(group)])


def controller_for(name, components):
    if name == "introspective":
        return components.controller  # the one whose head the shared engine holds
    overrides = ["temperature.ead.warmup_tokens=2", "temperature.ead.d0=5.0"] if name == "ead" else []
    config = load_config(None, [f"temperature.controller={name}", *overrides])
    return build_controller(config.temperature, ControllerEnv(128, 30, torch.device("cpu"), 8, 0))


@pytest.mark.parametrize("name", CONTROLLERS)
def test_sampling_logprobs_match_recomputation(vllm_setup, name):
    """(a) the engine's sampling log-probs = log_softmax(z / tau)[y] recomputed by the trainer at the
    recorded temperatures, to 1e-4, and the temperatures follow the controller."""
    _, components, engine = vllm_setup
    controller = controller_for(name, components)
    prompt_ids, prompt_mask = prompts(components)
    batch = engine.sample(controller, prompt_ids, prompt_mask, 24, torch.Generator().manual_seed(0), training_step=5)
    mask = batch.completion_mask
    assert mask.sum() > 100 and (mask.sum(1) >= 1).all()
    scored = score(components.policy, batch)
    assert ((scored.logprobs - batch.logprobs).abs() * mask).max().item() <= 1e-4
    temps = batch.temperatures[mask.bool()]
    if name in ("ead", "entropy", "introspective"):
        assert temps.unique().numel() > 3  # per-position temperatures, not one per request
    else:
        assert torch.allclose(batch.temperatures * mask, batch.temperatures[:, :1] * mask)  # one per request
    if name == "ead":
        assert torch.all(batch.temperatures[:, :2][mask[:, :2].bool()] == 1.0)  # warm-up tokens at 1.0
        assert batch.temperatures[0, 10].item() < batch.temperatures[0, 3].item() or mask[0, 10] == 0
    if name == "introspective":
        actions = batch.actions
        gate = actions.gate[mask.bool()]
        assert 0 < gate.mean().item() < 1
        head_logprob = temperature_logprob(controller.head(scored.hidden), actions.gate, actions.z, 1e-3)
        assert ((head_logprob - actions.logprob).abs() * mask).max().item() <= 1e-4
        kept = (actions.gate[:, 1:] == 0) & mask[:, 1:].bool()  # gate 0 keeps tau_{t-1}
        assert torch.equal(batch.temperatures[:, 1:][kept], batch.temperatures[:, :-1][kept])


@pytest.mark.parametrize("name", ["fixed", "ead", "introspective"])
@pytest.mark.parametrize("top_k, top_p", [(5, 1.0), (0, 0.9), (5, 0.9)])
def test_truncated_sampling_logprobs_match_recomputation(vllm_setup, name, top_k, top_p):
    """top-k / top-p: vLLM's processed log-probs (its sampler truncates after our logits processor and its
    own temperature) = thermorl's ``sampling_log_softmax`` at the recorded temperatures to 1e-4; every
    sampled token lies in thermorl's truncation set, and the truncation changed the log-probs."""
    from thermorl.algorithms.logprobs import truncation_mask

    _, components, engine = vllm_setup
    controller = controller_for(name, components)
    prompt_ids, prompt_mask = prompts(components)
    batch = engine.sample(controller, prompt_ids, prompt_mask, 24, torch.Generator().manual_seed(1), training_step=5,
                          top_k=top_k, top_p=top_p)
    assert (batch.top_k, batch.top_p) == (top_k, top_p)
    mask = batch.completion_mask
    valid = mask.bool()
    assert mask.sum() > 100
    scored = score(components.policy, batch)
    assert ((scored.logprobs - batch.logprobs).abs() * mask).max().item() <= 1e-4
    kept = truncation_mask(scored.logits.float() / batch.temperatures.unsqueeze(-1), top_k, top_p)
    assert kept.gather(-1, batch.completion_ids.unsqueeze(-1)).squeeze(-1)[valid].all()
    assert (kept.sum(-1)[valid] < kept.shape[-1]).float().mean() > 0.5  # most positions were truncated
    full = score(components.policy, dataclasses.replace(batch, top_k=0, top_p=1.0))
    assert ((full.logprobs - batch.logprobs).abs() * mask).max().item() > 1e-2  # truncation is visible
    if name != "fixed":
        assert batch.temperatures[valid].unique().numel() > 3


def test_head_rollout_correction_weights_are_recorded_and_near_one(vllm_setup):
    """The head's TIS weights min(pi_head_trainer / pi_head_engine, C), from the runtime's correction step (the
    LM's convention): the engine's record stays in the batch, the trainer's pi_old and weights go to the
    head's loss (logged as temp_is_weight_mean), ~1 since the engine runs the trainer's head."""
    from thermorl.runtime.correction import CorrectionSpec, head_logprobs, old_policy

    _, components, engine = vllm_setup
    controller = components.controller
    prompt_ids, prompt_mask = prompts(components)
    batch = engine.sample(controller, prompt_ids, prompt_mask, 24, torch.Generator().manual_seed(2))
    mask = batch.completion_mask
    scored = score(components.policy, batch)
    trainer_head = head_logprobs(controller, scored.hidden, batch.actions)
    engine_head = batch.actions.logprob.clone()
    unweighted = old_policy(batch, scored.logprobs, trainer_head, CorrectionSpec())
    assert unweighted.head_weights is None and unweighted.weights is None  # no correction asked for
    corrected = old_policy(batch, scored.logprobs, trainer_head, CorrectionSpec("token", "truncate", None, 2.0))
    weights = corrected.head_weights
    assert weights.shape == mask.shape and torch.all(weights[mask == 0] == 0)
    assert ((weights - 1.0).abs() * mask).max().item() < 1e-3
    assert corrected.metrics["rollout_head_logprob_diff_max"] < 1e-3
    assert torch.equal(batch.actions.logprob, engine_head)  # the engine's record is left as it was
    advantages = torch.linspace(-1, 1, len(batch))
    assert controller.trains_head(0)
    actions = corrected.head_actions(batch.actions)
    assert actions.is_weight is weights and actions.logprob is corrected.head_logprobs
    _, logged = controller.policy_loss(scored.hidden, actions, advantages, mask, 0)
    assert abs(logged["temp_is_weight_mean"] - 1.0) < 1e-3


def test_same_seed_same_completions(vllm_setup):
    """Per-request seeds from the run's stream: the same generator state samples the same batch."""
    _, components, engine = vllm_setup
    controller = components.controller
    prompt_ids, prompt_mask = prompts(components, 2)
    state = controller.generator.get_state()
    first = engine.sample(controller, prompt_ids, prompt_mask, 16, torch.Generator().manual_seed(7))
    controller.generator.set_state(state)
    second = engine.sample(controller, prompt_ids, prompt_mask, 16, torch.Generator().manual_seed(7))
    third = engine.sample(controller, prompt_ids, prompt_mask, 16, torch.Generator().manual_seed(8))
    assert torch.equal(first.completion_ids, second.completion_ids)
    assert torch.equal(first.temperatures, second.temperatures)
    assert not torch.equal(first.completion_ids, third.completion_ids)


def next_token_logprobs(engine, prompt_ids):
    from vllm import SamplingParams

    out = engine.llm.generate([{"prompt_token_ids": prompt_ids}], SamplingParams(max_tokens=1, logprobs=20, temperature=1.0, detokenize=False),
                              use_tqdm=False)
    return out[0].outputs[0].logprobs[0]


@pytest.mark.parametrize("lora", [False, True])
def test_weights_follow_one_optimizer_step(vllm_setup, lora):
    """(b) after one optimizer step and sync, the engine's next-token log-probs on a fixed prompt equal
    the updated policy's to 1e-4 (full fine-tuning and LoRA, whose adapters are merged)."""
    import copy

    from thermorl.models.policy import Policy, add_lora

    config, components, engine = vllm_setup
    model = copy.deepcopy(components.policy.model)  # the session's policy stays the warm start for later tests
    if lora:
        model = add_lora(model, load_config(None, ["model.lora_r=4"]).model)
    policy = Policy(model, components.policy.tokenizer)
    optimizer = torch.optim.AdamW([p for p in policy.model.parameters() if p.requires_grad], lr=1e-2)
    prompt_ids, prompt_mask = prompts(components, 1, 1)
    ids = prompt_ids[0][prompt_mask[0].bool()].tolist()
    before = next_token_logprobs(engine, ids)
    logits = policy.model(input_ids=torch.tensor([ids])).logits[0, -1]
    loss = -torch.log_softmax(logits, -1)[17]  # push one token up
    loss.backward()
    optimizer.step()
    engine.policy = policy  # the engine syncs whichever policy it serves
    try:
        engine.sync_weights()
        after = next_token_logprobs(engine, ids)
    finally:  # put the shared engine back on the shared policy for the other tests
        engine.policy = components.policy
        engine.sync_weights()
    with torch.no_grad():
        expected = torch.log_softmax(policy.model(input_ids=torch.tensor([ids])).logits[0, -1].float(), -1)
    assert max(abs(lp.logprob - expected[t].item()) for t, lp in after.items()) <= 1e-4
    assert after[17].logprob > before[17].logprob + 1e-3 if 17 in before and 17 in after else True


def test_sleep_mode_on_cpu_is_one_line_at_start_up(caplog):
    """rollout.vllm.sleep_between_steps where vLLM cannot sleep (its CPU backend): start-up says so in one line
    and the run goes on; without the option nothing is said. The engine built with it does not sleep."""
    import logging

    from thermorl.engines.vllm import can_sleep, check_supported

    assert not can_sleep()  # this machine: vLLM's CPU backend
    with caplog.at_level(logging.WARNING, logger="thermorl"):
        check_supported(load_config(None, ["rollout.engine=vllm"]))
        assert not caplog.records
        check_supported(load_config(None, ["rollout.engine=vllm", "rollout.vllm.sleep_between_steps=true"]))
    lines = [r.getMessage() for r in caplog.records if r.name.startswith("thermorl")]
    assert len(lines) == 1 and "\n" not in lines[0] and "cannot sleep" in lines[0], lines


def test_an_engine_asked_to_sleep_on_cpu_keeps_sampling(vllm_setup):
    """sleep() is a no-op where vLLM cannot sleep: the engine samples and syncs as before."""
    _, components, engine = vllm_setup
    assert not engine.sleeps
    engine.sleep()
    assert not engine.asleep
    prompt_ids, prompt_mask = prompts(components, 1, 2)
    batch = engine.sample(components.controller, prompt_ids, prompt_mask, 4, torch.Generator().manual_seed(0))
    assert batch.completion_mask.sum() > 0


@pytest.mark.slow
def test_generate_and_eval_sample_through_vllm():
    """`thermorl generate` and `thermorl eval` with --set rollout.engine=vllm on the shipped model."""
    import json
    import subprocess
    import sys

    from thermorl.models.policy import BUILTIN_DIR

    def cli(*args):
        return subprocess.run([sys.executable, "-m", "thermorl.cli", *args], capture_output=True, text=True, timeout=600)

    generated = cli("generate", "--checkpoint", str(BUILTIN_DIR), "--prompt", "3,7,2>23:", "--samples", "3",
                    "--set", "rollout.engine=vllm", "--set", "rollout.vllm.max_model_len=256")
    assert generated.returncode == 0, generated.stderr[-2000:]
    assert generated.stdout.count("\n") >= 3
    evaluated = cli("eval", "--checkpoint", str(BUILTIN_DIR), "--problems", "16", "--k", "2",
                    "--set", "rollout.engine=vllm", "--set", "rollout.vllm.max_model_len=256")
    assert evaluated.returncode == 0, evaluated.stderr[-2000:]
    result = json.loads(evaluated.stdout[evaluated.stdout.rindex("{\n"):])  # vLLM also logs to stdout
    assert result["problems"] == 16 and 0 <= result["greedy_accuracy"] <= 1 and 0 <= result["eval_avg_at_k"] <= 1
