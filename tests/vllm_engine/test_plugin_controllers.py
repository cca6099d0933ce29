"""Controllers written outside thermorl run on the vLLM engine through the sampling plan they declare: the
two below live in this file only (no thermorl file names them). One is a per-position rule and trains the
default job on vLLM; the other is a temperature head of its own, which the engine runs inside its model."""

import json
from dataclasses import dataclass
from functools import partial

import pytest
import torch
from torch import nn

from thermorl.config import CONTROLLERS, load_config
from thermorl.config.fields import doc, temperatures
from thermorl.runtime.forward import score
from thermorl.temperature.base import InModelHead, PerPosition, StepContext, TemperatureActions, TemperatureController


def zigzag_rule(logits, positions, low, high):
    """low at even completion positions, high at odd ones, cooled where the model is confident."""
    confident = torch.softmax(logits, -1).amax(-1) > 0.9
    tau = torch.where(positions.to(logits.device) % 2 == 0, low, high).float()
    return torch.where(confident, tau * 0.9, tau)


@dataclass
class ZigzagConfig:
    low: float = doc("Temperature of even positions.", 0.7)
    high: float = doc("Temperature of odd positions.", 1.3)

    def validate(self) -> None:
        temperatures(self, "low", "high", section="temperature.zigzag")

    def temperature_span(self) -> tuple[float, float]:
        return 0.9 * self.low, self.high


class ZigzagController(TemperatureController):
    name = "zigzag"

    def __init__(self, config: ZigzagConfig, env) -> None:
        self.config = config

    def sampling(self):
        return PerPosition(partial(zigzag_rule, low=self.config.low, high=self.config.high))


def two_temperature_draw(u, previous, generator):
    """Categorical over {0.8, 1.2} from softmax(u): the test head's whole policy."""
    index = torch.multinomial(torch.softmax(u, -1), 1, generator=generator).squeeze(-1)
    logprob = torch.log_softmax(u, -1).gather(-1, index[:, None]).squeeze(-1)
    return torch.tensor([0.8, 1.2], device=u.device)[index], TemperatureActions(logprob=logprob, bin=index)


@dataclass
class PairConfig:
    def temperature_span(self) -> tuple[float, float]:
        return 0.8, 1.2


class PairController(TemperatureController):
    name = "pair"

    def __init__(self, config: PairConfig, env) -> None:
        self.head = nn.Sequential(nn.Linear(env.hidden_size, 8), nn.Tanh(), nn.Linear(8, 2))
        with torch.no_grad():
            self.head[2].weight.normal_(0.0, 2.0, generator=torch.Generator().manual_seed(0))
        self.generator = torch.Generator().manual_seed(env.seed + 5)

    @property
    def module(self):
        return self.head

    def sampling(self):
        return InModelHead(self.head, two_temperature_draw, 1.0, self.generator)

    def choose(self, ctx: StepContext):
        return two_temperature_draw(self.head(ctx.hidden), None, self.generator)


@pytest.fixture
def registered():
    CONTROLLERS.register("zigzag", ZigzagConfig)(ZigzagController)
    CONTROLLERS.register("pair", PairConfig)(PairController)
    yield
    del CONTROLLERS["zigzag"], CONTROLLERS["pair"]


def test_a_per_position_controller_from_a_test_file_trains_on_vllm(registered, tmp_path):
    """Two default-job steps with temperature.controller=zigzag on rollout.engine=vllm: the run finishes, the
    sampled temperatures follow the rule (two values and their cooled forms) and the engine's log-probs
    match the trainer's."""
    from thermorl.runtime.trainer import train

    config = load_config(None, [
        "temperature.controller=zigzag", "rollout.engine=vllm", "rollout.vllm.max_model_len=256", "train.steps=2",
        "task.eval_size=8", "train.eval_avg_problems=4", "train.eval_avg_k=2", "log.tensorboard=false",
        "log.plot=false", "log.progress=false", "log.samples_per_step=4",
    ])
    summary = train(config, tmp_path / "run")
    assert summary["lm_updates"] == 2
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [0, 1, 2]
    assert all(r["rollout_logprob_diff_max"] < 1e-3 for r in rows[1:])
    samples = [json.loads(line) for line in (tmp_path / "run" / "samples.jsonl").read_text().splitlines()]
    seen = {round(t, 4) for s in samples for t in s["temperatures"]}
    assert seen <= {0.7, 1.3, 0.63, 1.17} and {0.7, 1.3} & seen
    for sample in samples:
        for position, tau in enumerate(sample["temperatures"]):
            assert round(tau, 4) in ((0.7, 0.63) if position % 2 == 0 else (1.3, 1.17))


def test_a_head_controller_from_a_test_file_samples_inside_vllm(registered, vllm_setup):
    """An InModelHead plan defined here: the engine builds the test's own head module into vLLM, draws with the
    test's own function, and what it records (temperatures, bins, log-probs) is what that head gives on the
    trainer's hidden states."""
    import random

    from thermorl.engines.hf import encode_prompts
    from thermorl.engines.vllm import VLLMEngine
    from thermorl.temperature import ControllerEnv, build_controller

    _, components, _ = vllm_setup
    config = load_config(None, ["temperature.controller=pair", "rollout.engine=vllm", "rollout.vllm.max_model_len=128"])
    controller = build_controller(config.temperature, ControllerEnv(components.policy.hidden_size, 2,
                                                                    torch.device("cpu"), 4, 0))
    engine = VLLMEngine(components.policy, config.rollout, controller)
    try:
        problems = components.task.train_problems(random.Random(0), 4)
        prompt_ids, prompt_mask = encode_prompts(components.policy, [p.prompt for p in problems for _ in range(4)])
        batch = engine.sample(controller, prompt_ids, prompt_mask, 16, torch.Generator().manual_seed(0))
    finally:
        engine.close()
    mask = batch.completion_mask.bool()
    assert sorted(round(t, 5) for t in batch.temperatures[mask].unique().tolist()) == [0.8, 1.2]
    scored = score(components.policy, batch)
    u = controller.head(scored.hidden)
    expected = torch.log_softmax(u, -1).gather(-1, batch.actions.bin.unsqueeze(-1)).squeeze(-1)
    assert ((expected - batch.actions.logprob).abs()[mask]).max().item() < 1e-4
    assert torch.equal(torch.tensor([0.8, 1.2])[batch.actions.bin][mask], batch.temperatures[mask])
    assert ((scored.logprobs - batch.logprobs).abs()[mask]).max().item() < 1e-4
