"""``thermorl compare``: every temperature controller x seed at one budget, with confidence intervals.

Each (controller, seed) pair is an ordinary ``thermorl train`` run in ``OUT/runs/<arm>-s<seed>``,
launched as a subprocess (at most ``jobs`` at once, one torch thread each). A run whose
``summary.json`` exists is skipped; one with a checkpoint is resumed; one killed before its
first checkpoint is started again. So an interrupted study continues where it stopped.

The aggregate (``OUT/compare.md``, ``OUT/compare.json``, ``OUT/curves.png``,
``OUT/final_accuracy.png``) reports, per controller, the mean over seeds of held-out greedy
accuracy, avg@k and pass@k with 95% t-intervals; a paired t-test (same seeds) of introspective
against the best fixed temperature; and the smallest paired difference the study can resolve.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import yaml

from thermorl.config import CONTROLLERS, Config, load_config
from thermorl.errors import ConfigError, ThermoRLError
from thermorl.runtime.checkpoint import list_checkpoints
from thermorl.runtime.tracking import read_jsonl
from thermorl.study import stats
from thermorl.study.doc_blocks import read_doc, replace_block, update_doc  # noqa: F401  (the CLI's)
from thermorl.study.headroom import class_temperatures, headroom, headroom_line

METRICS = (  # summary.json key, column title ({k}: train.eval_avg_k, {t}: train.eval_temperature of the runs)
    ("final_eval_accuracy", "greedy acc"),
    ("final_eval_avg_at_k", "avg@{k} at T={t}"),
    ("final_eval_pass_at_k", "pass@{k} at T={t}"),
    ("final_eval_own_avg_at_k", "avg@{k} own temps"),
)


# --------------------------------------------------------------------------- the study plan


@dataclass(frozen=True)
class Arm:
    """One setting of the study: a controller, ``fixed:T``, or ``name[key=value,...]`` with overrides of
    the controller's own section (``introspective[schedule=joint]``, ``by_class[temperatures.result=0.5]``) or
    of any field of another section (``introspective[algorithm.lr=1e-4]``)."""

    label: str
    overrides: tuple[str, ...]

    @property
    def slug(self) -> str:
        """The label as a directory name: ``introspective[schedule=joint]`` -> ``introspective-schedule_joint``."""
        slug = self.label.replace(":", "_").replace("[", "-").replace("]", "").replace("=", "_").replace(",", "-")
        return "".join(ch if ch.isalnum() or ch in "._-" else "_" for ch in slug)


CONFIG_SECTIONS = {f.name for f in dataclasses.fields(Config)}  # model, task, rollout, temperature, ...
_ARM = re.compile(r"^(?P<name>[A-Za-z_]\w*)(?::(?P<value>[^\[\]]+))?(?:\[(?P<overrides>[^\[\]]*)\])?$")


def split_arms(spec: str) -> list[str]:
    """Split ``--controllers`` at the commas outside brackets."""
    items, depth, current = [], 0, ""
    for ch in spec:
        depth += {"[": 1, "]": -1}.get(ch, 0)
        if ch == "," and depth == 0:
            items.append(current)
            current = ""
        else:
            current += ch
    return [item.strip() for item in [*items, current] if item.strip()]


def parse_arms(spec: str) -> list[Arm]:
    """``"fixed:0.6,tampo,introspective[schedule=joint,kl_coef=0.1]"`` -> arms; ``fixed:T`` sets the fixed
    temperature T; every override is checked against the config schema before any run starts."""
    arms = []
    for item in split_arms(spec):
        match = _ARM.match(item)
        if match is None:
            raise ThermoRLError(f"--controllers: cannot read {item!r} (write name, fixed:T or name[key=value,...])")
        name, value, extra = match["name"], match["value"], match["overrides"]
        if name not in CONTROLLERS:  # the registered controllers, thermorl's and plug-ins'
            raise ThermoRLError(f"--controllers: unknown controller {name!r} (choose from {', '.join(CONTROLLERS)})")
        overrides = [f"temperature.controller={name}"]
        if value:
            if name != "fixed":
                raise ThermoRLError(f"--controllers: only fixed takes a value (fixed:0.8), got {item!r}")
            try:
                if not float(value) > 0:
                    raise ValueError
            except ValueError:
                raise ThermoRLError(f"--controllers: {item!r} needs a positive temperature") from None
            overrides.append(f"temperature.fixed.temperature={value}")
        elif name == "fixed" and "temperature.fixed.temperature=" not in (extra or ""):
            raise ThermoRLError("--controllers: write fixed:T with the temperature T, e.g. fixed:1.0")
        for pair in (p.strip() for p in (extra or "").split(",")):
            if not pair:
                continue
            key, sep, setting = pair.partition("=")
            if not sep or not key.strip():
                raise ThermoRLError(f"--controllers: {item!r}: {pair!r} must look like key=value")
            key = key.strip()
            if key.split(".")[0] not in CONFIG_SECTIONS:  # the controller's own section, nested keys included
                key = f"temperature.{name}.{key}"
            overrides.append(f"{key}={setting.strip()}")
        try:
            load_config(None, overrides)
        except ConfigError as err:
            raise ThermoRLError(f"--controllers: {item!r}: {err}") from None
        arms.append(Arm(item, tuple(overrides)))
    if not arms:
        raise ThermoRLError("--controllers names no controller")
    if len({a.label for a in arms}) != len(arms) or len({a.slug for a in arms}) != len(arms):
        raise ThermoRLError("--controllers names a controller twice")
    return arms


# one thread per run (runs go in parallel); no progress bar, TensorBoard or per-run plots; one
# evaluation at the start and one at the end (the curves use the per-step training reward)
STUDY_OVERRIDES = ("train.threads=1", "log.progress=false", "log.tensorboard=false", "log.plot=false",
                   "train.eval_every=1000000")


@dataclass
class Run:
    arm: Arm
    seed: int
    out: Path

    @property
    def done(self) -> bool:
        return (self.out / "summary.json").is_file()

    def command(self, steps: int, config: Path | None, overrides: list[str]) -> list[str]:
        """The `thermorl train` command line that finishes this run: ``--resume`` from its newest
        checkpoint, or a fresh start (removing what a run killed before its first checkpoint left)."""
        cmd = [sys.executable, "-m", "thermorl.cli", "train"]
        if list_checkpoints(self.out):
            return cmd + ["--resume", str(self.out)]  # its own config.yaml holds the steps and the arm
        shutil.rmtree(self.out, ignore_errors=True)  # a run killed before its first checkpoint starts again
        if config is not None:
            cmd += ["--config", str(config)]
        cmd += ["--out", str(self.out), "--steps", str(steps), "--seed", str(self.seed)]
        for item in (*STUDY_OVERRIDES, *overrides, *self.arm.overrides):  # the later setting wins
            cmd += ["--set", item]
        return cmd


def plan_runs(out: Path, arms: list[Arm], seeds: int) -> list[Run]:
    return [Run(arm, seed, out / "runs" / f"{arm.slug}-s{seed}") for arm in arms for seed in range(seeds)]


def check_study(out: Path, steps: int, config: Path | None, overrides: list[str]) -> None:
    """Record the study's budget in OUT/study.json, or refuse to mix budgets in one directory.

    Controllers and seeds may be added to an existing study; steps, config and overrides may not change.
    """
    budget = {"steps": steps, "config": str(config) if config else None, "overrides": list(overrides)}
    path = out / "study.json"
    if path.is_file():
        saved = json.loads(path.read_text())
        for key, value in budget.items():
            if saved.get(key) != value:
                raise ThermoRLError(
                    f"{out} holds a study with {key}={saved.get(key)!r}, not {value!r} (choose another --out)"
                )
        return
    out.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(budget, indent=2))


def execute(
    runs: list[Run], steps: int, jobs: int, config: Path | None, overrides: list[str],
    on_finish: Callable[[Run, int], None] = lambda run, code: None,
) -> list[Run]:
    """Run every unfinished run, ``jobs`` at a time; returns the runs that failed."""
    pending = [r for r in runs if not r.done]
    active: list[tuple[Run, subprocess.Popen, object]] = []
    failed = []
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    try:
        while pending or active:
            while pending and len(active) < jobs:
                run = pending.pop(0)
                cmd = run.command(steps, config, overrides)
                run.out.parent.mkdir(parents=True, exist_ok=True)
                log = open(run.out.parent / f"{run.out.name}.log", "a")
                active.append((run, subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env), log))
            time.sleep(0.5)
            for item in list(active):
                run, proc, log = item
                if proc.poll() is None:
                    continue
                active.remove(item)
                log.close()
                if proc.returncode != 0 or not run.done:
                    failed.append(run)
                on_finish(run, proc.returncode)
    finally:
        for _, proc, log in active:  # Ctrl-C: each run saves a checkpoint and stops
            proc.terminate()
            proc.wait()
            log.close()
    return failed


# --------------------------------------------------------------------------- aggregation


def exploration_summary(rows: list[dict], last: int = 50) -> dict:
    """From one run's metrics.jsonl rows: the mean sampling temperature and the fraction of groups with zero
    reward variance over its last ``last`` steps (a collapsing temperature shows in both), and its held-out
    greedy accuracy at every evaluated step."""
    trained = [r for r in rows if r.get("temperature_mean") is not None]
    tail = [r for r in trained if r["step"] > trained[-1]["step"] - last] if trained else []
    return {
        "temperature_last": sum(r["temperature_mean"] for r in tail) / len(tail) if tail else float("nan"),
        "zero_variance_last": sum(r["zero_variance_groups"] for r in tail) / len(tail) if tail else float("nan"),
        "accuracy_by_step": {r["step"]: r["eval_accuracy"] for r in rows if r.get("eval_accuracy") is not None},
    }


def aggregate(out: Path, arms: list[Arm], seeds: int) -> dict:
    """Read every finished run of the study and write compare.json, compare.md and the plots."""
    runs = plan_runs(out, arms, seeds)
    summaries = {r.arm.label: {} for r in runs}
    for r in runs:
        if r.done:
            summaries[r.arm.label][r.seed] = json.loads((r.out / "summary.json").read_text())
    complete = [a for a in arms if len(summaries[a.label]) == seeds]
    first_run = next((r for r in runs if r.done), None)  # budget and evaluation set are every run's
    if first_run is None:
        raise ThermoRLError(f"no finished run under {out / 'runs'}")
    first = summaries[first_run.arm.label][first_run.seed]

    table = {}
    for arm in arms:
        per_seed = summaries[arm.label]
        row = {"seeds": sorted(per_seed), "steps": sorted({s["steps"] for s in per_seed.values()})}
        updates = [per_seed[s].get("lm_updates") for s in sorted(per_seed)]
        if updates and None not in updates:
            row["lm_updates"] = sum(updates) / len(updates)
        explored = [exploration_summary(read_jsonl(r.out / "metrics.jsonl"))
                    for r in runs if r.arm == arm and r.done]
        if explored:
            for key in ("temperature_last", "zero_variance_last"):
                row[key] = sum(e[key] for e in explored) / len(explored)
            steps = sorted(set.intersection(*(set(e["accuracy_by_step"]) for e in explored)))
            row["accuracy_by_step"] = {step: sum(e["accuracy_by_step"][step] for e in explored) / len(explored)
                                       for step in steps}
        rule = _task_rule(first_run.out)
        by_class = [class_temperatures(read_jsonl(r.out / "samples.jsonl"), rule)
                    for r in runs if r.arm == arm and r.done and rule is not None and (r.out / "samples.jsonl").is_file()]
        by_class = [t for t in by_class if t]
        if by_class:
            names = sorted(set.intersection(*(set(t) for t in by_class)))
            row["class_temperatures_last"] = {n: sum(t[n] for t in by_class) / len(by_class) for n in names}
        for key, _ in METRICS:
            values = [per_seed[s][key] for s in sorted(per_seed) if key in per_seed[s]]
            if values and len(values) == len(per_seed):
                mean, half = stats.mean_ci(values)
                row[key] = {"mean": mean, "ci95": half, "values": values}
        table[arm.label] = row

    fixed = [a for a in complete if a.label.startswith("fixed:")]
    comparison = None
    if fixed:  # every complete arm against the best fixed temperature, paired by seed
        best = max(fixed, key=lambda a: table[a.label]["final_eval_accuracy"]["mean"])
        base = table[best.label]["final_eval_accuracy"]["values"]
        for arm in complete:
            if arm != best:
                table[arm.label]["vs_best_fixed"] = stats.paired_test(table[arm.label]["final_eval_accuracy"]["values"], base)
        if "introspective" in {a.label for a in complete}:
            intro = table["introspective"]["final_eval_accuracy"]["values"]
            comparison = {"best_fixed": best.label, **table["introspective"]["vs_best_fixed"]}
            comparison["min_detectable_difference"] = stats.min_detectable_difference(
                stats.sd([x - y for x, y in zip(intro, base)]), seeds
            )
    problems = first["eval_problems"]
    train_config = yaml.safe_load((first_run.out / "config.yaml").read_text())["train"]
    result = {
        "seeds": seeds,
        "k": train_config["eval_avg_k"],
        "eval_temperature": train_config.get("eval_temperature", 1.0),
        "steps": first["steps"],
        "eval_problems": problems,
        "warm_start_accuracy": first["initial_eval_accuracy"],
        "eval_noise_se": stats.binomial_se(first["initial_eval_accuracy"], problems),
        "resolution": _resolution(table, complete, seeds),
        "seeds_for_3_points": _seeds_for(0.03, _resolution(table, complete, seeds), seeds),
        "arms": table,
        "introspective_vs_best_fixed": comparison,
        "headroom": headroom(table, [a.label for a in arms], seeds),
        "missing_runs": [f"{r.arm.label} seed {r.seed}" for r in runs if not r.done],
    }
    (out / "compare.json").write_text(json.dumps(result, indent=2))
    (out / "compare.md").write_text(markdown_table(result))
    from thermorl.reports.plots import plot_study  # matplotlib only once there is something to plot

    plot_study(out, [a.label for a in arms], [[r.out for r in plan_runs(out, [a], seeds) if r.done] for a in arms],
               seeds, result)
    return result


def _task_rule(run_dir: Path):  # -> TokenClassRule | None
    """The token-class rule of the task a finished run trained on (from its config.yaml)."""
    from thermorl.config import TaskConfig, from_dict
    from thermorl.tasks import build_task

    # the task section only: a run written by an older thermorl may hold keys since renamed elsewhere
    raw = yaml.safe_load((run_dir / "config.yaml").read_text()) or {}
    return build_task(from_dict(TaskConfig, raw.get("task") or {}, "task.")).token_class_rule()


def _resolution(table: dict, complete: list[Arm], seeds: int) -> float:
    """The study's resolution: MDE of a paired comparison, with s_d pooled over every pair of complete arms."""
    diffs_var = []
    for i, a in enumerate(complete):
        for b in complete[i + 1:]:
            x, y = table[a.label]["final_eval_accuracy"]["values"], table[b.label]["final_eval_accuracy"]["values"]
            diffs_var.append(stats.sd([u - v for u, v in zip(x, y)]) ** 2)
    if not diffs_var:
        return float("nan")
    return stats.min_detectable_difference(_pooled_sd(diffs_var), seeds)


def _seeds_for(target: float, resolution: float, seeds: int) -> int | None:
    """Seeds a paired comparison needs to resolve ``target``, at the pooled s_d behind ``resolution``."""
    if not resolution == resolution or seeds < 2:
        return None
    diffs_sd = resolution / stats.min_detectable_difference(1.0, seeds)  # MDE is linear in s_d
    return stats.seeds_for_resolution(diffs_sd, target)


def _pooled_sd(diffs_var: list[float]) -> float:
    return math.sqrt(sum(diffs_var) / len(diffs_var))


def markdown_table(result: dict) -> str:
    k, t = result["k"], result.get("eval_temperature", 1.0)
    lines = [
        f"Held-out greedy accuracy, and avg@{k} / pass@{k} sampled at one shared temperature T={t} for every arm, "
        f"after {result['steps']} GRPO steps; 'own temps' is avg@{k} at the controller's own inference-time "
        f"temperatures (introspective head, EAD schedule, EDT rule). Mean over "
        f"{result['seeds']} seeds, +- the 95% t-interval half-width; {result['eval_problems']} held-out problems "
        f"(greedy), warm start {result['warm_start_accuracy']:.3f}; LM updates: optimizer steps of the language "
        "model per run.",
        "",
        "| arm | LM updates | mean T, zero-var groups (last 50 steps) | T by task class (last 50) | "
        + " | ".join(label.format(k=k, t=t) for _, label in METRICS)
        + " | greedy acc - best fixed (paired) | runs |",
        "|---|" + "---|" * (len(METRICS) + 5),
    ]
    for label, row in result["arms"].items():
        cells = [f"{row['lm_updates']:.0f}" if "lm_updates" in row else "-"]
        cells.append(f"{row['temperature_last']:.2f}, {row['zero_variance_last']:.0%}" if "temperature_last" in row
                     else "-")
        classes = row.get("class_temperatures_last")
        cells.append(", ".join(f"{name} {tau:.2f}" for name, tau in classes.items()) if classes else "-")
        cells += [f"{row[k]['mean']:.3f} +- {row[k]['ci95']:.3f}" if k in row else "-" for k, _ in METRICS]
        paired = row.get("vs_best_fixed")
        cells.append(f"{paired['mean_difference']:+.3f} +- {paired['ci95']:.3f} (p {paired['p_value']:.2g})"
                     if paired else "-")
        lines.append(f"| {label} | " + " | ".join(cells) + f" | {len(row['seeds'])} |")
    lines += ["", f"Resolution: a paired difference of {result['resolution']:.3f} in greedy accuracy is detected "
              f"with 80% power at alpha 0.05 (s_d pooled over all controller pairs); one accuracy on "
              f"{result['eval_problems']} problems has a standard error of {result['eval_noise_se']:.3f}."
              + (f" A resolution of 0.03 would need {result['seeds_for_3_points']} seeds at this s_d."
                 if result.get("seeds_for_3_points") else "")]
    if result.get("headroom"):
        lines.append(headroom_line(result["headroom"]))
    c = result["introspective_vs_best_fixed"]
    if c:
        verdict = ("beats" if c["mean_difference"] > 0 else "is worse than") if c["p_value"] < 0.05 else \
            "is not distinguishable from"
        lines.append(
            f"Introspective {verdict} the best fixed temperature ({c['best_fixed']}): paired difference "
            f"{c['mean_difference']:+.3f} +- {c['ci95']:.3f}, t = {c['t']:.2f}, p = {c['p_value']:.3g} "
            f"(n = {c['n']} seeds; the best fixed arm is picked after the fact, which favours it)."
        )
    if result["missing_runs"]:
        lines.append(f"Missing runs: {', '.join(result['missing_runs'])}.")
    return "\n".join(lines) + "\n"
