"""The step that gives a sampled batch its pi_old and rollout-correction weights, the LM's and the head's alike.

One convention for both: the batch keeps what the engine recorded (``batch.logprobs`` for the LM's tokens,
``batch.actions.logprob`` for the head's actions: the behaviour policy mu), and :class:`OldPolicy` holds what
the trainer computed from its own forward pass: pi_old of each, the correction weights w of each
(``algorithms.rollout_correction``) and the mismatch metrics. The update reads pi_old and w from here only.

Where the forward pass comes from is the update's business (``runtime.update``): the update's own forward,
detached, when the step makes one optimizer step; a separate no-grad pass before it otherwise. The mismatch
metrics travel as totals (sums, maxima, minima) so that the update can combine them over micro-batches and
processes (``combine_totals``, ``Distributed.combine``) before ``mismatch_report`` turns them into the logged
means and fractions of the whole step's batch.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import torch
from torch import Tensor

from thermorl.algorithms.rollout_correction import (
    MISMATCH_TOTALS, correction_weights, mismatch_from_totals, mismatch_totals,
)
from thermorl.config import Config
from thermorl.engines.base import RolloutBatch
from thermorl.temperature.base import TemperatureActions, TemperatureController


@dataclass(frozen=True)
class CorrectionSpec:
    """Which rollout correction applies (``algorithm.rollout_correction``); ``level`` None = none."""

    level: str | None = None  # "token" or "sequence"
    mode: str = "truncate"  # or "mask"
    lower: float | None = None
    upper: float | None = None


@dataclass
class OldPolicy:
    """pi_old of a batch's LM tokens and head actions, their correction weights, and the mismatch metrics."""

    logprobs: Tensor  # (N, T) log pi_old(y_t) of the LM
    weights: Tensor | None = None  # (N, T) weight of each token's LM term (None = 1)
    outside: Tensor | None = None  # (N, T) 1 where the LM's ratio was capped or masked
    head_logprobs: Tensor | None = None  # (N, T) log pi_phi_old(action_t) of the head (None: the engine's)
    head_weights: Tensor | None = None  # (N, T) weight of each head action's term (None = 1)
    totals: dict[str, float] = field(default_factory=dict)  # the mismatch totals (``mismatch_report``)

    @property
    def metrics(self) -> dict[str, float]:
        """The mismatch metrics of the rows this pi_old was computed on."""
        return mismatch_report(self.totals)

    def select(self, index: Tensor) -> "OldPolicy":
        """The rows ``index`` (a minibatch); totals stay those of the rows it was computed on."""
        pick = lambda t: None if t is None else t[index]  # noqa: E731
        return OldPolicy(pick(self.logprobs), pick(self.weights), pick(self.outside), pick(self.head_logprobs),
                         pick(self.head_weights), self.totals)

    def importance(self) -> tuple[Tensor, Tensor] | None:
        """The LM's (weights, outside) as ``token_objective`` takes them, or None without weights."""
        return None if self.weights is None else (self.weights, self.outside)

    def head_actions(self, actions: TemperatureActions) -> TemperatureActions:
        """``actions`` as the controller's loss reads them: logprob = pi_old, is_weight = w."""
        if self.head_logprobs is None:
            return actions
        return replace(actions, logprob=self.head_logprobs, is_weight=self.head_weights)


def head_logprobs(controller: TemperatureController, hidden: Tensor, actions: TemperatureActions) -> Tensor | None:
    """The trainer's log pi_phi of the head's recorded actions from ``hidden`` (no gradient), or None."""
    with torch.no_grad():
        logprobs = controller.action_logprobs(hidden.detach(), actions)
    return None if logprobs is None else logprobs.float()


def old_policy(
    batch: RolloutBatch, trainer_logprobs: Tensor, trainer_head_logprobs: Tensor | None, spec: CorrectionSpec
) -> OldPolicy:
    """pi_old from the trainer's log-probs of ``batch`` and, against what the engine recorded, the weights of
    ``spec`` and the mismatch metrics (``rollout_*`` for the LM, ``rollout_head_*`` for the head)."""
    mask = batch.completion_mask
    trainer_logprobs = trainer_logprobs.detach()
    old = OldPolicy(trainer_logprobs, totals=_totals("rollout", trainer_logprobs, batch.logprobs, mask, spec))
    engine_head = batch.actions.logprob
    if trainer_head_logprobs is not None and engine_head is not None:
        old.head_logprobs = trainer_head_logprobs.detach() * mask
        old.totals.update(_totals("rollout_head", old.head_logprobs, engine_head, mask, spec))
    if spec.level is None:
        return old
    old.weights, old.outside = correction_weights(
        trainer_logprobs, batch.logprobs, mask, spec.level, spec.mode, spec.lower, spec.upper
    )
    if old.head_logprobs is not None:
        old.head_weights, _ = correction_weights(
            old.head_logprobs, engine_head, mask, spec.level, spec.mode, spec.lower, spec.upper
        )
    return old


def _totals(prefix: str, trainer: Tensor, engine: Tensor, mask: Tensor, spec: CorrectionSpec) -> dict[str, float]:
    """``mismatch_totals`` under ``prefix/``, and with a correction the count of the tokens (token level) or
    completions with a token (sequence level) that fell outside the bounds, beside the count of all of them."""
    totals = {f"{prefix}/{k}": v for k, v in mismatch_totals(trainer, engine, mask).items()}
    if spec.level is not None:
        _, outside = correction_weights(trainer, engine, mask, spec.level, spec.mode, spec.lower, spec.upper)
        what = "capped" if spec.mode == "truncate" else "masked"
        if spec.level == "token":
            counted, total = outside.sum().item(), mask.sum().item()
        else:  # completions (with at least one token) whose sequence ratio fell outside
            rows = mask.sum(-1) > 0
            counted, total = outside.amax(-1)[rows].sum().item(), float(rows.sum().item())
        totals[f"{prefix}/{spec.level}_{what}/outside"] = counted
        totals[f"{prefix}/{spec.level}_{what}/of"] = total
    return totals


def total_kind(key: str) -> str:
    """How a mismatch total combines over parts of a batch: 'sum', 'max' or 'min'."""
    return MISMATCH_TOTALS.get(key.rsplit("/", 1)[-1], "sum")


def combine_totals(a: dict[str, float], b: dict[str, float]) -> dict[str, float]:
    """The totals of two parts of a batch (micro-batches) as those of their union."""
    combined = dict(a)
    for key, value in b.items():
        if key not in combined:
            combined[key] = value
        else:
            combined[key] = {"sum": combined[key] + value, "max": max(combined[key], value),
                             "min": min(combined[key], value)}[total_kind(key)]
    return combined


def mismatch_report(totals: dict[str, float]) -> dict[str, float]:
    """The logged metrics of (combined) totals: ``rollout_*`` for the LM, ``rollout_head_*`` for the head,
    ``*_{token,sequence}_{capped,masked}_fraction`` for the correction's share outside its bounds."""
    report: dict[str, float] = {}
    for prefix in sorted({key.split("/", 1)[0] for key in totals}):
        base = {k.split("/", 1)[1]: v for k, v in totals.items() if k.startswith(prefix + "/") and k.count("/") == 1}
        if not base.get("tokens"):
            continue  # no generated token: nothing to report
        report.update({f"{prefix}_{k}": v for k, v in mismatch_from_totals(base).items()})
        for key in totals:
            if key.startswith(prefix + "/") and key.endswith("/outside"):
                name = key.split("/")[1]
                report[f"{prefix}_{name}_fraction"] = totals[key] / max(totals[key[: -len("outside")] + "of"], 1.0)
    return report


def correction_spec(config: Config) -> CorrectionSpec:
    """The run's ``algorithm.rollout_correction`` ('auto': token_truncate with the vLLM engine, none with hf)."""
    section = config.algorithm.rollout_correction
    mode = section.resolved(config.rollout.engine)
    if mode == "none":
        return CorrectionSpec()
    level, how = mode.split("_")
    return CorrectionSpec(level, how, section.clip_min, section.clip_max)
