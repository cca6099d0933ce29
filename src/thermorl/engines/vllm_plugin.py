"""The parts of the vLLM engine that run inside vLLM's model runner (imported only where vllm is).

Two pieces, both for vLLM's V1 model runner (``VLLM_USE_V2_MODEL_RUNNER=0``, which the engine sets):

* :class:`ThermoRLTemperature`, a V1-interface logits processor. A request that carries
  ``SamplingParams.extra_args["thermorl"]`` (a :class:`RowSpec` as a dict) gets its logits divided
  by a per-position temperature chosen by the spec's rule, before vLLM's own temperature (which the
  engine sets to 1.0 for these requests): ``ead`` (the EAD schedule at the completion position),
  ``entropy`` (EDT's rule on the untempered distribution) or ``head`` (the introspective head).
  The position is the length of the request's output tokens, which vLLM passes by reference.
* :func:`head_model`, an out-of-tree model class (registered through ``ModelRegistry``) that wraps
  a vLLM causal LM. Its ``compute_logits`` runs the temperature head on the final normalised hidden
  state of every row it computes logits for, and leaves the head's outputs ``u`` for the processor,
  which sees the same rows in the same order in the same step. The processor draws the gate and the
  Beta (or bin) from a generator owned by the request and seeded from its spec, so a request's
  draws do not depend on what else is in the batch.

What each request chose (temperature, and the head's gate / z / previous temperature / log-prob)
is kept per completion position in :data:`ROWS` of the worker process; the engine reads it back
with ``collective_rpc(collect_records)`` after ``generate``. Every equation is thermorl's own
(``thermorl.temperature``, ``thermorl.algorithms.hierarchical``): nothing is re-derived here.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor
from vllm.model_executor.layers.linear import LinearBase
from vllm.model_executor.model_loader.weight_utils import default_weight_loader
from vllm.platforms import current_platform
from vllm.v1.sample.logits_processor import BatchUpdate, LogitsProcessor, MoveDirectionality

from thermorl.algorithms.hierarchical import (
    beta_head_parameters,
    bins_logprob,
    clamp_unit,
    hybrid_logprob,
    unit_to_temperature,
)
from thermorl.temperature.ead import ead_temperature
from thermorl.temperature.entropy import edt_temperature, logits_entropy
from thermorl.temperature.introspective import TemperatureHead

HEAD_PREFIX = "thermorl_head."  # parameter names of the head inside the vLLM model
ROWS: dict[str, "RowState"] = {}  # request key -> its state and records, in the worker process
HEAD_OUTPUTS: dict[str, Tensor] = {}  # "u": head outputs (rows, K) of the step being sampled


class RowState:
    """One request's rule, its random stream (head), its previous temperature and its records."""

    def __init__(self, spec: dict[str, Any], output_ids: list[int]) -> None:
        self.spec = spec
        self.output_ids = output_ids  # vLLM's running list: its length is the position being chosen
        self.rule = spec["rule"]
        self.low, self.high = spec["range"]
        self.records: dict[str, dict[int, float]] = {}
        config = spec["config"]  # the controller's config dataclass (in-process engine)
        if self.rule == "head":
            self.generator = torch.Generator().manual_seed(int(spec["seed"]))
            self.previous = float(config.tau_init)
        elif self.rule not in ("ead", "entropy"):
            raise ValueError(f"thermorl: unknown per-position rule {self.rule!r}")

    def record(self, position: int, values: dict[str, float]) -> None:
        for name, value in values.items():
            self.records.setdefault(name, {})[position] = value

    def head_step(self, u: Tensor) -> tuple[float, dict[str, float]]:
        """The introspective controller's draw for one row (same equations as IntrospectiveController)."""
        config = self.spec["config"]
        if config.head == "bins":
            index = torch.multinomial(torch.softmax(u, dim=-1), 1, generator=self.generator).squeeze(-1)
            return float(config.bins[int(index)]), {"bin": float(index), "temp_logprob": bins_logprob(u, index).item()}
        gate_prob, alpha, beta = beta_head_parameters(u, config.eps)
        gate = torch.bernoulli(gate_prob, generator=self.generator)
        draw = torch._sample_dirichlet(torch.stack([alpha, beta], dim=-1), generator=self.generator)[..., 0]
        z = clamp_unit(draw) * gate
        previous = self.previous
        if gate.item() > 0:
            tau = unit_to_temperature(z, config.tau_min, config.tau_max).item()
        else:
            tau = previous
        tau = min(max(tau, config.tau_min), config.tau_max)
        self.previous = tau
        values = {
            "gate": gate.item(), "z": z.item(), "prev_temperature": previous,
            "temp_logprob": hybrid_logprob(u[:, 0], alpha, beta, gate, z).item(),
        }
        return tau, values


class ThermoRLTemperature(LogitsProcessor):
    """Divides each thermorl request's logits by the temperature its rule picks at this position."""

    def __init__(self, vllm_config: Any, device: torch.device, is_pin_memory: bool) -> None:
        self.keys: dict[int, str] = {}  # persistent-batch index -> request key

    @classmethod
    def validate_params(cls, sampling_params: Any) -> None:
        spec = (sampling_params.extra_args or {}).get("thermorl")
        if spec is not None and not {"rule", "key", "range"} <= set(spec):
            raise ValueError("extra_args['thermorl'] needs rule, key and range")

    def is_argmax_invariant(self) -> bool:
        return False  # it changes the sampled distribution, so it runs before vLLM's temperature

    def update_state(self, batch_update: BatchUpdate | None) -> None:
        if batch_update is None:
            return
        for index in batch_update.removed:
            self.keys.pop(index, None)
        for index, params, _prompt_ids, output_ids in batch_update.added:
            spec = (params.extra_args or {}).get("thermorl") if params is not None else None
            if spec is None:
                self.keys.pop(index, None)
                continue
            key = spec["key"]
            if key in ROWS:  # a preempted request coming back: its stream and records continue
                ROWS[key].output_ids = output_ids
            else:
                ROWS[key] = RowState(spec, output_ids)
            self.keys[index] = key
        for source, target, direction in batch_update.moved:
            moved, displaced = self.keys.pop(source, None), self.keys.pop(target, None)
            if moved is not None:
                self.keys[target] = moved
            if direction == MoveDirectionality.SWAP and displaced is not None:
                self.keys[source] = displaced

    def apply(self, logits: Tensor) -> Tensor:
        if not self.keys:
            return logits
        indices = sorted(i for i in self.keys if i < logits.shape[0])
        states = [ROWS[self.keys[i]] for i in indices]
        u = HEAD_OUTPUTS.get("u")
        entropy = None
        if any(s.rule == "entropy" for s in states):
            entropy = logits_entropy(logits[indices].float())
        temperatures = []
        for k, (index, state) in enumerate(zip(indices, states)):
            position = len(state.output_ids)
            values: dict[str, float] = {}
            if state.rule == "ead":
                tau = ead_temperature(position, state.spec["step"], state.spec["config"])
            elif state.rule == "entropy":
                tau = edt_temperature(entropy[k : k + 1], state.spec["config"]).item()
            else:
                if u is None or u.shape[0] != logits.shape[0]:
                    raise RuntimeError("thermorl: the temperature head did not run on this step's rows")
                tau, values = state.head_step(u[index : index + 1].float())
            tau = min(max(tau, state.low), state.high)
            state.record(position, {"temperature": tau, **values})
            temperatures.append(tau)
        rows = torch.tensor(indices, device=logits.device)
        tau_tensor = torch.tensor(temperatures, dtype=torch.float32, device=logits.device).unsqueeze(-1)
        logits[rows] = (logits[rows].float() / tau_tensor).to(logits.dtype)
        return logits


def head_model(base: type, outputs: int) -> type:
    """A subclass of the vLLM causal LM ``base`` whose weights can be rewritten in place, holding and
    running the temperature head when ``outputs`` > 0.

    On CPU, vLLM packs each linear layer's weight into a kernel-specific layout at load time and drops
    the plain weight, and its in-place reload then left the packed copy stale (measured: next-token
    log-probs 0.39 off after one optimizer step). Marking the layers ``_cpu_skip_gemm_dispatch`` keeps
    the plain weight (which reload updates); :func:`refresh_cpu_kernels` then packs it again after
    every load, so decoding keeps vLLM's fast kernels.
    """

    class ThermoRLModel(base):  # type: ignore[misc, valid-type]
        def __init__(self, *, vllm_config: Any, prefix: str = "", **kwargs: Any) -> None:
            super().__init__(vllm_config=vllm_config, prefix=prefix, **kwargs)
            for module in self.modules():
                if isinstance(module, LinearBase):
                    module._cpu_skip_gemm_dispatch = True
            hidden_size = vllm_config.model_config.hf_config.hidden_size
            self.thermorl_head = TemperatureHead(hidden_size, outputs) if outputs else None

        def compute_logits(self, hidden_states: Tensor, *args: Any, **kwargs: Any) -> Tensor | None:
            head = self.thermorl_head
            if head is not None:
                HEAD_OUTPUTS["u"] = head(hidden_states.to(head.out.weight.dtype)).float()
            return super().compute_logits(hidden_states, *args, **kwargs)

        def load_weights(self, weights: Any) -> set[str]:
            """Head weights by their ``thermorl_head.`` names, the rest by the base class; the head
            counts as loaded (the engine writes it right after start and after every update)."""
            head = dict(self.thermorl_head.named_parameters()) if self.thermorl_head is not None else {}
            rest = []
            for name, tensor in weights:
                if name.startswith(HEAD_PREFIX):
                    param = head[name[len(HEAD_PREFIX):]]
                    # vLLM's in-place reload swaps in its own loaders; plain copy at first load
                    getattr(param, "weight_loader", default_weight_loader)(param, tensor)
                else:
                    rest.append((name, tensor))
            loaded = set(super().load_weights(rest)) if rest else set()
            return loaded | {HEAD_PREFIX + name for name in head}

    ThermoRLModel.__name__ = ThermoRLModel.__qualname__ = f"ThermoRL{base.__name__}"
    return ThermoRLModel


def refresh_cpu_kernels(worker: Any) -> int:
    """(collective_rpc) Re-pack every linear layer's current weight into vLLM's CPU kernel layout,
    keeping the plain weight for the next in-place reload; returns the number of layers packed."""
    if not current_platform.is_cpu():
        return 0
    from vllm.model_executor.layers.utils import dispatch_cpu_unquantized_gemm

    packed = 0
    for module in worker.model_runner.model.modules():
        weight = getattr(module, "weight", None)
        if hasattr(module, "cpu_linear") and isinstance(weight, Tensor) and weight.ndim == 2 and weight.numel():
            dispatch_cpu_unquantized_gemm(module, remove_weight=False)
            packed += 1
    return packed


def collect_records(worker: Any, keys: list[str]) -> dict[str, dict[str, dict[int, float]]]:
    """(collective_rpc) The records of ``keys``, removed from the worker's store."""
    return {key: ROWS.pop(key).records for key in keys if key in ROWS}

