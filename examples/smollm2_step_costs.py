"""Where a GRPO step's time goes: ``thermorl train`` run in this process with clocks around its phases.

Each step's row in ``RUN/step_costs.jsonl`` (written as the step ends, so a stopped run keeps its rows):
``rollout`` (the engine's generation), ``reward`` (scoring), ``update`` (pi_old, rollout correction,
forward, backward, optimizer step), ``sync`` (writing the new weights into the engine; 0 for hf) and
``step`` (all of it; the rest is advantages and bookkeeping). Evaluations happen between steps and are not
counted. metrics.jsonl logs only ``step_time_s``; this splits it without touching the trainer. Arguments
are those of ``thermorl train``:

    OMP_NUM_THREADS=1 PYTHONPATH=src python examples/smollm2_step_costs.py --config examples/smollm2_cpu.yaml \\
        --set model.path=$GGUF --steps 10 --out runs/smollm2-pilot
"""

from __future__ import annotations

import functools
import json
import sys
import time
from pathlib import Path
from typing import Any, Callable


def main() -> None:
    import thermorl.runtime.trainer as trainer
    from thermorl.cli import app
    from thermorl.engines import HFEngine
    from thermorl.rewards.guard import RewardGuard

    out = Path(sys.argv[sys.argv.index("--out") + 1]) if "--out" in sys.argv else None
    if out is None:
        raise SystemExit("give --out RUN (the run directory; step_costs.jsonl is written into it)")
    clocks: dict[str, float] = {}

    def clocked(name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(fn)
        def run(*args: Any, **kwargs: Any) -> Any:
            started = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                clocks[name] = clocks.get(name, 0.0) + time.perf_counter() - started
        return run

    engines = [HFEngine]
    try:
        from thermorl.engines.vllm import VLLMEngine

        engines.append(VLLMEngine)
    except ImportError:
        pass
    for engine in engines:
        engine.generate = clocked("rollout", engine.generate)
        if hasattr(engine, "sync_weights"):
            engine.sync_weights = clocked("sync", engine.sync_weights)
    RewardGuard.score = clocked("reward", RewardGuard.score)
    trainer.grpo_update = clocked("update", trainer.grpo_update)
    step_fn = trainer.train_step

    @functools.wraps(step_fn)
    def train_step(c: Any, config: Any, state: Any, step: int, problems: list) -> Any:
        clocks.clear()  # evaluations between steps are not a step's cost
        started = time.perf_counter()
        result = step_fn(c, config, state, step, problems)
        row = {"step": step, "step_s": time.perf_counter() - started,
               **{f"{k}_s": clocks.get(k, 0.0) for k in ("rollout", "reward", "update", "sync")},
               "new_tokens": int(result[1].completion_mask.sum().item()), "reward_mean": result[0].get("reward_mean")}
        with (out / "step_costs.jsonl").open("a", encoding="utf-8") as handle:
            handle.write(json.dumps(row) + "\n")
        return result

    trainer.train_step = train_step
    sys.argv = ["thermorl", "train", *sys.argv[1:]]
    app()


if __name__ == "__main__":
    main()
