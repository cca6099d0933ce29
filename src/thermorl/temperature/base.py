"""The temperature-controller protocol shared by every method.

What a sampler needs: ``start`` once per rollout, then the temperatures. A controller says how it
picks them with ``sampling()``, one of three typed plans, which every engine can run:

* :class:`PerRequest`: one temperature per completion, known when the rollout starts (fixed,
  linear, TAMPO); vLLM samples it with its own ``SamplingParams.temperature``;
* :class:`PerPosition`: a pure rule tau = rule(untempered logits, positions) at every token (EAD,
  EDT); vLLM runs it in thermorl's logits processor;
* :class:`InModelHead`: a module on the final hidden state and a pure ``draw`` from its output (the
  introspective head); vLLM runs the module inside its model and the draw per request.

thermorl's own sampler calls ``choose`` at every decoding step with the step's raw logits and last
hidden state; the base class answers it from the first two plans, and a head controller implements
it with its own ``draw``. ``choose`` returns one temperature per active row and the controller's
own typed actions (:class:`TemperatureActions`: the head's gate, Beta draw or bin and their
log-prob). The engines store temperatures and actions per token in the rollout batch, so the loss
sees exactly what sampling used.

What training needs: trainable controllers expose ``module`` (their parameters) and ``policy_loss``
over the recorded actions; meta-policies update themselves in ``after_update`` from the scored
batch. Heuristic controllers only implement ``choose``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Union

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
    completion_ids: Tensor | None = None  # (B, position) the tokens these rows sampled so far (None: not given)


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
    # the task's token classes (Task.token_class_rule) read through the tokenizer: completion ids so far ->
    # class of the next token; None when the task defines no classes
    token_classes: tuple[str, ...] = ()
    next_token_class: Callable[[list[int]], str] | None = None


@dataclass(frozen=True)
class PerRequest:
    """One temperature per completion: ``temperatures`` (num_rows,) of the rollout ``start`` began, or one
    value (a 1-element tensor) for every row."""

    temperatures: Tensor


@dataclass(frozen=True)
class PerPosition:
    """tau_t = ``rule(logits, positions)``: (B, V) float32 untempered logits and (B,) long completion
    positions -> (B,) temperatures. Pure: what it reads beyond its arguments (the training step) is fixed
    by ``start``, so an engine may apply it to any rows in any order. With ``reads_prefix`` the rule is
    ``rule(logits, positions, prefixes)``, ``prefixes`` each row's completion token ids so far (list of
    lists; by_class reads the class of the next token from them)."""

    rule: Callable[..., Tensor]
    reads_prefix: bool = False


# (u (B, K), previous temperature (B,), generator) -> temperatures (B,) and the actions drawn (B,)
HeadDraw = Callable[[Tensor, Tensor, torch.Generator], tuple[Tensor, "TemperatureActions"]]


@dataclass(frozen=True)
class InModelHead:
    """A temperature policy on the model's final hidden state h_t: u_t = ``module(h_t)``, then
    ``draw(u_t, tau_{t-1}, generator)``, one pure function that both engines call (thermorl's sampler on
    all rows with the controller's ``generator``, vLLM per request with a stream seeded from it).
    ``initial`` is tau_{-1} of every row; the recorded actions (log-prob included) are the draw's."""

    module: nn.Module
    draw: HeadDraw
    initial: float
    generator: torch.Generator


SamplingPlan = Union[PerRequest, PerPosition, InModelHead]


class TemperatureController:
    """Base class with no-op defaults; subclasses implement ``sampling`` (and ``choose`` for a head)."""

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

    def sampling(self) -> SamplingPlan:
        """How this controller picks temperatures (one of the plans above), as of the last ``start``."""
        raise NotImplementedError(f"controller {self.name!r} declares no sampling plan (TemperatureController.sampling)")

    def choose(self, ctx: StepContext) -> tuple[Tensor, TemperatureActions]:
        """Per-row temperatures (B,) and the controller's own per-row actions for this step (thermorl's sampler).

        Answered from a :class:`PerRequest` or :class:`PerPosition` plan; a head controller overrides it."""
        plan = self.sampling()
        if isinstance(plan, PerRequest):
            temperatures = plan.temperatures.to(ctx.logits.device)
            if temperatures.numel() == 1:
                return temperatures.reshape(1).expand(ctx.rows.shape[0]), TemperatureActions()
            return temperatures[ctx.rows], TemperatureActions()
        if isinstance(plan, PerPosition):
            positions = torch.full_like(ctx.rows, ctx.position)
            if plan.reads_prefix:
                if ctx.completion_ids is None:
                    raise RuntimeError(f"controller {self.name!r} reads the completion so far; the sampler gave none")
                return plan.rule(ctx.logits.float(), positions, ctx.completion_ids.tolist()), TemperatureActions()
            return plan.rule(ctx.logits.float(), positions), TemperatureActions()
        raise NotImplementedError(f"controller {self.name!r}: a head controller implements choose with its draw")

    @property
    def module(self) -> nn.Module | None:
        """Trainable parameters, or None for heuristic controllers."""
        return None

    def trains_lm(self, training_step: int) -> bool:
        """Whether the language model is updated at this step (coordinate ascent may freeze it)."""
        return True

    def head_advantages(self, advantages: Tensor, group_ids: Tensor) -> Tensor:
        """The per-row credit ``policy_loss`` receives for a whole batch (N,): the LM's advantages unless the
        controller credits its own actions otherwise (introspective's credit=signal)."""
        return advantages

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
