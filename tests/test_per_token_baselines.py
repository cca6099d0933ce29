"""The per-token baselines that learn nothing: by_class (a temperature per task token class) and
Multi-Temperature RLVR (hot above an entropy split, cold below)."""

import math
import random

import pytest
import torch

from thermorl.config import ModelConfig, load_config
from thermorl.engines.hf import encode_prompts, sample
from thermorl.runtime.forward import score
from thermorl.errors import ConfigError
from thermorl.models import load_policy
from thermorl.runtime.components import token_class_env
from thermorl.tasks import build_task
from thermorl.tasks.countdown import countdown_next_class
from thermorl.temperature import ControllerEnv, build_controller
from thermorl.temperature.multitemp import entropy_quantile, multitemp_temperature


@pytest.fixture(scope="module")
def warm_policy():
    return load_policy(ModelConfig(path="builtin"), seed=0)


def controller(overrides, policy, task_overrides=()):
    config = load_config(None, [*overrides, *task_overrides])
    env = ControllerEnv(policy.hidden_size, 10, policy.device, 8, 0,
                        **token_class_env(build_task(config.task), policy))
    return build_controller(config.temperature, env), build_task(config.task)


def test_countdown_classes_read_from_the_prefix():
    text = "7+3=10,10-2=8"
    classes = [countdown_next_class(text[:i]) for i in range(len(text) + 1)]  # the class of text[i] (i = len: end)
    assert "".join("r" if c == "result" else "c" for c in classes) == "cccc" + "rrr" + "ccccc" + "rr"


def test_by_class_samples_each_class_at_its_temperature(warm_policy):
    by_class, task = controller(["temperature.controller=by_class", "temperature.by_class.temperatures.choice=0.7",
                                 "temperature.by_class.temperatures.result=0.3"], warm_policy)
    problems = task.train_problems(random.Random(0), 8)
    ids, mask = encode_prompts(warm_policy, [p.prompt for p in problems for _ in range(4)])
    batch = sample(warm_policy, by_class, ids, mask, 24, torch.Generator().manual_seed(0))
    counts = {"choice": 0, "result": 0}
    for row in range(len(batch)):
        length = int(batch.completion_mask[row].sum())
        tokens = batch.completion_ids[row, :length].tolist()
        for t in range(length):
            expected = countdown_next_class(warm_policy.tokenizer.decode(tokens[:t], skip_special_tokens=True))
            assert batch.temperatures[row, t].item() == pytest.approx({"choice": 0.7, "result": 0.3}[expected])
            counts[expected] += 1
    assert counts["choice"] > 100 and counts["result"] > 50  # a real rollout visits both classes
    valid = batch.completion_mask.bool()
    assert torch.allclose(score(warm_policy, batch).logprobs[valid], batch.logprobs[valid], atol=1e-5)


def test_by_class_refuses_what_the_task_cannot_classify(warm_policy):
    with pytest.raises(ConfigError, match="temperature.by_class.temperatures.digits"):
        controller(["temperature.controller=by_class", "temperature.by_class.temperatures.digits=0.5"], warm_policy)
    with pytest.raises(ConfigError, match="needs a task with token classes"):
        controller(["temperature.controller=by_class"], warm_policy, ["task.name=arithmetic"])
    with pytest.raises(ConfigError, match="temperature.by_class.temperatures.result must be a temperature"):
        load_config(None, ["temperature.controller=by_class", "temperature.by_class.temperatures.result=-1"])


def test_multitemp_split_matches_a_hand_computed_entropy_threshold():
    # uniform over k of 8 tokens: entropy ln k = 0, 0.693, 1.386, 2.079 nats
    logits = torch.full((4, 8), -1e9)
    for row, k in enumerate((1, 2, 4, 8)):
        logits[row, :k] = 0.0
    entropy = -(torch.softmax(logits, -1) * torch.log_softmax(logits, -1)).nan_to_num().sum(-1)
    assert torch.allclose(entropy, torch.tensor([0.0, math.log(2), math.log(4), math.log(8)]), atol=1e-5)
    # threshold 1.0 nats: rows with ln 4 and ln 8 are above it
    assert multitemp_temperature(entropy, 1.0, 1.3, 0.6).tolist() == pytest.approx([0.6, 0.6, 1.3, 1.3])
    # the 0.5-quantile of (0, ln2, ln4, ln8) over the unmasked first three: ln 2
    assert entropy_quantile(entropy, torch.tensor([1, 1, 1, 0]), 0.5) == pytest.approx(math.log(2), abs=1e-5)


def test_multitemp_on_a_rollout_is_hot_exactly_above_the_split(warm_policy):
    multitemp, task = controller(["temperature.controller=multitemp", "temperature.multitemp.threshold=0.3",
                                  "temperature.multitemp.high=1.4", "temperature.multitemp.low=0.5"], warm_policy)
    problems = task.train_problems(random.Random(1), 8)
    ids, mask = encode_prompts(warm_policy, [p.prompt for p in problems for _ in range(4)])
    batch = sample(warm_policy, multitemp, ids, mask, 24, torch.Generator().manual_seed(1))
    valid = batch.completion_mask.bool()
    logits = score(warm_policy, batch).logits.float()
    entropy = -(torch.softmax(logits, -1) * torch.log_softmax(logits, -1)).sum(-1)
    hot = entropy[valid] >= 0.3
    assert 0.05 < hot.float().mean() < 0.95  # both sides of the split occur
    far = (entropy[valid] - 0.3).abs() > 1e-4  # away from float ties at the split
    expected = torch.where(hot, 1.4, 0.5)
    assert torch.equal(batch.temperatures[valid][far], expected[far])


def test_multitemp_quantile_split_moves_to_the_batch_quantile(warm_policy):
    multitemp, _ = controller(["temperature.controller=multitemp", "temperature.multitemp.split=quantile",
                               "temperature.multitemp.quantile=0.75"], warm_policy)
    assert multitemp.needs_logits_after_update and multitemp.threshold == 0.5
    logits = torch.randn(2, 5, 16, generator=torch.Generator().manual_seed(0)) * 3
    mask = torch.tensor([[1, 1, 1, 1, 0], [1, 1, 0, 0, 0]]).float()
    multitemp.after_update(None, torch.zeros(2), mask, torch.zeros(2, 5, dtype=torch.long), logits)
    entropy = -(torch.softmax(logits, -1) * torch.log_softmax(logits, -1)).sum(-1)
    assert multitemp.threshold == pytest.approx(torch.quantile(entropy[mask.bool()], 0.75).item())
    assert multitemp.metrics()["multitemp_hot_fraction"] == pytest.approx(2 / 6)
