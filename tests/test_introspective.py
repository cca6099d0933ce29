"""The Introspective LLM controller: its log-probs, its gate, its training phases, its checkpoints, its CLI."""

from __future__ import annotations

import json
import random
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import run_cli
from safetensors.torch import load_file
from torch.distributions import Bernoulli, Beta, Categorical

from thermorl.algorithms.hierarchical import bins_entropy, hybrid_entropy, temperature_logprob
from thermorl.config import load_config
from thermorl.engines.hf import encode_prompts, sample
from thermorl.runtime.forward import score
from thermorl.runtime import checkpoint as ckpt
from thermorl.runtime.components import build_components, load_for_eval
from thermorl.runtime.update import grpo_update
from thermorl.temperature import ControllerEnv, StepContext, build_controller
from thermorl.temperature.introspective import IntrospectiveConfig, IntrospectiveController

PROMPTS = ["3,7,2>23:", "5,3,9>12:", "8,2,1>6:", "4,4,6>40:"]
TINY = ["model.path=builtin:random", "model.hidden_size=32", "model.num_layers=1", "model.num_heads=2"]


def _controller(seed: int = 0, **overrides) -> IntrospectiveController:
    env = ControllerEnv(hidden_size=32, total_steps=10, device=torch.device("cpu"), seed=seed)
    return IntrospectiveController(IntrospectiveConfig(**overrides), env)


def _randomise_head(controller: IntrospectiveController, seed: int) -> None:
    """Give the zero-initialised output layer weights, so u depends on h and varies across rows."""
    weight = controller.head.out.weight
    with torch.no_grad():
        weight.copy_(torch.randn(weight.shape, generator=torch.Generator().manual_seed(seed)))


def _sample(policy, controller, tokens: int = 12, seed: int = 0, repeat: int = 4):
    prompt_ids, prompt_mask = encode_prompts(policy, PROMPTS * repeat)
    return sample(policy, controller, prompt_ids, prompt_mask, tokens, torch.Generator().manual_seed(seed))


@pytest.fixture(scope="module")
def components():
    config = load_config(None, TINY + ["temperature.controller=introspective", "rollout.group_size=4",
                                       "temperature.introspective.schedule=phases",
                                       "temperature.introspective.lm_phase_steps=1",
                                       "temperature.introspective.head_phase_steps=1"])
    return config, build_components(config)


def test_recorded_head_logprob_equals_torch_distributions():
    controller = _controller()
    _randomise_head(controller, seed=1)
    hidden = torch.randn(256, 32, generator=torch.Generator().manual_seed(2))
    controller.start(256, training_step=1)
    tau, records = controller.choose(StepContext(torch.zeros(256, 5), hidden, 0, torch.arange(256), 1))
    u = controller.head(hidden).detach()
    alpha, beta = torch.nn.functional.softplus(u[:, 1:]).unbind(-1)
    gate = records.gate
    assert 0 < gate.mean() < 1  # both branches are exercised
    fired = gate > 0
    expected = Bernoulli(logits=u[:, 0]).log_prob(gate)
    expected[fired] += Beta(alpha[fired] + 1e-3, beta[fired] + 1e-3).log_prob(records.z[fired])
    torch.testing.assert_close(records.logprob, expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(tau[fired], 0.1 + records.z[fired] * 1.4)

    p = torch.sigmoid(u[:, 0])
    entropy = Bernoulli(probs=p).entropy() + p * Beta(alpha + 1e-3, beta + 1e-3).entropy()
    torch.testing.assert_close(hybrid_entropy(u, 1e-3), entropy, rtol=1e-4, atol=1e-5)


def test_bins_head_logprob_equals_categorical():
    controller = _controller(head="bins", bins=[0.3, 0.8, 1.2])
    _randomise_head(controller, seed=3)
    hidden = torch.randn(128, 32, generator=torch.Generator().manual_seed(4))
    controller.start(128, training_step=1)
    tau, records = controller.choose(StepContext(torch.zeros(128, 5), hidden, 0, torch.arange(128), 1))
    u = controller.head(hidden).detach()
    torch.testing.assert_close(records.logprob, Categorical(logits=u).log_prob(records.bin))
    torch.testing.assert_close(tau, torch.tensor([0.3, 0.8, 1.2])[records.bin])
    torch.testing.assert_close(bins_entropy(u), Categorical(logits=u).entropy())


def test_gate_zero_keeps_the_previous_temperature(components):
    _, c = components
    controller = _controller(tau_init=0.7, gate_init=0.3)
    _randomise_head(controller, seed=5)
    batch = _sample(c.policy, controller)
    mask, gate = batch.completion_mask > 0, batch.actions.gate
    kept = mask & (gate == 0)
    assert kept.any() and (mask & (gate == 1)).any()
    previous = torch.cat([torch.full_like(batch.temperatures[:, :1], 0.7), batch.temperatures[:, :-1]], dim=1)
    torch.testing.assert_close(batch.temperatures[kept], previous[kept])
    assert ((batch.temperatures[mask] >= 0.1) & (batch.temperatures[mask] <= 1.5)).all()


def test_never_firing_gate_samples_at_tau_init(components):
    _, c = components
    controller = _controller(tau_init=0.55)
    with torch.no_grad():
        controller.head.out.bias[0] = -60.0  # P(gate) = sigmoid(-60): never fires
    batch = _sample(c.policy, controller)
    mask = batch.completion_mask > 0
    assert (batch.actions.gate[mask] == 0).all()
    assert torch.allclose(batch.temperatures[mask], torch.tensor(0.55))


def test_training_forward_reproduces_the_recorded_head_logprob(components):
    """The head sees the same hidden state in the training forward pass as at sampling: ratio 1."""
    _, c = components
    controller = _controller()
    _randomise_head(controller, seed=6)
    batch = _sample(c.policy, controller)
    with torch.no_grad():
        hidden = score(c.policy, batch).hidden
        u = controller.head(hidden)
    recomputed = temperature_logprob(u, batch.actions.gate, batch.actions.z, 1e-3)
    mask = batch.completion_mask > 0
    torch.testing.assert_close(recomputed[mask], batch.actions.logprob[mask], rtol=1e-4, atol=1e-4)


def _parameters(module: torch.nn.Module) -> list[torch.Tensor]:
    return [p.detach().clone() for p in module.parameters()]


def _changed(before: list[torch.Tensor], module: torch.nn.Module) -> bool:
    return any(not torch.equal(b, p) for b, p in zip(before, module.parameters()))


def test_phases_schedule_freezes_the_resting_policy(components):
    config, c = components
    controller = c.controller
    assert controller.trains_lm(1) and not controller.trains_head(1)
    assert not controller.trains_lm(2) and controller.trains_head(2)
    generator = torch.Generator().manual_seed(0)
    batch = _sample(c.policy, controller, tokens=8)
    advantages = torch.randn(len(batch), generator=torch.Generator().manual_seed(7))
    for step, lm_moves in ((1, True), (2, False)):
        lm_before, head_before = _parameters(c.policy.model), _parameters(controller.module)
        grpo_update(c, config, batch, advantages, step, generator)
        assert _changed(lm_before, c.policy.model) is lm_moves, f"step {step}"
        assert _changed(head_before, controller.module) is not lm_moves, f"step {step}"


def test_alternate_schedule_updates_lm_then_head_every_step(components):
    config, _ = components
    config = load_config(None, TINY + ["temperature.controller=introspective", "rollout.group_size=4"])
    assert config.temperature.introspective.schedule == "alternate"  # the default
    c = build_components(config)
    assert all(c.controller.trains_lm(s) and c.controller.trains_head(s) for s in range(1, 30))
    generator = torch.Generator().manual_seed(0)
    batch = _sample(c.policy, c.controller, tokens=8)
    advantages = torch.randn(len(batch), generator=torch.Generator().manual_seed(7))
    for step in (1, 2):
        lm_before, head_before = _parameters(c.policy.model), _parameters(c.controller.module)
        counts = grpo_update(c, config, batch, advantages, step, generator)
        assert _changed(lm_before, c.policy.model) and _changed(head_before, c.controller.module), f"step {step}"
        assert (counts["lm_steps"], counts["head_steps"]) == (1, 1)


@pytest.mark.parametrize("detach", [True, False])
def test_detach_hidden_decides_whether_head_gradients_reach_the_lm(components, detach):
    _, c = components
    controller = _controller(schedule="joint", detach_hidden=detach)
    _randomise_head(controller, seed=8)
    batch = _sample(c.policy, controller, tokens=8)
    c.policy.model.zero_grad(set_to_none=True)
    scored = score(c.policy, batch)
    advantages = torch.randn(len(batch), generator=torch.Generator().manual_seed(9))
    loss, _ = controller.policy_loss(scored.hidden, batch.actions, advantages, batch.completion_mask, 1)
    loss.backward()
    lm_grads = [p.grad for p in c.policy.model.parameters() if p.grad is not None]
    assert any(g.abs().sum() > 0 for g in lm_grads) is (not detach)
    assert controller.head.out.weight.grad.abs().sum() > 0
    c.policy.model.zero_grad(set_to_none=True)


def test_checkpoint_round_trip_reproduces_temperatures(components, tmp_path):
    config, c = components
    trained = build_controller(config.temperature, ControllerEnv(32, 10, torch.device("cpu"), seed=11))
    _randomise_head(trained, seed=12)
    ckpt.save_checkpoint(tmp_path, 1, c.policy.model, c.policy.tokenizer, trained.state_dict(), {},
                         torch.Generator(), random.Random(0), keep=1)
    saved = ckpt.list_checkpoints(tmp_path)[-1]
    assert set(load_file(str(saved / "controller.safetensors"))) == {f"head.{k}" for k in trained.head.state_dict()} | {
        "generator"
    }
    overrides = TINY[1:] + ["temperature.controller=introspective", f"model.path={saved / 'model'}"]
    policy, _, loaded = load_for_eval(load_config(None, overrides + ["train.seed=11"]))
    reference = _sample(c.policy, trained, seed=4)
    again = _sample(policy, loaded, seed=4)
    assert torch.equal(again.temperatures, reference.temperatures)
    assert torch.equal(again.completion_ids, reference.completion_ids)
    _, _, other_seed = load_for_eval(load_config(None, overrides + ["train.seed=12"]))
    assert not torch.equal(_sample(policy, other_seed, seed=4).temperatures, reference.temperatures)


def _thermorl(*args: str) -> subprocess.CompletedProcess:
    result = run_cli(*args)
    assert result.returncode == 0, result.stderr[-2000:]
    return result


def _thermorl_script(path: str, *args: str) -> subprocess.CompletedProcess:
    root = Path(__file__).resolve().parents[1]
    result = subprocess.run([sys.executable, str(root / path), *args], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    return result


def test_cli_trains_reports_and_generates(tmp_path):
    run = tmp_path / "run"
    _thermorl(
        "train", "--controller", "introspective", "--steps", "3", "--set", "model.path=builtin:random",
        "--set", "task.eval_size=50", "--set", "train.eval_avg_problems=10", "--set", "train.eval_avg_k=2",
        "--set", "rollout.prompts_per_step=2", "--set", "rollout.group_size=2", "--set", "rollout.max_new_tokens=10",
        "--set", "model.hidden_size=32", "--set", "model.num_layers=1", "--set", "model.num_heads=2",
        "--set", "temperature.introspective.schedule=phases",
        "--set", "temperature.introspective.lm_phase_steps=1", "--set", "temperature.introspective.head_phase_steps=1",
        "--set", "log.tensorboard=false", "--set", "log.progress=false", "--out", str(run),
    )
    assert (run / "temperature_plots.png").stat().st_size > 10_000
    traces = [json.loads(line) for line in (run / "temperature_traces.jsonl").read_text().splitlines()]
    assert len(traces) == 64
    assert all(len(t["tokens"]) == len(t["temperatures"]) == len(t["gate"]) == len(t["classes"]) for t in traces)
    page = (run / "temperatures.html").read_text()
    assert page.count("<span style=\"background:") >= sum(len(t["tokens"]) for t in traces)
    metrics = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [m.get("temp_head_phase") for m in metrics[1:]] == [0.0, 1.0, 0.0]
    scored = [json.loads(line) for line in (run / "eval_problems.jsonl").read_text().splitlines()]
    assert [row["step"] for row in scored] == [0, 3]  # every problem's scores, for paired before/after tests
    for row, logged in zip(scored, [metrics[0], metrics[-1]]):
        assert len(row["greedy"]) == 50 and sum(row["greedy"]) / 50 == pytest.approx(logged["eval_accuracy"])
        assert len(row["avg_at_k"]) == 10 and sum(row["avg_at_k"]) / 10 == pytest.approx(logged["eval_avg_at_k"])
    report = _thermorl_script("examples/run_report.py", str(run)).stdout  # the before/after report reads them
    result = json.loads((run / "report.json").read_text())
    assert result["greedy"]["before"] == pytest.approx(metrics[0]["eval_accuracy"])
    assert result["greedy"]["after"] == pytest.approx(metrics[-1]["eval_accuracy"])
    assert set(result["temperature_by_class"]) <= {"digit", "operator", "separator", "final answer", "end", "other"}
    assert "| greedy accuracy | 50 |" in report and "| avg@k | 10 |" in report

    shown = _thermorl("generate", "--checkpoint", str(run), "--prompt", "3,7,2>23:", "--show-temperatures",
                      "--samples", "2", "--seed", "3").stdout
    lines = shown.strip().splitlines()
    assert [line.split(":")[0] for line in lines] == ["sample 1", "sample 2"]
    assert all(line.count("⟨") >= 1 for line in lines)


def test_head_loss_rollout_correction_weights_each_token_as_hand_computed():
    """temperature_policy_loss with importance w_t: L = mean_t -w_t min(rho_t A, clip(rho_t) A), by hand.

    rho = (1, 1.5, 0.5), A = 2, epsilon = 0.2: unweighted terms -2, -2.4 (clipped at 1.2), -1 -> mean -1.8;
    w = (0.5, 1, 1.5): -(1 + 2.4 + 1.5) / 3 = -4.9 / 3; with the last token masked: -(1 + 2.4) / 2 = -1.7.
    Gradient w.r.t. log pi: -w_t rho_t A / 3 where unclipped, 0 where clipped: (-1/3, 0, -0.5).
    """
    from thermorl.algorithms.hierarchical import temperature_policy_loss

    logprobs = torch.log(torch.tensor([[1.0, 1.5, 0.5]])).requires_grad_(True)
    old, advantages, mask = torch.zeros(1, 3), torch.tensor([2.0]), torch.ones(1, 3)
    weights = torch.tensor([[0.5, 1.0, 1.5]])
    plain, _ = temperature_policy_loss(logprobs, old, advantages, mask, 0.2)
    assert plain.item() == pytest.approx(-1.8, abs=1e-6)
    weighted, diagnostics = temperature_policy_loss(logprobs, old, advantages, mask, 0.2, importance=weights)
    assert weighted.item() == pytest.approx(-4.9 / 3, abs=1e-6)
    assert diagnostics["is_weight_mean"].item() == pytest.approx(1.0, abs=1e-6)
    weighted.backward()
    assert torch.allclose(logprobs.grad, torch.tensor([[-1 / 3, 0.0, -0.5]]), atol=1e-6)
    masked, _ = temperature_policy_loss(logprobs, old, advantages, torch.tensor([[1.0, 1.0, 0.0]]), 0.2, importance=weights)
    assert masked.item() == pytest.approx(-1.7, abs=1e-6)
    ones, _ = temperature_policy_loss(logprobs, old, advantages, mask, 0.2, importance=torch.ones(1, 3))
    assert ones.item() == pytest.approx(plain.item(), abs=1e-7)  # weights of 1 change nothing


def test_controller_passes_the_recorded_head_weights_to_its_loss():
    """actions.is_weight (the head's rollout correction) scales the controller's policy-gradient term."""
    import dataclasses

    from thermorl.temperature.base import TemperatureActions

    controller = _controller(schedule="joint")
    hidden = torch.randn(2, 5, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        u = controller.head(hidden)
    gate = torch.tensor([[1.0, 0.0, 1.0, 1.0, 0.0], [0.0, 1.0, 1.0, 0.0, 1.0]])
    z = torch.full((2, 5), 0.3) * gate
    actions = TemperatureActions(logprob=temperature_logprob(u, gate, z, controller.config.eps), gate=gate, z=z)
    advantages, mask = torch.tensor([1.0, -0.5]), torch.ones(2, 5)
    _, plain = controller.policy_loss(hidden, actions, advantages, mask, 0)
    _, doubled = controller.policy_loss(hidden, dataclasses.replace(actions, is_weight=2 * mask), advantages, mask, 0)
    assert plain["temp_pg_loss"] != 0
    assert doubled["temp_pg_loss"] == pytest.approx(2 * plain["temp_pg_loss"], rel=1e-6)
    assert doubled["temp_is_weight_mean"] == pytest.approx(2.0) and "temp_is_weight_mean" not in plain
