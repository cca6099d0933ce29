"""The temperature-controller protocol shared by every method.

What the sampler needs: ``start`` once per rollout and ``choose`` at every decoding step with the
step's raw logits and last hidden state; ``choose`` returns one temperature per active row and the
controller's own typed actions (:class:`TemperatureActions`: the head's gate, Beta draw or bin and
their log-prob). The sampler stores temperatures and actions per token in the rollout batch, so the
loss sees exactly what sampling used.

What training needs: trainable controllers expose ``module`` (their parameters) and ``policy_loss``
over the recorded actions; meta-policies update themselves in ``after_update`` from the scored
batch. Heuristic controllers only implement ``choose``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn


@dataclass
class TemperatureActions:
    """A temperature policy's own actions, per row (B,) at one step or per token (N, T) in a batch.

    A field is None when the controller has no such action (heuristic controllers have none).
    """

    logprob: Tensor | None = None  # log pi_phi(action) under the policy that sampled it
    gate: Tensor | None = None  # Beta head: 1 where the gate fired (a new temperature was drawn)
    z: Tensor | None = None  # Beta head: the unit draw z_t in [0, 1] (0 where the gate did not fire)
    bin: Tensor | None = None  # bins head: index of the chosen temperature
    # the head's rollout-correction weight per token when another engine sampled it (vLLM); set by the
    # runtime's correction step (runtime.correction) for the loss, never by an engine
    is_weight: Tensor | None = None

    def present(self) -> dict[str, Tensor]:
        """The fields this controller filled, by name."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if getattr(self, f.name) is not None}

    def select(self, index: Tensor) -> "TemperatureActions":
        """The rows ``index``."""
        return TemperatureActions(**{name: value[index] for name, value in self.present().items()})


@dataclass
class StepContext:
    """What a controller may read at one decoding step (B = rows still generating)."""

    logits: Tensor  # (B, V) float32, untempered
    hidden: Tensor  # (B, d) last-layer hidden state that produced ``logits``
    position: int  # index of the token being chosen within the completion
    rows: Tensor  # (B,) indices of these rows in the full rollout batch
    training_step: int


@dataclass
class ControllerEnv:
    """Facts a controller may need at construction time."""

    hidden_size: int
    total_steps: int
    device: torch.device
    group_size: int = 1  # consecutive rows sharing a prompt (rollouts are prompt-major)
    seed: int = 0  # run seed, for controllers that own a random generator
    # under several processes each holds a contiguous share of the global batch's rows:
    gather_rows: Callable[[Tensor], Tensor] = lambda rows: rows  # every process's rows, in global order
    rank: int = 0  # this process's place (its share is the rank-th of world_size equal ones)
    world_size: int = 1


class TemperatureController:
    """Base class with no-op defaults; subclasses implement at least ``choose``."""

    name = "base"
    needs_logits_after_update = False  # whether after_update wants the training logits
    decodes_at_inference = False  # evaluated at its own temperatures too, beside the shared one
    is_cap: float | None = None  # truncated importance-weight cap when training_temperatures differ from sampling

    def training_temperatures(self, sampled: Tensor) -> Tensor:
        """Temperatures at which the training ratio scores each token: the sampled ones (returned as is).

        A controller that optimises another policy than the one it samples from (EAD's T = 1 mode)
        returns those instead; the trainer then recomputes old log-probs there and weights each
        token by ``truncated_importance_weights`` with ``is_cap``.
        """
        return sampled

    def start(self, num_rows: int, training_step: int) -> None:
        """Reset per-rollout state (e.g. the previous temperature of each row)."""

    def choose(self, ctx: StepContext) -> tuple[Tensor, TemperatureActions]:
        """Per-row temperatures (B,) and the controller's own per-row actions for this step."""
        raise NotImplementedError

    @property
    def module(self) -> nn.Module | None:
        """Trainable parameters, or None for heuristic controllers."""
        return None

    def trains_lm(self, training_step: int) -> bool:
        """Whether the language model is updated at this step (coordinate ascent may freeze it)."""
        return True

    def policy_loss(
        self, hidden: Tensor, actions: TemperatureActions, advantages: Tensor, mask: Tensor, training_step: int
    ) -> tuple[Tensor | None, dict[str, float]]:
        """Loss of a trainable temperature policy on a minibatch, with diagnostics."""
        return None, {}

    def action_logprobs(self, hidden: Tensor, actions: TemperatureActions) -> Tensor | None:
        """log pi_phi(recorded action_t | h_t) (N, T) under the current parameters, for a controller whose
        temperature is a sampled action (its pi_old and rollout correction when another engine sampled it);
        None for a controller without such a policy."""
        return None

    def after_update(
        self, actions: TemperatureActions, advantages: Tensor, mask: Tensor, tokens: Tensor, logits: Tensor | None
    ) -> None:
        """Hook after each GRPO step (TAMPO's outer update)."""

    def metrics(self) -> dict[str, Any]:
        """Per-step values to log (JSON-serialisable)."""
        return {}

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to resume: tensors and JSON-serialisable values."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Inverse of ``state_dict``. Random streams (keys ending in ``generator``) may be absent: evaluation
        (``load_for_eval``) loads a run's learned state but keeps the streams seeded from the run seed."""


def full(ctx: StepContext, value: float) -> Tensor:
    """A constant per-row temperature for this step."""
    return torch.full((ctx.logits.shape[0],), float(value), device=ctx.logits.device)
