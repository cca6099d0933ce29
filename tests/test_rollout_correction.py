"""Rollout correction: every mode (token / sequence x truncate / mask) and its bounds by hand, the mismatch
metrics, the runtime step's convention for the LM and the head, and the config section."""

from __future__ import annotations

import math

import pytest
import torch

from thermorl.algorithms.rollout_correction import correction_weights, log_ratios, mismatch_metrics
from thermorl.config import load_config
from thermorl.engines.base import RolloutBatch
from thermorl.errors import ConfigError
from thermorl.runtime.correction import CorrectionSpec, old_policy
from thermorl.temperature.base import TemperatureActions

# Two completions; row 1's last position is padding (its log-probs are garbage and must not count).
# Per-token ratios pi / mu: row 0: 3, 1, 0.25; row 1: 0.6, 0.8. Sequence ratios: 3 * 1 * 0.25 = 0.75, 0.6 * 0.8 = 0.48.
MASK = torch.tensor([[1.0, 1.0, 1.0], [1.0, 1.0, 0.0]])
ENGINE = torch.tensor([[-1.0, -2.0, -0.5], [-1.5, -0.7, 0.0]])
RATIOS = torch.tensor([[3.0, 1.0, 0.25], [0.6, 0.8, math.exp(5.0)]])
TRAINER = ENGINE + RATIOS.log()


def weights(level, mode, lower, upper):
    return correction_weights(TRAINER, ENGINE, MASK, level, mode, lower, upper)


def test_log_ratios_per_token_and_per_sequence_leave_padding_out():
    token = log_ratios(TRAINER, ENGINE, MASK, "token")
    torch.testing.assert_close(token, torch.tensor([[math.log(3), 0.0, math.log(0.25)], [math.log(0.6), math.log(0.8), 0.0]]))
    sequence = log_ratios(TRAINER, ENGINE, MASK, "sequence")
    torch.testing.assert_close(sequence.exp(), torch.tensor([[0.75] * 3, [0.48] * 3]))


def test_token_truncate_clips_each_ratio_into_the_bounds():
    w, outside = weights("token", "truncate", 0.5, 2.0)
    torch.testing.assert_close(w, torch.tensor([[2.0, 1.0, 0.5], [0.6, 0.8, 0.0]]))
    assert outside.tolist() == [[1.0, 0.0, 1.0], [0.0, 0.0, 0.0]]
    upper_only, _ = weights("token", "truncate", None, 2.0)  # TIS of Yao et al.: min(rho, C)
    torch.testing.assert_close(upper_only, torch.tensor([[2.0, 1.0, 0.25], [0.6, 0.8, 0.0]]))


def test_token_mask_zeroes_each_ratio_outside_the_bounds():
    w, outside = weights("token", "mask", 0.5, 2.0)
    torch.testing.assert_close(w, torch.tensor([[0.0, 1.0, 0.0], [0.6, 0.8, 0.0]]))
    assert outside.tolist() == [[1.0, 0.0, 1.0], [0.0, 0.0, 0.0]]
    lower_only, _ = weights("token", "mask", 0.7, None)
    torch.testing.assert_close(lower_only, torch.tensor([[3.0, 1.0, 0.0], [0.0, 0.8, 0.0]]))


def test_sequence_truncate_clips_the_product_and_weighs_every_token_of_a_completion_alike():
    w, outside = weights("sequence", "truncate", 0.5, 2.0)  # 0.75 inside; 0.48 raised to 0.5
    torch.testing.assert_close(w, torch.tensor([[0.75] * 3, [0.5, 0.5, 0.0]]))
    assert outside.tolist() == [[0.0] * 3, [1.0, 1.0, 0.0]]
    capped, _ = weights("sequence", "truncate", None, 0.6)  # 0.75 capped to 0.6; 0.48 kept
    torch.testing.assert_close(capped, torch.tensor([[0.6] * 3, [0.48, 0.48, 0.0]]))


def test_sequence_mask_drops_whole_completions_outside_the_bounds():
    w, outside = weights("sequence", "mask", 0.5, 2.0)
    torch.testing.assert_close(w, torch.tensor([[0.75] * 3, [0.0] * 3]))
    assert outside.tolist() == [[0.0] * 3, [1.0, 1.0, 0.0]]
    w, _ = weights("sequence", "mask", None, 0.7)  # TRL's sequence_mask with only C_max: 0.75 > 0.7 goes
    torch.testing.assert_close(w, torch.tensor([[0.0] * 3, [0.48, 0.48, 0.0]]))


def test_mismatch_metrics_by_hand():
    deltas = [math.log(3), 0.0, math.log(0.25), math.log(0.6), math.log(0.8)]  # the generated tokens only
    metrics = mismatch_metrics(TRAINER, ENGINE, MASK)
    assert metrics["logprob_diff_mean"] == pytest.approx(sum(abs(d) for d in deltas) / 5, rel=1e-6)
    assert metrics["logprob_diff_max"] == pytest.approx(math.log(4), rel=1e-6)
    assert metrics["log_ratio_mean"] == pytest.approx(sum(deltas) / 5, rel=1e-5)
    assert metrics["ratio_max"] == pytest.approx(3.0, rel=1e-6)
    assert metrics["ratio_min"] == pytest.approx(0.25, rel=1e-6)
    # k3 = r - 1 - log r: 3 -> 2 - log 3; 1 -> 0; 0.25 -> -0.75 + log 4; 0.6 -> -0.4 - log 0.6; 0.8 -> -0.2 - log 0.8
    k3 = (2 - math.log(3) + 0 - 0.75 + math.log(4) - 0.4 - math.log(0.6) - 0.2 - math.log(0.8)) / 5
    assert metrics["kl_k3"] == pytest.approx(k3, rel=1e-5)
    assert mismatch_metrics(TRAINER, ENGINE, torch.zeros_like(MASK)) == {}


def test_mismatch_totals_of_any_split_give_the_whole_batchs_metrics():
    """Micro-batches and processes each report totals; summed / maxed / minned they give mismatch_metrics of
    the whole, the correction's fractions included (a row split and a split with an empty part)."""
    from thermorl.runtime.correction import _totals, combine_totals, mismatch_report

    spec = CorrectionSpec("sequence", "mask", 0.5, 2.0)
    whole = old_policy(_batch(ENGINE.clone()), TRAINER, TRAINER.clone(), spec).metrics
    expected = {f"rollout_{k}": v for k, v in mismatch_metrics(TRAINER, ENGINE, MASK).items()}
    assert {k: whole[k] for k in expected} == pytest.approx(expected, rel=1e-6)
    assert whole["rollout_sequence_masked_fraction"] == pytest.approx(1 / 2)
    for rows in ([0], [1]), ([0, 1], []):
        parts = [_totals("rollout", TRAINER[r], ENGINE[r], MASK[r], spec) for r in rows]
        combined = mismatch_report(combine_totals(*parts))
        assert combined == pytest.approx({k: v for k, v in whole.items() if not k.startswith("rollout_head")}, rel=1e-6)
    assert mismatch_report(_totals("rollout", TRAINER, ENGINE, torch.zeros_like(MASK), spec)) == {}


def _batch(head_engine: torch.Tensor) -> RolloutBatch:
    n, t = MASK.shape
    return RolloutBatch(
        torch.zeros(n, 1, dtype=torch.long), torch.ones(n, 1), torch.zeros(n, t, dtype=torch.long), MASK,
        torch.ones(n, t), ENGINE.clone(), torch.zeros(n, t), torch.arange(n),
        TemperatureActions(logprob=head_engine, gate=torch.ones(n, t), z=torch.full((n, t), 0.5)),
    )


def test_the_runtime_step_corrects_the_lm_and_the_head_by_one_convention_and_logs_the_fractions():
    batch = _batch(head_engine=ENGINE.clone())
    old = old_policy(batch, TRAINER, TRAINER.clone(), CorrectionSpec("token", "mask", 0.5, 2.0))
    torch.testing.assert_close(old.weights, torch.tensor([[0.0, 1.0, 0.0], [0.6, 0.8, 0.0]]))
    torch.testing.assert_close(old.head_weights, old.weights)  # the same ratios give the head the same weights
    torch.testing.assert_close(old.head_logprobs, TRAINER * MASK)
    assert torch.equal(batch.logprobs, ENGINE) and torch.equal(batch.actions.logprob, ENGINE)  # the engine's record
    assert old.metrics["rollout_token_masked_fraction"] == pytest.approx(2 / 5)
    assert old.metrics["rollout_head_token_masked_fraction"] == pytest.approx(2 / 5)
    actions = old.head_actions(batch.actions)
    assert actions.logprob is old.head_logprobs and actions.is_weight is old.head_weights
    sequence = old_policy(batch, TRAINER, None, CorrectionSpec("sequence", "truncate", 0.5, 2.0))
    assert sequence.metrics["rollout_sequence_capped_fraction"] == pytest.approx(1 / 2)  # one completion of two
    assert sequence.head_logprobs is None and sequence.head_weights is None  # no head: the engine's actions stay
    assert old_policy(batch, TRAINER, None, CorrectionSpec()).weights is None


@pytest.mark.parametrize("engine, expected", [("vllm", "token_truncate"), ("hf", "none")])
def test_auto_is_token_truncation_with_vllm_and_none_with_hf(engine, expected):
    config = load_config(None, [])
    assert config.algorithm.rollout_correction.resolved(engine) == expected
    assert config.algorithm.rollout_correction.clip_max == 2.0 and config.algorithm.rollout_correction.clip_min is None


@pytest.mark.parametrize("overrides, message", [
    (["algorithm.rollout_is=tis"], "algorithm.rollout_is was replaced by algorithm.rollout_correction.mode"),
    (["algorithm.rollout_is_cap=3"], "algorithm.rollout_is_cap was replaced by algorithm.rollout_correction.clip_max"),
    (["algorithm.rollout_correction.mode=token_mask", "algorithm.rollout_correction.clip_max=null"],
     "algorithm.rollout_correction.mode=token_mask needs clip_max or clip_min"),
    (["algorithm.rollout_correction.clip_min=3"], "algorithm.rollout_correction.clip_min must be <= clip_max"),
    (["algorithm.rollout_correction.clip_max=0"], "algorithm.rollout_correction.clip_max must be > 0"),
    (["algorithm.rollout_correction.mode=tis"], "algorithm.rollout_correction.mode must be one of"),
])
def test_bad_or_moved_rollout_correction_settings_are_refused_by_name(overrides, message):
    with pytest.raises(ConfigError, match=message):
        load_config(None, overrides)
