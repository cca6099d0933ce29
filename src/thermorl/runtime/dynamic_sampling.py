"""DAPO's dynamic sampling (Yu et al. 2025, arXiv 2503.14476, Sec. 3.2): train only on groups whose rewards differ.

A group whose G rewards are all equal has advantage 0 everywhere: it costs a rollout and a backward
pass and teaches nothing (and dilutes a token-mean loss). With ``rollout.dynamic_sampling`` the step
drops such groups and samples more prompts, up to ``rollout.dynamic_sampling_max_rounds`` extra rounds
of ``prompts_per_step`` prompts, until it holds ``prompts_per_step`` groups with a spread. If the
bound is reached first, dropped groups fill the batch (so every step trains on as many rows), and
the step logs how many rounds it used and how many groups it dropped and used to fill.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from thermorl.algorithms.grpo import groups_with_spread
from thermorl.engines.base import RolloutBatch, completion_id_lists, concat_batches
from thermorl.rewards.guard import RewardScores
from thermorl.runtime import fsdp

if TYPE_CHECKING:
    from thermorl.config import Config
    from thermorl.runtime.components import Components
    from thermorl.runtime.resume import LoopState


def draw_groups(c: Components, config: Config, state: LoopState) -> list:
    """This process's whole groups of a new global batch: ``prompts_per_step`` problems from the run's data
    stream, each repeated ``group_size`` times, in order."""
    rollout = config.rollout
    return c.dist.shard([
        p for p in c.task.train_problems(state.data_rng, rollout.prompts_per_step) for _ in range(rollout.group_size)
    ])


@dataclass
class _Group:
    """One GRPO group of a round: its rows of the batch, problems, texts and rewards (total and per function)."""

    rows: RolloutBatch
    problems: list
    texts: list[str]
    total: list[float | None]
    per_function: dict[str, list[float | None]]


def sample_and_score(
    c: Components, config: Config, state: LoopState, step: int, problems: list
) -> tuple[RolloutBatch, list, list[str], RewardScores, dict[str, Any]]:
    """Roll out ``problems`` (whole groups, in order) and reward them; with dynamic sampling, refill the
    groups without a reward spread (see the module docstring). Returns the batch, its problems, texts,
    rewards and the dynamic-sampling metrics (none when it is off)."""
    rollout = config.rollout
    batch, texts, scores = _round(c, state, step, problems, rollout.group_size)
    if not rollout.dynamic_sampling:
        return batch, problems, texts, scores, {}
    wanted = len(problems) // rollout.group_size
    kept: list[_Group] = []
    dropped: list[_Group] = []
    _split(batch, problems, texts, scores, rollout.group_size, kept, dropped)
    rounds = 0
    # every process rolls out as many rounds (the rollouts hold collectives): while any one needs groups
    while rounds < rollout.dynamic_sampling_max_rounds and c.dist.any_process(len(kept) < wanted):
        rounds += 1
        more = draw_groups(c, config, state)
        batch, texts, scores = _round(c, state, step, more, rollout.group_size)
        _split(batch, more, texts, scores, rollout.group_size, kept, dropped)
    chosen = (kept + dropped)[:wanted]
    metrics = {
        "dynamic_sampling_rounds": rounds, "dynamic_sampling_dropped_groups": len(dropped),
        "dynamic_sampling_filled_groups": max(0, wanted - len(kept)),
    }
    batch = concat_batches([group.rows for group in chosen], c.policy.tokenizer.pad_token_id)
    batch.group_ids = torch.arange(len(batch), device=batch.group_ids.device) // rollout.group_size
    problems = [p for group in chosen for p in group.problems]
    texts = [t for group in chosen for t in group.texts]
    scores = RewardScores(
        [v for group in chosen for v in group.total],
        {name: [v for group in chosen for v in group.per_function[name]] for name in chosen[0].per_function},
    )
    return batch, problems, texts, scores, metrics


def _round(c: Components, state: LoopState, step: int, problems: list, group_size: int):
    group_ids = torch.arange(len(problems)) // group_size  # problems hold whole groups, in order
    reads = None if c.engine.owns_weights else c.policy  # gathered weights (FSDP) for an engine that reads them
    with fsdp.full_weights(reads), c.dist.coordinated():  # NaN or an engine failure in one process stops all
        batch = c.engine.generate(
            [p.prompt for p in problems], c.controller, state.generator, group_ids=group_ids, training_step=step
        )
    texts = c.engine.decode(batch)
    with c.dist.coordinated():  # a reward function failing in one process (fail-fast) stops all of them
        scores = c.reward.score(problems, texts, completion_id_lists(batch), step)
    return batch, texts, scores


def _split(batch, problems, texts, scores, group_size, kept: list[_Group], dropped: list[_Group]) -> None:
    """Append each group of the batch to ``kept`` when its rewards differ, else to ``dropped``."""
    rewards = torch.tensor(scores.values(missing=math.nan))
    spread = groups_with_spread(rewards, batch.group_ids.cpu())
    for first in range(0, len(problems), group_size):
        rows = slice(first, first + group_size)
        index = torch.arange(first, first + group_size, device=batch.group_ids.device)
        group = _Group(batch.select(index), problems[rows], texts[rows], scores.total[rows],
                       {name: values[rows] for name, values in scores.per_function.items()})
        (kept if bool(spread[first]) else dropped).append(group)
