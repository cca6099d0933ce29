"""Run by tests/vllm_engine/test_distributed_vllm.py under ``torch.distributed.run --nproc_per_node 2``
(``python dp_vllm_worker.py OUT ddp|fsdp``): the default job with the introspective head, a vLLM engine in
each process (head inside), trained a few steps.

1. A checked run: after every step (after the engine's weight sync) each process compares the weights its
   engine samples from with the trainer's, tensor by tensor (the trainer's gathered under FSDP, mapped into
   vLLM's fused layout), and samples fixed prompts with its engine to measure the engine/trainer log-prob gap
   of the LM and of the head. Every process writes what it found to OUT/check-STRATEGY-rankR.json. The
   controller's random stream is restored after each check, so the run itself is not disturbed.
2. The uninterrupted reference of the kill -9 / --resume test (OUT/reference-STRATEGY), with the settings
   the test passes to ``thermorl train``.
"""

from __future__ import annotations

import json
import random
import sys
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
SETTINGS = [  # the default job, smaller evaluation; the head inside both engines
    "temperature.controller=introspective", "rollout.engine=vllm", "rollout.vllm.max_model_len=128",
    "rollout.vllm.kv_cache_gib=1", "task.eval_size=16", "train.eval_avg_problems=4", "train.eval_avg_k=2",
    "train.eval_every=100", "train.threads=1", "log.progress=false", "log.plot=false", "log.tensorboard=false",
]
CHECK_STEPS = 3
RESUME_STEPS = 4
RESUME_SETTINGS = [  # the kill -9 / --resume runs (the test passes the same to `thermorl train`)
    *SETTINGS, f"train.steps={RESUME_STEPS}", "train.checkpoint_every=2", "task.reward_timeout_s=600",
    f"task.reward={HERE.parent / 'user_rewards.py'}:held_at_checkpoint", "task.reward_workers=0",
]


def trainer_weights(c) -> dict[str, torch.Tensor]:
    """The policy's weights by Hugging Face name (full tensors: a collective under FSDP) and the head's."""
    from thermorl.engines.vllm_weights import HEAD_PREFIX, merged_weights

    weights = {name: tensor.detach().cpu().clone() for name, tensor in merged_weights(c.policy)}
    weights.update({HEAD_PREFIX + n: p.detach().cpu().clone() for n, p in c.controller.module.state_dict().items()})
    return weights


def engine_weights(engine) -> dict[str, torch.Tensor]:
    """Every parameter of the vLLM model the engine samples from, by vLLM's names."""

    def read(worker):
        return {n: p.detach().cpu().clone() for n, p in worker.model_runner.model.named_parameters()}

    return engine.llm.collective_rpc(read)[0]


def differing(trainer: dict[str, torch.Tensor], engine: dict[str, torch.Tensor]) -> list[str]:
    """vLLM parameters that are not exactly the trainer's (Llama: q/k/v and gate/up fused in vLLM)."""
    fused = {"qkv_proj": ("q_proj", "k_proj", "v_proj"), "gate_up_proj": ("gate_proj", "up_proj")}
    bad = []
    for name, value in engine.items():
        parts = next(([name.replace(key, p) for p in ps] for key, ps in fused.items() if f".{key}." in name), [name])
        if any(p not in trainer for p in parts):
            bad.append(f"{name} (not in the trainer)")
            continue
        expected = torch.cat([trainer[p] for p in parts]) if len(parts) > 1 else trainer[parts[0]]
        if value.dim() == 2 and value.shape[0] > expected.shape[0] and "embed" in name or "lm_head" in name:
            value = value[: expected.shape[0]]  # vLLM pads the vocabulary rows of its embedding to a multiple of 64
        if expected.shape != value.shape or not torch.equal(expected.to(value.dtype), value):
            bad.append(name)
    return bad


def check(c, step: int) -> dict:
    """This process's engine against its trainer after ``step``."""
    from thermorl.algorithms.hierarchical import temperature_logprob
    from thermorl.engines.hf import encode_prompts
    from thermorl.runtime.forward import score

    controller = c.controller
    bad = differing(trainer_weights(c), engine_weights(c.engine))
    state = controller.generator.get_state()
    problems = c.task.train_problems(random.Random(100 + step), 4)
    prompt_ids, prompt_mask = encode_prompts(c.policy, [p.prompt for p in problems for _ in range(4)])
    batch = c.engine.sample(controller, prompt_ids, prompt_mask, 16, torch.Generator().manual_seed(step),
                            training_step=step)
    controller.generator.set_state(state)
    with torch.no_grad():
        scored = score(c.policy, batch)
        head = temperature_logprob(controller.head(scored.hidden), batch.actions.gate, batch.actions.z,
                                   controller.config.eps)
    mask = batch.completion_mask
    return {
        "step": step, "differing": bad, "tokens": int(mask.sum().item()),
        "lm_max": ((scored.logprobs - batch.logprobs).abs() * mask).max().item(),
        "head_max": ((head - batch.actions.logprob).abs() * mask).max().item(),
    }


class Checks:
    """A progress reporter (the trainer calls it after every step) that checks the engine each time."""

    def __init__(self) -> None:
        self.components = None
        self.results: list[dict] = []

    def start(self, total: int, accuracy: float) -> None:
        pass

    def update(self, step: int, *values: float) -> None:
        self.results.append(check(self.components, step))


def main(out: Path, strategy: str) -> None:
    from thermorl.config import load_config
    from thermorl.runtime import trainer

    checks = Checks()
    build = trainer.build_components

    def keep(config, policy=None):  # the run's own components, kept for the checks
        checks.components = build(config, policy)
        return checks.components

    trainer.build_components = keep
    config = load_config(None, [*SETTINGS, f"train.steps={CHECK_STEPS}", f"distributed.strategy={strategy}"])
    trainer.train(config, out / f"checked-{strategy}", progress=checks)
    trainer.build_components = build
    rank = checks.components.dist.rank
    (out / f"check-{strategy}-rank{rank}.json").write_text(json.dumps(checks.results))
    checks.components = None
    reference = load_config(None, [*RESUME_SETTINGS, f"distributed.strategy={strategy}"])
    trainer.train(reference, out / f"reference-{strategy}")


if __name__ == "__main__":
    main(Path(sys.argv[1]), sys.argv[2])
