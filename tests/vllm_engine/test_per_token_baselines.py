"""by_class and multitemp on vLLM: per-position rules of thermorl's logits processor, recorded per token."""

import random

import torch

from thermorl.config import load_config
from thermorl.engines.hf import encode_prompts
from thermorl.runtime.forward import score
from thermorl.runtime.components import token_class_env
from thermorl.tasks.countdown import countdown_next_class
from thermorl.temperature import ControllerEnv, build_controller


def build(overrides, components):
    config = load_config(None, overrides)
    env = ControllerEnv(128, 30, torch.device("cpu"), 8, 0, **token_class_env(components.task, components.policy))
    return build_controller(config.temperature, env)


def rollout(components, engine, controller, seed):
    problems = components.task.train_problems(random.Random(seed), 4)
    ids, mask = encode_prompts(components.policy, [p.prompt for p in problems for _ in range(8)])
    return engine.sample(controller, ids, mask, 24, torch.Generator().manual_seed(seed), training_step=3)


def test_by_class_on_vllm_samples_each_class_at_its_temperature(vllm_setup):
    _, components, engine = vllm_setup
    controller = build(["temperature.controller=by_class", "temperature.by_class.temperatures.choice=0.7",
                        "temperature.by_class.temperatures.result=0.3"], components)
    batch = rollout(components, engine, controller, 0)
    mask = batch.completion_mask
    assert ((score(components.policy, batch).logprobs - batch.logprobs).abs() * mask).max().item() <= 1e-4
    tokenizer, seen = components.policy.tokenizer, set()
    for row in range(len(batch)):
        tokens = batch.completion_ids[row, : int(mask[row].sum())].tolist()
        for t in range(len(tokens)):
            expected = countdown_next_class(tokenizer.decode(tokens[:t], skip_special_tokens=True))
            assert abs(batch.temperatures[row, t].item() - {"choice": 0.7, "result": 0.3}[expected]) < 1e-6
            seen.add(expected)
    assert seen == {"choice", "result"}


def test_multitemp_on_vllm_is_hot_exactly_above_the_split(vllm_setup):
    _, components, engine = vllm_setup
    controller = build(["temperature.controller=multitemp", "temperature.multitemp.threshold=0.3",
                        "temperature.multitemp.high=1.4", "temperature.multitemp.low=0.5"], components)
    batch = rollout(components, engine, controller, 1)
    valid = batch.completion_mask.bool()
    scored = score(components.policy, batch)
    assert ((scored.logprobs - batch.logprobs).abs() * batch.completion_mask).max().item() <= 1e-4
    logits = scored.logits.float()
    entropy = -(torch.softmax(logits, -1) * torch.log_softmax(logits, -1)).sum(-1)[valid]
    hot = entropy >= 0.3
    assert 0.05 < hot.float().mean() < 0.95
    far = (entropy - 0.3).abs() > 1e-3  # the engine's float32 logits vs the trainer's
    assert torch.equal(batch.temperatures[valid][far], torch.where(hot, 1.4, 0.5)[far])
