"""What the vLLM engine sends per request and how it reads the answers back (no vLLM import here).

A controller's :class:`~thermorl.temperature.base.SamplingPlan` decides the request: a
:class:`PerRequest` temperature becomes vLLM's own ``SamplingParams.temperature``; a
:class:`PerPosition` rule or an :class:`InModelHead` travels to thermorl's logits processor
(``vllm_plugin``) as the request's ``extra_args["thermorl"]`` spec (the plan object itself: the engine
runs in-process), which records the temperature and the head's actions of every position.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from thermorl.engines.base import RolloutBatch
from thermorl.temperature.base import InModelHead, PerPosition, PerRequest, SamplingPlan, TemperatureActions

HEAD_SEED_OFFSET = 0x5EED_4EAD  # keeps the head's request seeds apart from the token sampler's


@dataclass
class Requests:
    """One rollout's vLLM requests: keyword arguments of each ``SamplingParams``, the processor's keys (None
    where vLLM's own temperature serves the request) and the per-request temperatures (PerRequest, greedy)."""

    params: list[dict[str, Any]]
    keys: list[str | None]
    temperatures: Tensor | None


def build_requests(
    plan: SamplingPlan | None, num_rows: int, seeds: list[int | None], temperature_range: tuple[float, float],
    base: dict[str, Any],
) -> Requests:
    """The requests of ``num_rows`` rows sampled under ``plan`` (None: greedy) with token seeds ``seeds``;
    ``base``: the arguments every request shares (max_tokens, logprobs, stop ids, top_k / top_p)."""
    low, high = temperature_range
    if plan is None:
        return Requests([{**base, "temperature": 0.0} for _ in range(num_rows)], [None] * num_rows, torch.ones(num_rows))
    if isinstance(plan, PerRequest):
        temperatures = plan.temperatures.detach().float().cpu().reshape(-1).expand(num_rows).clamp(low, high)
        params = [{**base, "temperature": t, "seed": s} for t, s in zip(temperatures.tolist(), seeds)]
        return Requests(params, [None] * num_rows, temperatures)
    if not isinstance(plan, (PerPosition, InModelHead)):
        raise TypeError(f"unknown sampling plan {type(plan).__name__}")
    head_seeds: list[int | None] = [None] * num_rows
    if isinstance(plan, InModelHead):  # one stream per request, seeded from the controller's stream
        generator = plan.generator
        draws = torch.randint(0, 2**62, (num_rows,), generator=generator, device=generator.device)
        head_seeds = (draws.cpu() ^ HEAD_SEED_OFFSET).tolist()
    batch_id = uuid.uuid4().hex
    keys: list[str | None] = [f"{batch_id}-{i}" for i in range(num_rows)]
    params = [
        {**base, "temperature": 1.0, "seed": s,
         "extra_args": {"thermorl": {"plan": plan, "key": key, "range": [low, high], "seed": head_seed}}}
        for s, key, head_seed in zip(seeds, keys, head_seeds)
    ]
    return Requests(params, keys, None)


def assemble_batch(
    prompt_ids: Tensor, prompt_mask: Tensor, completions: list[list[int]], logprobs: list[list[float]],
    requests: Requests, records: dict[str, dict[str, dict[int, float]]], pad_id: int,
) -> RolloutBatch:
    """The RolloutBatch of vLLM's completions: tokens, sampling log-probs, the temperature of every token
    (the request's, or the processor's records) and the head's recorded actions; entropies are zero (vLLM
    returns none; the trainer's forward fills them)."""
    num_rows, device = len(completions), prompt_ids.device
    length = max(1, max(len(c) for c in completions))
    tokens = torch.full((num_rows, length), pad_id, dtype=torch.long)
    mask = torch.zeros(num_rows, length)
    temperatures = torch.ones(num_rows, length)
    sampled_logprobs = torch.zeros(num_rows, length)
    names = sorted({name for r in records.values() for name in r} - {"temperature"})
    actions = {name: torch.zeros(num_rows, length) for name in names}
    for i, (ids, lps) in enumerate(zip(completions, logprobs)):
        n = len(ids)
        tokens[i, :n] = torch.tensor(ids, dtype=torch.long)
        mask[i, :n] = 1.0
        sampled_logprobs[i, :n] = torch.tensor(lps)
        if requests.temperatures is not None:
            temperatures[i, :n] = requests.temperatures[i]
            continue
        row = records[requests.keys[i]]
        temperatures[i, :n] = torch.tensor([row["temperature"][p] for p in range(n)])
        for name in names:
            actions[name][i, :n] = torch.tensor([row[name][p] for p in range(n)])
    recorded = {name: (value.long() if name == "bin" else value).to(device) for name, value in actions.items()}
    return RolloutBatch(
        prompt_ids, prompt_mask, tokens.to(device), mask.to(device), temperatures.to(device),
        sampled_logprobs.to(device), torch.zeros(num_rows, length, device=device),
        torch.arange(num_rows, device=device), TemperatureActions(**recorded),
    )
