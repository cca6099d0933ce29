"""The Python entry points behind ``from thermorl import ...``: configure, train, evaluate, generate, compare.

Each does what the CLI command of the same name does and returns its result (a benchmark evaluation also
prints its table; the CLI calls these). Errors in the user's input raise :class:`~thermorl.errors.ThermoRLError`
subclasses whose message names the problem; nothing here exits.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from thermorl.config import Config, build_config, load_config, to_dict
from thermorl.config.loader import read_raw
from thermorl.errors import ThermoRLError


def make_config(
    base: Config | str | Path | None = None, *, overrides: list[str] | tuple[str, ...] = (),
    plugins: list[str] | tuple[str, ...] = (), **sections: Any,
) -> Config:
    """A validated :class:`Config` from keyword arguments, one per section, in the YAML layout.

    ``base`` is a Config or a YAML file to start from (default: every field's default); each keyword names a
    section (``train``, ``temperature``, ...) given as a dict, nested like the YAML file, or the top-level
    ``plugins`` list; ``overrides`` are ``section.field=value`` strings applied last (as ``--set``)::

        make_config(temperature={"controller": "ead", "ead": {"tau_max": 1.1}}, train={"steps": 50})

    Raises :class:`~thermorl.errors.ConfigError` naming the bad field.
    """
    raw = to_dict(base) if isinstance(base, Config) else read_raw(base, ())
    _merge(raw, sections)
    _merge(raw, read_raw(None, overrides))
    return build_config(raw, plugins)


def _merge(into: dict[str, Any], update: dict[str, Any]) -> None:
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(into.get(key), dict):
            _merge(into[key], value)
        else:
            into[key] = value


def train(config: Config, out: str | Path | None = None, *, resume: bool = False, progress: Any = None) -> dict[str, Any]:
    """Train with GRPO and the configured temperature controller; returns the run's summary (summary.json).

    Writes the run directory ``out`` (default ``runs/<time>-<controller>``: config.yaml, metrics.jsonl,
    checkpoints, plots). ``resume=True`` continues ``out`` from its newest valid checkpoint (pass the
    config loaded from ``out/config.yaml``). A new run that fails on bad input leaves no run directory.
    """
    from thermorl.runtime.trainer import train as run_training

    run_dir = Path(out) if out is not None else default_run_dir(config.temperature.controller)
    return run_training(config, run_dir, progress, resume=resume)


def default_run_dir(controller: str) -> Path:
    """``runs/<time>-<controller>``, the run directory when none is given."""
    return Path("runs") / f"{time.strftime('%Y%m%d-%H%M%S')}-{controller}"


def resolve_checkpoint(path: str | Path) -> tuple[Path | None, Path | None]:
    """(run config.yaml or None, model directory) for a run dir, a checkpoint dir or a model dir;
    a sharded (FSDP) checkpoint is consolidated into its ``model/`` first."""
    from thermorl.runtime.checkpoint import list_checkpoints
    from thermorl.runtime.sharded import consolidated_model_dir, has_shards

    path = Path(path)
    if not path.exists():
        raise ThermoRLError(f"checkpoint {path} does not exist")
    if (path / "config.yaml").is_file() and list_checkpoints(path):
        return path / "config.yaml", consolidated_model_dir(list_checkpoints(path)[-1], path / "config.yaml")
    if ((path / "model").is_dir() or has_shards(path)) and (path.parent.parent / "config.yaml").is_file():
        return path.parent.parent / "config.yaml", consolidated_model_dir(path, path.parent.parent / "config.yaml")
    if (path / "config.json").is_file() or (path / "adapter_config.json").is_file():
        return None, path
    raise ThermoRLError(f"{path} is neither a run directory, a checkpoint, nor a model directory")


def checkpoint_config(checkpoint: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """The config of a run directory, checkpoint or model directory, with its model path and ``overrides``."""
    run_config, model_dir = resolve_checkpoint(checkpoint)
    return load_config(run_config, ([f"model.path={model_dir}"] if model_dir else []) + list(overrides))


def evaluate(
    checkpoint: str | Path | None = None, *, k: int = 8, problems: int | None = None, seed: int = 0,
    overrides: list[str] | tuple[str, ...] = (), benchmarks: str | list[str] | None = None, model: str | None = None,
    samples: int | None = None, max_new_tokens: int | None = None, batch_size: int = 64, out: str | Path | None = None,
) -> dict[str, Any]:
    """Score a run directory, checkpoint or model (``thermorl eval``).

    Without ``benchmarks``: on its task's held-out split; returns greedy_accuracy, avg@k and pass@k at the
    shared evaluation temperature (and at the controller's own temperatures for controllers that decode with
    them), the reward counters, ``problems`` and ``k``. With ``benchmarks`` (names like ``math500``, or data
    files; ``checkpoint`` or ``model``, a model directory, .gguf file or LoRA adapter): avg@k and unbiased
    pass@k from ``samples`` >= k completions per problem with bootstrap 95% intervals, per benchmark, also
    written to ``out``/eval.json and eval.md (default ``checkpoint``/eval or evals/<model name>).
    """
    if benchmarks is not None:
        return _evaluate_benchmarks(checkpoint, model, benchmarks, k, samples, problems, seed, max_new_tokens,
                                    batch_size, out, overrides)
    if checkpoint is None:
        raise ThermoRLError("give a checkpoint to evaluate (or a model with benchmarks)")
    import torch

    from thermorl.engines import build_engine
    from thermorl.engines.hf import uses_chat_template
    from thermorl.rewards import build_reward_guard
    from thermorl.runtime.components import load_for_eval
    from thermorl.study.evaluate import greedy_accuracy, sampled_metrics

    cfg = checkpoint_config(checkpoint, overrides)
    policy, task, controller = load_for_eval(cfg)
    engine = build_engine(cfg.rollout, policy, controller)
    selected = task.eval_problems()[:problems]
    generator = torch.Generator(device=policy.device).manual_seed(seed)
    reward = build_reward_guard(cfg.task, task, uses_chat_template(policy.tokenizer), policy.system_prompt)
    try:
        reward.check_columns(selected, "the held-out problems")
        result = {"greedy_accuracy": greedy_accuracy(engine, task, selected, reward)}
        result.update(sampled_metrics(engine, task, selected, controller, k, generator, reward=reward))
        result.update(reward.metrics())
    finally:
        reward.close()
    return {**result, "problems": len(selected), "k": k}


def _evaluate_benchmarks(
    checkpoint: str | Path | None, model: str | None, benchmarks: str | list[str], k: int, samples: int | None,
    problems: int | None, seed: int, max_new_tokens: int | None, batch_size: int, out: str | Path | None,
    overrides: list[str] | tuple[str, ...],
) -> dict[str, Any]:
    from thermorl.study.benchmarks_eval import run_benchmark_eval

    if (checkpoint is None) == (model is None):
        raise ThermoRLError("give exactly one of --checkpoint and --model")
    run_config, model_dir = resolve_checkpoint(checkpoint) if checkpoint is not None else (None, model)
    default_out = Path(checkpoint) / "eval" if checkpoint is not None else Path("evals") / Path(model).name
    names = [b.strip() for b in benchmarks.split(",")] if isinstance(benchmarks, str) else list(benchmarks)
    return run_benchmark_eval(
        run_config, str(model_dir), list(overrides), [name for name in names if name], k, samples, problems, seed,
        max_new_tokens, batch_size, Path(out) if out is not None else default_out,
    )


@dataclass
class Generation:
    """One sampled completion: its text, its tokens (decoded one by one) and each token's temperature."""

    prompt: str
    text: str
    tokens: list[str]
    temperatures: list[float]


def generate(
    checkpoint: str | Path, prompts: str | list[str], *, samples: int = 1, seed: int = 0,
    overrides: list[str] | tuple[str, ...] = (),
) -> list[Generation]:
    """Sample ``samples`` completions per prompt with the checkpoint's own temperature controller (the learned
    head of an introspective run), as ``thermorl generate``; prompts are in the task's format."""
    import torch

    from thermorl.engines import build_engine
    from thermorl.runtime.components import load_for_eval

    prompts = [prompts] if isinstance(prompts, str) else list(prompts)
    cfg = checkpoint_config(checkpoint, [f"train.seed={seed}", *overrides])
    policy, _, controller = load_for_eval(cfg)
    engine = build_engine(cfg.rollout, policy, controller)
    generator = torch.Generator(device=policy.device).manual_seed(seed)
    rows = [p for p in prompts for _ in range(samples)]
    group_ids = torch.arange(len(prompts)).repeat_interleave(samples)
    batch = engine.generate(rows, controller, generator, group_ids=group_ids)
    lengths = batch.completion_mask.sum(-1).long().tolist()
    return [
        Generation(
            prompt, text, [policy.tokenizer.decode([t]) for t in batch.completion_ids[i, : lengths[i]].tolist()],
            batch.temperatures[i, : lengths[i]].tolist(),
        )
        for i, (prompt, text) in enumerate(zip(rows, engine.decode(batch)))
    ]


def compare(
    controllers: str = "fixed:0.6,fixed:1.0,fixed:1.4,linear,ead,entropy,tampo,introspective", *, seeds: int = 5,
    steps: int = 80, out: str | Path = "runs/compare", jobs: int = 1, config: str | Path | None = None,
    overrides: list[str] | tuple[str, ...] = (),
) -> dict[str, Any]:
    """Train every controller x seed at one budget, each run a ``thermorl train`` process, ``jobs`` at a time;
    returns the study (compare.json: per-arm final accuracy with 95% intervals, paired tests) and writes
    ``out``/compare.md and plots. Finished runs are skipped, interrupted ones resumed (as ``thermorl compare``).
    """
    from thermorl.study import compare as study

    out, config = Path(out), None if config is None else Path(config)
    arms = study.parse_arms(controllers)
    for arm in arms:  # a bad config fails here, before any run starts
        load_config(config, [*arm.overrides, *overrides, f"train.steps={steps}"])
    study.check_study(out, steps, config, list(overrides))
    runs = study.plan_runs(out, arms, seeds)
    study.execute(runs, steps, jobs, config, list(overrides))
    return study.aggregate(out, arms, seeds)
