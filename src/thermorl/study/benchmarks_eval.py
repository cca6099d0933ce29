"""``thermorl eval --benchmarks``: avg@k and unbiased pass@k on math benchmarks, with bootstrap intervals.

For each benchmark, every problem gets ``samples`` (n >= k) completions decoded with the run's
temperature controller (the learned head included). With c correct completions of n:

  avg@k  = mean over problems of c / n           (the papers' avg@8 with n = k = 8)
  pass@k = mean over problems of 1 - C(n-c, k) / C(n, k)   (Chen et al. 2021, unbiased)

and a 95% percentile-bootstrap interval over problems (problems resampled with replacement).
Results go to ``OUT/eval.json`` (rewritten after each benchmark, so an interrupted evaluation
resumes where it stopped: benchmarks already in it are skipped) and ``OUT/eval.md``.
"""

from __future__ import annotations

import json
import os
import time
import zlib
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from thermorl.config import RolloutConfig, TaskConfig
from thermorl.engines import RolloutBatch, build_engine
from thermorl.errors import ThermoRLError
from thermorl.models.policy import Policy
from thermorl.rewards.guard import RewardGuard
from thermorl.study.evaluate import pass_at_k, score_problems
from thermorl.study.stats import bootstrap_interval
from thermorl.tasks.base import Problem
from thermorl.tasks.math import MathTask, math_problem
from thermorl.tasks.math_data import load_math_rows
from thermorl.temperature.base import TemperatureController

DEFAULT_MAX_NEW_TOKENS = 1024


@dataclass(frozen=True)
class BenchmarkSettings:
    """What an eval.json was computed with; a resumed evaluation must match it."""

    model: str
    controller: str
    k: int
    samples: int
    max_new_tokens: int
    seed: int
    problems: int | None  # per-benchmark cap (a prefix of each file); None = all


def summarise(correct: list[int], samples: int, k: int, seed: int = 0) -> dict[str, Any]:
    """avg@k and pass@k with bootstrap intervals from per-problem correct counts out of ``samples``."""
    accuracy = [c / samples for c in correct]
    passed = [pass_at_k(samples, c, k) for c in correct]
    return {
        "problems": len(correct),
        "avg_at_k": float(np.mean(accuracy)),
        "avg_at_k_ci95": bootstrap_interval(accuracy, seed=seed),
        "pass_at_k": float(np.mean(passed)),
        "pass_at_k_ci95": bootstrap_interval(passed, seed=seed),
    }


def benchmark_problems(source: str, task: TaskConfig, limit: int | None) -> list[Problem]:
    """The problems of a benchmark name or data file, prompted with the task's template."""
    rows = load_math_rows(source, task.problem_field, task.answer_field, split="test")
    return [math_problem(row, task.prompt_template) for row in rows[:limit]]


def evaluate_benchmarks(
    policy: Policy,
    controller: TemperatureController,
    reward: RewardGuard,
    benchmarks: list[str],
    task: TaskConfig,
    settings: BenchmarkSettings,
    out_dir: Path,
    rollout: RolloutConfig,
    batch_rows: int = 64,
    training_step: int = 0,
    progress: Any = None,
    on_batch: Callable[[RolloutBatch], None] | None = None,
) -> dict[str, Any]:
    """Score each benchmark, skipping those already in ``out_dir/eval.json``; returns the eval.json content.

    Sampled through the ``rollout.engine`` with the run's ``rollout`` settings (its temperature clamp) and
    ``settings.max_new_tokens``. ``on_batch`` sees every sampled batch (e.g. to check its temperatures).
    ``reward`` is the run's reward guard; each benchmark's entry records the failures counted on it."""
    if settings.samples < settings.k:
        raise ThermoRLError(f"--samples ({settings.samples}) must be >= --k ({settings.k})")
    results = _load_previous(out_dir, settings)
    engine = build_engine(replace(rollout, max_new_tokens=settings.max_new_tokens), policy, controller)
    for name in benchmarks:
        if name in results["benchmarks"]:
            continue
        problems = benchmark_problems(name, task, settings.problems)
        reward.check_columns(problems, f"the problems of {name}")
        held_out = MathTask([], problems, len(problems), 0, task.answer_extractor, task.verify_timeout_s)
        counted = reward.metrics()
        generator = torch.Generator(device=policy.device).manual_seed(settings.seed + zlib.crc32(name.encode()))
        per_call = max(1, batch_rows // settings.samples)
        bar = progress.add_task(name, total=len(problems)) if progress is not None else None
        start = time.time()
        correct: list[int] = []
        for first in range(0, len(problems), per_call):
            chunk = problems[first : first + per_call]
            scores = score_problems(
                engine, held_out, chunk, controller, settings.samples, False, generator,
                batch_rows=batch_rows, training_step=training_step, on_batch=on_batch, reward=reward,
            )
            correct.extend(round(sum(s)) for s in scores)
            if bar is not None:
                progress.update(bar, advance=len(chunk))
        entry = summarise(correct, settings.samples, settings.k, settings.seed)
        entry.update(seconds=round(time.time() - start, 2), correct=correct)
        entry.update({key: value - counted[key] for key, value in reward.metrics().items()})
        results["benchmarks"][name] = entry
        _write(out_dir, results)
    return results


def _load_previous(out_dir: Path, settings: BenchmarkSettings) -> dict[str, Any]:
    path = out_dir / "eval.json"
    if not path.is_file():
        return {"settings": asdict(settings), "benchmarks": {}}
    try:
        previous = json.loads(path.read_text(encoding="utf-8"))
        saved = previous["settings"]
        previous["benchmarks"]
    except (OSError, ValueError, KeyError, TypeError):
        raise ThermoRLError(f"{path} exists but is not a thermorl eval.json (choose another --out)") from None
    changed = [f"{key}={saved.get(key)!r} there, {value!r} now" for key, value in asdict(settings).items()
               if saved.get(key) != value]
    if changed:
        raise ThermoRLError(f"{path} was computed with other settings ({'; '.join(changed)}); choose another --out")
    return previous


def _write(out_dir: Path, results: dict[str, Any]) -> None:
    """eval.json (atomically: temporary file, then rename) and eval.md."""
    out_dir.mkdir(parents=True, exist_ok=True)
    tmp = out_dir / ".eval.json.tmp"
    tmp.write_text(json.dumps(results, indent=1), encoding="utf-8")
    os.replace(tmp, out_dir / "eval.json")
    (out_dir / "eval.md").write_text(markdown_table(results), encoding="utf-8")


def table_rows(results: dict[str, Any]) -> list[list[str]]:
    """[benchmark, problems, avg@k, its CI, pass@k, its CI] in percent, plus the mean over benchmarks."""
    rows = []
    entries = results["benchmarks"]
    for name, entry in entries.items():
        rows.append([
            name, str(entry["problems"]), f"{100 * entry['avg_at_k']:.2f}", _interval(entry["avg_at_k_ci95"]),
            f"{100 * entry['pass_at_k']:.2f}", _interval(entry["pass_at_k_ci95"]),
        ])
    if len(entries) > 1:
        mean_avg = np.mean([e["avg_at_k"] for e in entries.values()])
        mean_pass = np.mean([e["pass_at_k"] for e in entries.values()])
        rows.append(["average", "", f"{100 * mean_avg:.2f}", "", f"{100 * mean_pass:.2f}", ""])
    return rows


def markdown_table(results: dict[str, Any]) -> str:
    s = results["settings"]
    k = s["k"]
    lines = [
        f"# Evaluation of {s['model']}",
        "",
        (
            f"controller `{s['controller']}`, {s['samples']} samples per problem, max {s['max_new_tokens']} new "
            f"tokens, seed {s['seed']}; percent, 95% bootstrap intervals over problems."
        ),
        "",
        f"| benchmark | problems | avg@{k} | 95% CI | pass@{k} | 95% CI |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    lines += ["| " + " | ".join(row) + " |" for row in table_rows(results)]
    return "\n".join(lines) + "\n"


def _interval(bounds: list[float]) -> str:
    return f"[{100 * bounds[0]:.1f}, {100 * bounds[1]:.1f}]"


def run_benchmark_eval(
    run_config: Path | None,
    model_path: str,
    overrides: list[str],
    benchmarks: list[str],
    k: int,
    samples: int | None,
    problems: int | None,
    seed: int,
    max_new_tokens: int | None,
    batch_rows: int,
    out_dir: Path,
    progress_enabled: bool = True,
    on_batch: Callable[[RolloutBatch], None] | None = None,
) -> dict[str, Any]:
    """The whole ``thermorl eval --benchmarks`` command: load, score, write eval.json / eval.md, print a table."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
    from rich.table import Table

    from thermorl.config import load_config
    from thermorl.engines.hf import uses_chat_template
    from thermorl.rewards import build_reward_guard
    from thermorl.runtime.components import load_for_eval

    cfg = load_config(run_config, overrides)
    cfg.model.path = model_path
    if max_new_tokens is None:
        max_new_tokens = cfg.rollout.max_new_tokens if cfg.task.name == "math" else DEFAULT_MAX_NEW_TOKENS
    for name in benchmarks:  # fail on a bad name before loading the model
        benchmark_problems(name, cfg.task, 1)
    settings = BenchmarkSettings(
        model_path, cfg.temperature.controller, k, samples or k, max_new_tokens, seed, problems
    )
    _load_previous(out_dir, settings)  # a settings clash fails before the model loads
    policy, _, controller = load_for_eval(cfg)
    math_task = MathTask([], [], 0, 0, cfg.task.answer_extractor, cfg.task.verify_timeout_s)
    reward = build_reward_guard(cfg.task, math_task, uses_chat_template(policy.tokenizer), policy.system_prompt)
    state_file = Path(model_path).parent / "state.json"
    training_step = json.loads(state_file.read_text())["step"] if state_file.is_file() else 0
    console = Console(stderr=True)
    with Progress(
        TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
        console=console, disable=not progress_enabled,
    ) as progress:
        try:
            results = evaluate_benchmarks(
                policy, controller, reward, benchmarks, cfg.task, settings, out_dir, cfg.rollout, batch_rows,
                training_step, progress, on_batch,
            )
        finally:
            reward.close()
    table = Table(title=f"{model_path} ({settings.controller}, n={settings.samples}) -> {out_dir}/eval.json")
    for column in ["benchmark", "problems", f"avg@{k}", "95% CI", f"pass@{k}", "95% CI"]:
        table.add_column(column, justify="left" if column == "benchmark" else "right")
    for row in table_rows({**results, "benchmarks": {b: results["benchmarks"][b] for b in benchmarks}}):
        table.add_row(*row)
    Console().print(table)
    return results
