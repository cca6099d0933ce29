"""Issue 18's fair study: equal LM updates, one evaluation temperature, EAD's T = 1 training, the
head's trust region, and compare's ablation arms."""

from __future__ import annotations

import json
import math
from dataclasses import replace

import pytest
import torch
from conftest import run_cli
from torch.distributions import Bernoulli, Beta, kl_divergence

from thermorl.algorithms.grpo import aggregate, truncated_importance_weights
from thermorl.algorithms.hierarchical import beta_head_parameters, bins_kl, hybrid_kl
from thermorl.config import load_config
from thermorl.engines.hf import encode_prompts, sample
from thermorl.runtime.forward import score
from thermorl.errors import ConfigError, ThermoRLError
from thermorl.runtime.components import build_components
from thermorl.runtime.update import grpo_update
from thermorl.study import compare as study
from thermorl.study.evaluate import evaluate_policy
from thermorl.temperature import CONTROLLERS

TINY = ["model.path=builtin:random", "model.hidden_size=32", "model.num_layers=1", "model.num_heads=2",
        "task.eval_size=20", "train.eval_avg_problems=6", "train.eval_avg_k=2", "rollout.max_new_tokens=10",
        "rollout.prompts_per_step=2", "rollout.group_size=4"]
RUN = ["--steps", "3", "--set", "log.tensorboard=false", "--set", "log.progress=false", "--set", "log.plot=false"]


def _cli_summary(tmp_path, name, *extra):
    out = tmp_path / name
    overrides = [arg for item in TINY for arg in ("--set", item)]
    result = run_cli("train", "--out", str(out), *RUN, *overrides, *extra)
    assert result.returncode == 0, result.stderr[-2000:]
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return json.loads((out / "summary.json").read_text()), rows


def test_default_introspective_makes_as_many_lm_updates_as_fixed(tmp_path):
    fixed, fixed_rows = _cli_summary(tmp_path, "fixed", "--controller", "fixed")
    intro, intro_rows = _cli_summary(tmp_path, "intro", "--controller", "introspective")
    assert fixed["lm_updates"] == intro["lm_updates"] == 3
    assert (fixed["head_updates"], intro["head_updates"]) == (0, 3)
    assert [r["lm_updates"] for r in intro_rows[1:]] == [r["lm_updates"] for r in fixed_rows[1:]] == [1, 2, 3]
    assert [r["head_updates"] for r in intro_rows[1:]] == [1, 2, 3]
    samples = [json.loads(line) for line in (tmp_path / "intro" / "samples.jsonl").read_text().splitlines()]
    assert samples and all(len(row["classes"]) == len(row["temperatures"]) for row in samples)
    # the phase schedule (the old default) starves the LM: 1 LM step, 1 head step, 1 LM step
    phases, _ = _cli_summary(tmp_path, "phases", "--controller", "introspective",
                             "--set", "temperature.introspective.schedule=phases",
                             "--set", "temperature.introspective.lm_phase_steps=1",
                             "--set", "temperature.introspective.head_phase_steps=1")
    assert (phases["lm_updates"], phases["head_updates"]) == (2, 1)


@pytest.mark.parametrize("name", sorted(CONTROLLERS))
def test_every_controller_is_evaluated_at_the_shared_temperature(name):
    config = load_config(None, TINY + [f"temperature.controller={name}", "train.eval_temperature=0.7"])
    c = build_components(config)
    seen: list[torch.Tensor] = []
    metrics = evaluate_policy(c, config, 5, torch.Generator().manual_seed(0),
                              on_batch=lambda batch: seen.append(batch.temperatures[batch.completion_mask > 0]))
    recorded = torch.cat(seen)
    assert recorded.numel() > 0 and torch.all(recorded == 0.7), f"{name}: {recorded.unique()}"
    assert 0 <= metrics["eval_avg_at_k"] <= metrics["eval_pass_at_k"] <= 1
    assert ("eval_own_avg_at_k" in metrics) is (name in {"introspective", "ead", "entropy"})


def test_truncated_importance_weights_by_hand():
    target = torch.tensor([-1.0, -2.0, 0.0])
    behaviour = torch.tensor([-1.5, -1.0, -3.0])
    expected = torch.tensor([math.exp(0.5), math.exp(-1.0), 2.0])  # exp(3) = 20.1 is capped at 2
    assert torch.allclose(truncated_importance_weights(target, behaviour, 2.0), expected)


def test_ead_t1_mode_trains_the_t1_policy_with_capped_importance_weights():
    cap = 1.3
    config = load_config(None, TINY + [
        "temperature.controller=ead", "temperature.ead.train_at=one", f"temperature.ead.is_cap={cap}",
        "temperature.ead.warmup_tokens=2", "temperature.ead.d0=4", "temperature.ead.tau_min=0.3",
        "algorithm.max_grad_norm=0",
    ])
    c = build_components(config)
    prompt_ids, prompt_mask = encode_prompts(c.policy, [p.prompt for p in c.task.eval_problems()[:2] for _ in range(4)])
    batch = sample(c.policy, c.controller, prompt_ids, prompt_mask, 10, torch.Generator().manual_seed(3),
                   training_step=1)
    mask = batch.completion_mask
    assert (batch.temperatures[mask > 0] < 1.0).any()  # annealed samples
    advantages = torch.tensor([1.0, -0.5, 0.25, -0.75, 0.5, -1.0, 1.5, -1.25])

    # by hand: the T = 1 log-probs, w = min(exp(logp_T1_old - logp_sample), cap), ratio 1 at the first update
    c.policy.model.zero_grad(set_to_none=True)
    at_one = score(c.policy, replace(batch, temperatures=torch.ones_like(batch.temperatures))).logprobs
    weights = torch.minimum(torch.exp(at_one.detach() - batch.logprobs), torch.tensor(cap))
    assert (weights == cap).any() and (weights < cap).any()  # both sides of the cap occur
    ratio = torch.exp(at_one - at_one.detach())
    manual = aggregate(-ratio * advantages[:, None] * weights, mask)
    manual.backward()
    expected_grads = [p.grad.clone() for p in c.policy.model.parameters()]

    # the same loss at the annealed temperatures has another gradient (the check can fail)
    c.policy.model.zero_grad(set_to_none=True)
    at_sampled = score(c.policy, batch).logprobs
    aggregate(-torch.exp(at_sampled - at_sampled.detach()) * advantages[:, None] * weights, mask).backward()
    sampled_grads = [p.grad.clone() for p in c.policy.model.parameters()]

    metrics = grpo_update(c, config, batch, advantages, 1, torch.Generator().manual_seed(0))
    assert metrics["pg_loss"] == pytest.approx(manual.item(), abs=1e-6)
    assert metrics["is_weight_mean"] == pytest.approx(aggregate(weights, mask).item(), abs=1e-6)
    got = [p.grad for p in c.policy.model.parameters()]
    assert all(torch.allclose(g, e, atol=1e-6) for g, e in zip(got, expected_grads))
    assert not all(torch.allclose(g, s, atol=1e-6) for g, s in zip(got, sampled_grads))


def test_hybrid_kl_equals_torch_distributions():
    generator = torch.Generator().manual_seed(0)
    u, u0 = torch.randn(64, 3, generator=generator), torch.randn(64, 3, generator=generator)
    p, a, b = beta_head_parameters(u, 1e-3)
    p0, a0, b0 = beta_head_parameters(u0, 1e-3)
    expected = kl_divergence(Bernoulli(p), Bernoulli(p0)) + p * kl_divergence(Beta(a, b), Beta(a0, b0))
    assert torch.allclose(hybrid_kl(u, u0, 1e-3), expected, atol=1e-5)
    assert torch.allclose(hybrid_kl(u0, u0, 1e-3), torch.zeros(64), atol=1e-6)
    logits, logits0 = torch.randn(8, 4, generator=generator), torch.randn(8, 4, generator=generator)
    q, q0 = torch.softmax(logits, -1), torch.softmax(logits0, -1)
    assert torch.allclose(bins_kl(logits, logits0), (q * (q.log() - q0.log())).sum(-1), atol=1e-6)


def test_kl_coef_adds_the_trust_region_to_the_head_loss():
    base = TINY + ["temperature.controller=introspective"]
    losses = {}
    for coef in (0.0, 0.5):
        config = load_config(None, base + [f"temperature.introspective.kl_coef={coef}"])
        c = build_components(config)
        with torch.no_grad():  # move the head away from its initial policy
            c.controller.head.out.weight.normal_(generator=torch.Generator().manual_seed(1))
        prompt_ids, prompt_mask = encode_prompts(c.policy, ["3,7,2>8:"] * 4)
        batch = sample(c.policy, c.controller, prompt_ids, prompt_mask, 8, torch.Generator().manual_seed(2))
        scored = score(c.policy, batch)
        loss, metrics = c.controller.policy_loss(scored.hidden, batch.actions, torch.zeros(4), batch.completion_mask, 1)
        losses[coef] = (loss.item(), metrics["temp_kl_initial"])
    kl = losses[0.0][1]
    assert kl > 0
    assert losses[0.5][0] == pytest.approx(losses[0.0][0] + 0.5 * kl, rel=1e-5)


def test_bins_are_checked_only_for_the_bins_head_and_the_range_is_shown():
    load_config(None, ["temperature.controller=introspective", "temperature.introspective.tau_min=0.5"])
    with pytest.raises(ConfigError, match=r"in \[tau_min, tau_max\] = \[0.5, 1.5\], got \[0.4, 0.7, 1.0, 1.3\]"):
        load_config(None, ["temperature.controller=introspective", "temperature.introspective.tau_min=0.5",
                           "temperature.introspective.head=bins"])


def test_compare_arms_carry_their_overrides():
    arms = study.parse_arms("fixed:0.6,introspective[schedule=joint],introspective[head=bins],ead[train_at=one],"
                            "introspective[kl_coef=0.1,algorithm.lr=1e-4]")
    assert [a.label for a in arms][1:3] == ["introspective[schedule=joint]", "introspective[head=bins]"]
    assert arms[1].overrides == ("temperature.controller=introspective", "temperature.introspective.schedule=joint")
    assert arms[3].overrides == ("temperature.controller=ead", "temperature.ead.train_at=one")
    assert arms[4].overrides[1:] == ("temperature.introspective.kl_coef=0.1", "algorithm.lr=1e-4")
    assert [a.slug for a in arms] == ["fixed_0.6", "introspective-schedule_joint", "introspective-head_bins",
                                      "ead-train_at_one", "introspective-kl_coef_0.1-algorithm.lr_1e-4"]


@pytest.mark.parametrize("spec, message", [
    ("introspective[shedule=joint]", "unknown config key temperature.introspective.shedule"),
    ("ead[train_at=two]", "temperature.ead.train_at must be one of"),
    ("introspective[joint]", "must look like key=value"),
    ("introspective[schedule=joint", "cannot read"),
])
def test_compare_rejects_bad_arm_overrides_naming_the_field(spec, message):
    with pytest.raises(ThermoRLError, match=message):
        study.parse_arms(spec)


def test_likelihood_optimal_temperature_of_positive_and_negative_trajectories():
    from thermorl.algorithms.tampo import likelihood_optimal_temperatures

    candidates = torch.tensor([0.6, 1.0, 1.4])
    loglik = torch.tensor([[-1.0, -2.0, -3.0], [-1.2, -1.9, -2.5],   # positive: best at 0.6
                           [-3.0, -2.0, -1.5], [-2.8, -2.2, -1.0]])  # negative: best at 1.4
    assert likelihood_optimal_temperatures(loglik, torch.tensor([1.0, 0.5, -1.0, -0.2]), candidates) == (0.6, 1.4)
    positive_only = likelihood_optimal_temperatures(loglik, torch.tensor([1.0, 0.0, 0.0, 0.0]), candidates)
    assert positive_only[0] == 0.6 and math.isnan(positive_only[1])


def test_class_temperature_curves_average_each_class_per_window():
    samples = [
        {"step": 1, "classes": ["digit", "operator", "digit"], "temperatures": [0.5, 1.0, 0.7]},
        {"step": 2, "classes": ["digit", "end"], "temperatures": [0.9, 1.2]},
        {"step": 3, "classes": ["digit"], "temperatures": [0.2]},
    ]
    from thermorl.reports.plots import class_temperature_curves

    curves = class_temperature_curves(samples, window=2)
    assert curves["digit"] == [(1.5, pytest.approx((0.5 + 0.7 + 0.9) / 3)), (3.5, pytest.approx(0.2))]
    assert curves["operator"] == [(1.5, 1.0)] and curves["end"] == [(1.5, 1.2)]


def test_exploration_summary_reads_the_last_steps_and_every_evaluation():
    rows = [{"step": 0, "eval_accuracy": 0.4}]
    rows += [{"step": s, "temperature_mean": 1.0 if s <= 2 else 0.5, "zero_variance_groups": s / 10} for s in (1, 2, 3, 4)]
    rows[-1]["eval_accuracy"] = 0.6
    summary = study.exploration_summary(rows, last=2)
    assert summary["temperature_last"] == 0.5 and summary["zero_variance_last"] == pytest.approx(0.35)
    assert summary["accuracy_by_step"] == {0: 0.4, 4: 0.6}
