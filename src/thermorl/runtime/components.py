"""What a run is made of: :class:`Components` (policy, reference, task, controller, optimizers, engine, reward
guard, data-parallel share), built from a config before any file is written, and ``load_for_eval`` for a
saved run."""

from __future__ import annotations

import random

import copy
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from thermorl.config import Config
from thermorl.engines import RolloutEngine, build_engine
from thermorl.engines.vllm import check_supported as check_vllm
from thermorl.errors import ModelLoadError
from thermorl.models.policy import Policy, load_policy
from thermorl.engines.hf import uses_chat_template
from thermorl.rewards import build_reward_guard
from thermorl.rewards.guard import RewardGuard
from thermorl.runtime import checkpoint as ckpt
from thermorl.runtime import fsdp
from thermorl.runtime.distributed import Distributed, setup_distributed
from thermorl.tasks import Task, build_task
from thermorl.temperature import ControllerEnv, TemperatureController, build_controller


@dataclass
class Components:
    """Everything a run builds before it writes anything to disk."""

    policy: Policy
    reference: Policy | None
    task: Task
    controller: TemperatureController
    lm_optimizer: torch.optim.Optimizer
    head_optimizer: torch.optim.Optimizer | None
    engine: RolloutEngine  # samples every rollout of the run (rollout.engine, the run's RolloutConfig)
    reward: RewardGuard | None = None  # the task's reward behind a timeout and value checks
    dist: Distributed = field(default_factory=Distributed)  # this process's share of a data-parallel job


def build_components(config: Config, policy: Policy | None = None) -> Components:
    """Load model, task and controller; raises ThermoRLError on bad input, before any file is written.

    ``policy``, if given, is trained instead of loading ``config.model`` (e.g. a model built from a
    config in memory, as the benchmarks do).
    """
    if config.rollout.engine == "vllm":  # refuse what it cannot serve before loading anything
        check_vllm(config)
    torch.manual_seed(config.train.seed)
    if config.train.threads:
        torch.set_num_threads(config.train.threads)
    dc = config.distributed
    dist = setup_distributed(
        config.rollout.prompts_per_step, dc.strategy,
        fsdp.FsdpSettings(dc.fsdp_reshard_after_forward, dc.fsdp_mixed_precision, config.model.gradient_checkpointing),
    )
    if policy is None:
        policy = load_policy(replace(config.model, device=str(dist.device)) if dist.enabled else config.model,
                             seed=config.train.seed)
    task = build_task(config.task)
    env = ControllerEnv(
        policy.hidden_size, config.train.steps, policy.device, config.rollout.group_size, config.train.seed,
        gather_rows=dist.gather_rows, rank=dist.rank, world_size=dist.world_size, **token_class_env(task, policy),
    )
    controller = build_controller(config.temperature, env)
    dist.broadcast_parameters(policy.model, controller.module)
    reference = None
    if config.algorithm.beta > 0 and dist.fsdp is not None:
        reference = fsdp.copy_for_reference(policy, dist.fsdp)
    elif config.algorithm.beta > 0:
        reference = Policy(copy.deepcopy(policy.model).eval().requires_grad_(False), policy.tokenizer)
    if dist.fsdp is not None:  # parameters become shards in place: before the optimizer is built
        fsdp.shard_policy(policy, dist.fsdp)
    lm_optimizer = torch.optim.AdamW(
        policy.model.parameters(), lr=config.algorithm.lr, weight_decay=config.algorithm.weight_decay
    )
    head_optimizer = None
    if controller.module is not None:
        head_lr = getattr(getattr(config.temperature, config.temperature.controller), "lr", config.algorithm.lr)
        head_optimizer = torch.optim.AdamW(controller.module.parameters(), lr=head_lr)
    reward = build_reward_guard(
        config.task, task, uses_chat_template(policy.tokenizer), policy.system_prompt, config.train.steps
    )
    reward.check_columns([task.generate(random.Random(config.train.seed))], "the training problems")
    reward.check_columns(task.eval_problems()[:1], "the held-out problems")
    engine = build_engine(config.rollout, policy, controller)
    policy.model.train()  # sampling switches to eval mode and back; every update runs in train mode
    c = Components(policy, reference, task, controller, lm_optimizer, head_optimizer, engine, reward, dist)
    if not finite_parameters(c):
        raise ModelLoadError(f"model {config.model.path} has NaN or inf parameters")
    return c


def token_class_env(task: Task, policy: Policy) -> dict[str, Any]:
    """The task's token classes for ``ControllerEnv``: the class of the next token from the completion ids so
    far, read by the task's rule (``Task.token_class_rule``) on the decoded text; empty when it has none."""
    rule = task.token_class_rule()
    if rule is None:
        return {}
    tokenizer = policy.tokenizer

    def next_token_class(ids: list[int]) -> str:
        return rule.classify(tokenizer.decode(ids, skip_special_tokens=True))

    return {"token_classes": rule.classes, "next_token_class": next_token_class}


def trainable_parameters(c: Components) -> list[torch.nn.Parameter]:
    """The language model's parameters and, when the controller has one, its head's."""
    head = list(c.controller.module.parameters()) if c.controller.module is not None else []
    return list(c.policy.model.parameters()) + head


def finite_gradients(c: Components) -> bool:
    """Whether every process's gradients (its shards under FSDP) are finite."""
    norms = [fsdp.local(p.grad).detach().norm() for p in trainable_parameters(c) if p.grad is not None]
    return c.dist.agree(not norms or bool(torch.isfinite(torch.stack(norms).sum())))


def finite_parameters(c: Components) -> bool:
    norms = [fsdp.local(p).detach().norm() for p in trainable_parameters(c)]
    return c.dist.agree(bool(torch.isfinite(torch.stack(norms).sum())))


def load_for_eval(config: Config) -> tuple[Policy, Task, TemperatureController]:
    """Policy, task and controller of a saved run; controller state comes from the checkpoint
    that holds ``config.model.path`` (when the model lives in a checkpoint)."""
    policy = load_policy(config.model)
    task = build_task(config.task)
    env = ControllerEnv(
        policy.hidden_size, config.train.steps, policy.device, config.rollout.group_size, config.train.seed,
        **token_class_env(task, policy),
    )
    controller = build_controller(config.temperature, env)
    checkpoint_dir = Path(config.model.path).parent
    if (checkpoint_dir / "state.json").is_file():
        state, controller_tensors, _ = ckpt.load_checkpoint_state(checkpoint_dir)
        # random streams are resumed in training only; evaluation seeds them from the run seed
        tensors = {k: v for k, v in controller_tensors.items() if not k.endswith("generator")}
        controller.load_state_dict({**state["controller"], **tensors})
    return policy, task, controller
