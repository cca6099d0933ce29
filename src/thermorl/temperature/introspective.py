"""Introspective LLM (arXiv 2602.13035): a small head reads h_t and picks each token's temperature.

Beta head (the paper): u = W2 relu(W1 h_t + b1) + b2 in R^3; c_t ~ Bernoulli(sigmoid(u_c));
c_t = 1 draws z_t ~ Beta(softplus(u_alpha) + eps, softplus(u_beta) + eps) and sets
tau_t = tau_min + z_t (tau_max - tau_min); c_t = 0 keeps tau_{t-1} (tau_init before the first
draw). Bins head (ablation): u in R^K, b_t ~ Categorical(softmax(u)), tau_t = bins[b_t].
The equations live in ``thermorl.algorithms.hierarchical``; this module samples and trains.

Training is coordinate ascent: by default (``schedule=alternate``) every step updates the LM with
the head frozen and then the head with the LM frozen, on the same rollouts, so an introspective
run makes as many LM updates as any other controller; ``phases`` alternates whole LM-only and
head-only phases (the LM rests in head phases); ``joint`` trains both from one loss. The head's
randomness comes from a generator the controller owns, seeded from the run seed and saved
in checkpoints with the head's weights, so the same seed gives the same temperatures, also
after a checkpoint round trip or a resumed run.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import partial
from typing import Any, Literal

import torch
from torch import Tensor, nn

from thermorl.algorithms.grpo import aggregate
from thermorl.algorithms.hierarchical import (
    beta_head_parameters,
    bins_entropy,
    bins_kl,
    bins_logprob,
    clamp_unit,
    group_signal_advantages,
    hybrid_entropy,
    hybrid_kl,
    hybrid_logprob,
    temperature_logprob,
    temperature_policy_loss,
    unit_to_temperature,
)
from thermorl.config.fields import doc, positive, temperatures, unit_interval
from thermorl.config.registry import CONTROLLERS
from thermorl.errors import ConfigError
from thermorl.temperature.base import ControllerEnv, InModelHead, StepContext, TemperatureActions, TemperatureController

# The head's stream is seeded from the run seed plus this offset, so its draws are not the
# same uniforms the token sampler (seeded with the run seed itself) consumes.
_SEED_OFFSET = 0x7E3A_11CE


class TemperatureHead(nn.Module):
    """u = W2 relu(W1 h + b1) + b2, d -> d/2 -> outputs (3 for the Beta head, K for bins)."""

    def __init__(self, hidden_size: int, outputs: int) -> None:
        super().__init__()
        self.hidden = nn.Linear(hidden_size, max(hidden_size // 2, 1))
        self.out = nn.Linear(max(hidden_size // 2, 1), outputs)

    def forward(self, h: Tensor) -> Tensor:
        return self.out(torch.relu(self.hidden(h)))


def _softplus_inverse(y: float) -> float:
    """x with softplus(x) = y, for y > 0."""
    return y + math.log(-math.expm1(-y))


def initial_output_bias(config: IntrospectiveConfig) -> list[float]:
    """b2 of a head whose W2 starts at zero: P(gate) = gate_init and a Beta with mean at tau_init
    and alpha + beta = concentration_init (Beta head); uniform over the bins (bins head)."""
    if config.head == "bins":
        return [0.0] * len(config.bins)
    mean = (config.tau_init - config.tau_min) / (config.tau_max - config.tau_min)
    mean = min(max(mean, 0.05), 0.95)
    alpha = max(mean * config.concentration_init - config.eps, 1e-3)
    beta = max((1.0 - mean) * config.concentration_init - config.eps, 1e-3)
    gate_logit = math.log(config.gate_init / (1.0 - config.gate_init))
    return [gate_logit, _softplus_inverse(alpha), _softplus_inverse(beta)]


def head_draw(
    u: Tensor, previous: Tensor, generator: torch.Generator, config: IntrospectiveConfig
) -> tuple[Tensor, TemperatureActions]:
    """One draw of the head's policy for each row of u (B, K), the module docstring's equations: Beta head
    c_t ~ Bernoulli(sigmoid(u_c)); where c_t = 1, z_t ~ Beta(alpha, beta) and tau_t = tau_min + z_t (tau_max -
    tau_min), else tau_t = ``previous`` (B,); clamped to [tau_min, tau_max]. Bins head: b_t ~ Categorical(
    softmax(u)), tau_t = bins[b_t]. Returns tau (B,) and the actions with their log-prob. The controller's
    ``choose`` (all rows, one generator) and the vLLM engine (one row per call, a generator per request) both
    draw with this function."""
    if config.head == "bins":
        index = torch.multinomial(torch.softmax(u, dim=-1), 1, generator=generator).squeeze(-1)
        bins = torch.tensor(config.bins, device=u.device)
        return bins[index], TemperatureActions(logprob=bins_logprob(u, index), bin=index)
    gate_prob, alpha, beta = beta_head_parameters(u, config.eps)
    gate = torch.bernoulli(gate_prob, generator=generator)
    # Beta(a, b) is the first coordinate of Dirichlet(a, b); the private op is the only
    # Beta/Gamma sampler in torch that takes a generator.
    draw = torch._sample_dirichlet(torch.stack([alpha, beta], dim=-1), generator=generator)[:, 0]
    z = clamp_unit(draw) * gate  # 0 where the gate did not fire
    tau = torch.where(gate > 0, unit_to_temperature(z, config.tau_min, config.tau_max), previous)
    tau = tau.clamp_(config.tau_min, config.tau_max)
    return tau, TemperatureActions(logprob=hybrid_logprob(u[:, 0], alpha, beta, gate, z), gate=gate, z=z)


@dataclass
class IntrospectiveConfig:
    head: Literal["beta", "bins"] = doc(
        "'beta': gate + Beta head (the paper); 'bins': categorical over `bins` temperatures (ablation).", "beta"
    )
    tau_init: float = doc("tau_0, the temperature before the gate first fires.", 1.0)
    tau_min: float = doc("Lower end of the Beta head's temperature range.", 0.1)
    tau_max: float = doc("Upper end of the Beta head's temperature range.", 1.5)
    eps: float = doc("Added to softplus outputs so alpha, beta > 0.", 1e-3)
    bins: list[float] = doc("Temperatures of the categorical head.", [0.4, 0.7, 1.0, 1.3])
    detach_hidden: bool = doc("Stop head gradients from flowing into the language model.", True)
    schedule: Literal["alternate", "phases", "joint"] = doc(
        "'alternate': coordinate ascent within every step: the LM is updated with the head frozen, then the head "
        "with the LM frozen, on the same rollouts (as many LM updates as any other controller at equal steps); "
        "'phases': lm_phase_steps LM-only steps, then head_phase_steps head-only steps (the LM rests in head phases); "
        "'joint': both from one loss (with detach_hidden=false the head's gradient also reaches the LM).",
        "alternate",
    )
    lm_phase_steps: int = doc("schedule=phases: steps updating the LM with the head frozen.", 10)
    head_phase_steps: int = doc("schedule=phases: steps updating the head with the LM frozen.", 10)
    lr: float = doc("Learning rate of the temperature head.", 1e-3)
    entropy_coef: float = doc("Entropy bonus on the temperature policy (0 = off).", 0.0)
    kl_coef: float = doc(
        "Weight of KL(pi_phi || pi_phi0), the temperature policy's divergence from its initial policy (gate_init, "
        "Beta mean at tau_init): a trust region that keeps the head from trading the exploration GRPO needs for "
        "in-group reward (0 = off). The default 0.1 kept the mean temperature near 0.9 and the zero-variance "
        "groups at fixed 1.0's level over 300 steps, where 0 cooled to the floor (docs/RESULTS.md).",
        0.1,
    )
    credit: Literal["reward", "signal"] = doc(
        "What the head's actions are credited with: 'reward', the LM's advantage of its completion (the paper); "
        "'signal', whether its group gave the LM a learning signal (reward variance), against the batch's rate "
        "(thermorl.algorithms.hierarchical.group_signal_advantages).", "reward"
    )
    epsilon: float = doc("Clip range of the temperature policy's own ratio (1 +- epsilon).", 0.2)
    gate_init: float = doc("P(gate fires) of the freshly initialised head (its output layer starts at zero).", 0.5)
    concentration_init: float = doc(
        "alpha + beta of the initial Beta head; its mean is placed at tau_init (larger = narrower).", 10.0
    )

    def validate(self) -> None:
        section = "temperature.introspective"
        temperatures(self, "tau_init", "tau_min", "tau_max", section=section)
        if self.tau_min >= self.tau_max:
            raise ConfigError(f"{section}.tau_min must be < tau_max")
        if not self.tau_min <= self.tau_init <= self.tau_max:
            raise ConfigError(f"{section}.tau_init must be in [tau_min, tau_max], got {self.tau_init}")
        if self.head == "bins" and (len(self.bins) < 2 or any(not self.tau_min <= t <= self.tau_max for t in self.bins)):
            raise ConfigError(
                f"{section}.bins needs >= 2 temperatures in [tau_min, tau_max] = [{self.tau_min}, {self.tau_max}], "
                f"got {self.bins}"
            )
        positive(self, "eps", "lr", "concentration_init", section=section)
        unit_interval(self, "epsilon", section=section)
        if not 0 < self.gate_init < 1:
            raise ConfigError(f"{section}.gate_init must be in (0, 1), got {self.gate_init}")
        for name in ("entropy_coef", "kl_coef"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{section}.{name} must be >= 0, got {getattr(self, name)}")
        if self.lm_phase_steps < 0 or self.head_phase_steps < 0:
            raise ConfigError(f"{section} phase lengths must be >= 0")
        if self.schedule == "phases" and self.lm_phase_steps + self.head_phase_steps == 0:
            raise ConfigError(f"{section}: schedule=phases needs lm_phase_steps + head_phase_steps > 0")

    def temperature_span(self) -> tuple[float, float]:
        """The lowest and highest temperature this controller samples at (checked against the rollout clamp)."""
        if self.head == "bins":
            return min(self.bins), max(self.bins)
        return self.tau_min, self.tau_max


@CONTROLLERS.register("introspective", IntrospectiveConfig)
class IntrospectiveController(TemperatureController):
    name = "introspective"
    decodes_at_inference = True

    def __init__(self, config: IntrospectiveConfig, env: ControllerEnv) -> None:
        self.config = config
        outputs = 3 if config.head == "beta" else len(config.bins)
        self.head = TemperatureHead(env.hidden_size, outputs).to(env.device)
        with torch.no_grad():
            self.head.out.weight.zero_()
            self.head.out.bias.copy_(torch.tensor(initial_output_bias(config)))
        self.initial_output = torch.tensor(initial_output_bias(config), device=env.device)  # u of pi_phi0
        self.device = env.device
        self.generator = torch.Generator(device=env.device).manual_seed((env.seed + _SEED_OFFSET) % 2**63)
        self.previous = torch.empty(0, device=env.device)  # (num_rows,) tau_{t-1} of each row
        self.step = 0

    @property
    def module(self) -> nn.Module:
        return self.head

    def trains_lm(self, training_step: int) -> bool:
        if self.config.schedule != "phases":
            return True
        cycle = self.config.lm_phase_steps + self.config.head_phase_steps
        return (training_step - 1) % cycle < self.config.lm_phase_steps

    def trains_head(self, training_step: int) -> bool:
        """alternate and joint train the head every step; phases train it while the LM rests."""
        return self.config.schedule != "phases" or not self.trains_lm(training_step)

    def start(self, num_rows: int, training_step: int) -> None:
        self.step = training_step
        self.previous = torch.full((num_rows,), self.config.tau_init, device=self.device)

    def sampling(self) -> InModelHead:
        return InModelHead(self.head, partial(head_draw, config=self.config), self.config.tau_init, self.generator)

    def choose(self, ctx: StepContext) -> tuple[Tensor, TemperatureActions]:
        u = self.head(ctx.hidden.to(self.head.out.weight.dtype))
        tau, actions = head_draw(u, self.previous[ctx.rows], self.generator, self.config)
        self.previous[ctx.rows] = tau
        return tau, actions

    def action_logprobs(self, hidden: Tensor, actions: TemperatureActions) -> Tensor | None:
        """log pi_phi of the recorded gate/Beta draw or bin at each token, from the hidden states ``hidden``."""
        if actions.logprob is None:
            return None
        u = self.head(hidden.to(self.head.out.weight.dtype))
        if actions.bin is not None:
            return bins_logprob(u, actions.bin)
        return temperature_logprob(u, actions.gate, actions.z, self.config.eps)

    def head_advantages(self, advantages: Tensor, group_ids: Tensor) -> Tensor:
        """credit=reward: the LM's advantages; credit=signal: each group's learning signal (see the config)."""
        if self.config.credit == "signal":
            return group_signal_advantages(advantages, group_ids)
        return advantages

    def policy_loss(
        self, hidden: Tensor, actions: TemperatureActions, advantages: Tensor, mask: Tensor, training_step: int
    ) -> tuple[Tensor | None, dict[str, float]]:
        """Clipped temperature-policy loss on the recorded actions, or None while the head is frozen."""
        metrics: dict[str, float] = {}
        if actions.gate is not None:
            metrics["temp_gate_rate"] = aggregate(actions.gate, mask).item()
        if not self.trains_head(training_step):
            return None, metrics
        # alternate: the head's update sees the LM frozen (the hidden states that sampled the rollout),
        # so with the LM's own update from the same pass this is the sequential coordinate-ascent step
        joint = self.config.schedule == "joint" and not self.config.detach_hidden
        h = hidden if joint else hidden.detach()
        u = self.head(h.to(self.head.out.weight.dtype))
        u0 = self.initial_output.expand_as(u)
        if self.config.head == "bins":
            logprobs, entropy, kl = bins_logprob(u, actions.bin), bins_entropy(u), bins_kl(u, u0)
        else:
            logprobs = temperature_logprob(u, actions.gate, actions.z, self.config.eps)
            entropy = hybrid_entropy(u, self.config.eps)
            kl = hybrid_kl(u, u0, self.config.eps)
        loss, diagnostics = temperature_policy_loss(
            logprobs, actions.logprob, advantages, mask, self.config.epsilon, entropy,
            self.config.entropy_coef, kl, self.config.kl_coef, importance=actions.is_weight,
        )
        metrics.update({f"temp_{name}": value.item() for name, value in diagnostics.items()})
        return loss, metrics

    def metrics(self) -> dict[str, Any]:
        return {"temp_head_phase": float(self.trains_head(self.step))}

    def state_dict(self) -> dict[str, Any]:
        """Head weights and the head's random stream (so a resumed run draws the same temperatures)."""
        return {**{f"head.{k}": v for k, v in self.head.state_dict().items()}, "generator": self.generator.get_state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.head.load_state_dict({k[len("head."):]: v for k, v in state.items() if k.startswith("head.")})
        if "generator" in state:  # load_for_eval leaves random streams out: evaluation keeps the run seed's
            self.generator.set_state(state["generator"].cpu())
