"""The parts of the vLLM engine that run inside vLLM's model runner (imported only where vllm is).

Two pieces, both for vLLM's V1 model runner (``VLLM_USE_V2_MODEL_RUNNER=0``, which the engine sets):

* :class:`ThermoRLTemperature`, a V1-interface logits processor. A request that carries
  ``SamplingParams.extra_args["thermorl"]`` (its controller's plan, a key, the clamp range and a head
  seed; ``engines.vllm_requests``) gets its logits divided by the temperature the plan picks at this
  position, before vLLM's own temperature (which the engine sets to 1.0 for these requests): a
  ``PerPosition`` plan's rule on the untempered logits and the positions (one call for all its rows),
  or an ``InModelHead`` plan's ``draw`` on the head's output for the row. The position is the
  length of the request's output tokens, which vLLM passes by reference.
* :func:`head_model`, an out-of-tree model class (registered through ``ModelRegistry``) that wraps
  a vLLM causal LM. Its ``compute_logits`` runs its copy of the temperature head on the final
  normalised hidden state of every row it computes logits for, and leaves the head's outputs ``u``
  for the processor, which sees the same rows in the same order in the same step. The processor
  draws from a generator owned by the request and seeded from its spec, so a request's draws do not
  depend on what else is in the batch (nor on vLLM preempting and recomputing it: its state stays).

What each request chose (temperature, and the head's actions by their ``TemperatureActions`` names)
is kept per completion position in :data:`ROWS` of the worker process; the engine reads it back
with ``collective_rpc(collect_records)`` after ``generate``. Every equation is the controller's own
(its plan's rule or draw): nothing is re-derived here.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import Tensor, nn
from vllm.model_executor.layers.linear import LinearBase
from vllm.model_executor.model_loader.weight_utils import default_weight_loader
from vllm.platforms import current_platform
from vllm.v1.sample.logits_processor import BatchUpdate, LogitsProcessor, MoveDirectionality

from thermorl.engines.vllm_weights import HEAD_PREFIX
from thermorl.temperature.base import InModelHead, PerPosition

ROWS: dict[str, "RowState"] = {}  # request key -> its state and records, in the worker process
HEAD_OUTPUTS: dict[str, Tensor] = {}  # "u": head outputs (rows, K) of the step being sampled


class RowState:
    """One request's plan, its random stream and previous temperature (a head), and its records."""

    def __init__(self, spec: dict[str, Any], output_ids: list[int]) -> None:
        self.output_ids = output_ids  # vLLM's running list: its length is the position being chosen
        self.plan = spec["plan"]  # the controller's PerPosition or InModelHead (in-process engine)
        self.low, self.high = spec["range"]
        self.records: dict[str, dict[int, float]] = {}
        if isinstance(self.plan, InModelHead):
            self.generator = torch.Generator().manual_seed(int(spec["seed"]))
            self.previous = torch.tensor([float(self.plan.initial)])
        elif not isinstance(self.plan, PerPosition):
            raise ValueError(f"thermorl: a request's plan must be PerPosition or InModelHead, not {type(self.plan)}")

    def record(self, position: int, values: dict[str, float]) -> None:
        for name, value in values.items():
            self.records.setdefault(name, {})[position] = value

    def head_step(self, u: Tensor) -> tuple[float, dict[str, float]]:
        """The plan's ``draw`` for this request's row u (1, K): its temperature and actions."""
        tau, actions = self.plan.draw(u, self.previous, self.generator)
        self.previous = tau.reshape(1).float()
        return float(tau.reshape(-1)[0]), {name: float(v.reshape(-1)[0]) for name, v in actions.present().items()}


class ThermoRLTemperature(LogitsProcessor):
    """Divides each thermorl request's logits by the temperature its rule picks at this position."""

    def __init__(self, vllm_config: Any, device: torch.device, is_pin_memory: bool) -> None:
        self.keys: dict[int, str] = {}  # persistent-batch index -> request key

    @classmethod
    def validate_params(cls, sampling_params: Any) -> None:
        spec = (sampling_params.extra_args or {}).get("thermorl")
        if spec is not None and not {"plan", "key", "range"} <= set(spec):
            raise ValueError("extra_args['thermorl'] needs plan, key and range")

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
        positions = [len(state.output_ids) for state in states]
        temperatures = [0.0] * len(indices)
        values: list[dict[str, float]] = [{} for _ in indices]
        rules: dict[int, list[int]] = {}  # one rule call per PerPosition plan (one per rollout) on all its rows
        for k, state in enumerate(states):
            if isinstance(state.plan, PerPosition):
                rules.setdefault(id(state.plan), []).append(k)
        for members in rules.values():
            rows = [indices[k] for k in members]
            plan = states[members[0]].plan
            args = [logits[rows].float(), torch.tensor([positions[k] for k in members])]
            if plan.reads_prefix:  # each row's completion so far (by_class)
                args.append([list(states[k].output_ids) for k in members])
            taus = plan.rule(*args)
            for k, tau in zip(members, taus.float().cpu().tolist()):
                temperatures[k] = tau
        u = HEAD_OUTPUTS.get("u")
        for k, (index, state) in enumerate(zip(indices, states)):
            if isinstance(state.plan, InModelHead):
                if u is None or u.shape[0] != logits.shape[0]:
                    raise RuntimeError("thermorl: the temperature head did not run on this step's rows")
                temperatures[k], values[k] = state.head_step(u[index : index + 1].float())
        for k, state in enumerate(states):
            temperatures[k] = min(max(temperatures[k], state.low), state.high)
            state.record(positions[k], {"temperature": temperatures[k], **values[k]})
        rows = torch.tensor(indices, device=logits.device)
        tau_tensor = torch.tensor(temperatures, dtype=torch.float32, device=logits.device).unsqueeze(-1)
        logits[rows] = (logits[rows].float() / tau_tensor).to(logits.dtype)
        return logits


def head_model(base: type, head: nn.Module | None) -> type:
    """A subclass of the vLLM causal LM ``base`` whose weights can be rewritten in place, holding and
    running a copy of the temperature ``head`` (an ``InModelHead`` plan's module) when there is one.

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
            self.thermorl_head = None  # the copy's weights are the engine's to write (sync_weights)
            if head is not None:
                device = next(self.parameters()).device
                self.thermorl_head = copy.deepcopy(head).to(device).requires_grad_(False)

        def compute_logits(self, hidden_states: Tensor, *args: Any, **kwargs: Any) -> Tensor | None:
            head = self.thermorl_head
            if head is not None:
                dtype = next(head.parameters()).dtype
                HEAD_OUTPUTS["u"] = head(hidden_states.to(dtype)).float()
            return super().compute_logits(hidden_states, *args, **kwargs)

        def load_weights(self, weights: Any) -> set[str]:
            """Head weights by their ``thermorl_head.`` names, the rest by the base class; the head
            counts as loaded (the engine writes it right after start and after every update)."""
            head = dict(self.thermorl_head.state_dict(keep_vars=True)) if self.thermorl_head is not None else {}
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

