"""Command line: ``thermorl train | pretrain | eval | generate | config``.

User errors (bad config, data, model path, output directory) print one line and exit 2.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Optional

import rich.markup
import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

from thermorl.config.registry import REGISTRIES
from thermorl.errors import ThermoRLError

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="Reinforcement learning from verifiable rewards where the model learns its own sampling temperature.",
)
console = Console(stderr=True)


def fail(message: str) -> None:
    # escaped: a message may hold brackets (pip extras, list reprs) that rich would read as markup
    console.print(f"[bold red]error:[/] {rich.markup.escape(message)}", highlight=False, soft_wrap=True)
    raise typer.Exit(code=2)


class TrainProgress:
    """A rich progress bar showing reward, held-out accuracy and temperature."""

    def __init__(self, enabled: bool) -> None:
        self.bar = Progress(
            TextColumn("[bold]GRPO"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[info]}"),
            TimeElapsedColumn(), TimeRemainingColumn(), console=console, disable=not enabled,
        )
        self.task = None

    def start(self, total: int, accuracy: float) -> None:
        self.bar.start()
        self.task = self.bar.add_task("train", total=total, info=f"acc {accuracy:.3f}")

    def update(self, step: int, reward: float, accuracy: float, temperature: float) -> None:
        self.bar.update(
            self.task, completed=step, info=f"reward {reward:.3f}  acc {accuracy:.3f}  tau {temperature:.2f}"
        )

    def stop(self) -> None:
        if self.task is not None:  # an unstarted bar would still print a blank line
            self.bar.stop()


@app.command()
def train(
    config: Optional[Path] = typer.Option(None, "--config", "-c", help="YAML config file."),
    overrides: list[str] = typer.Option([], "--set", "-s", help="Override a field: section.field=value (repeatable)."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Run directory (default runs/<time>-<controller>)."),
    steps: Optional[int] = typer.Option(None, help="Shortcut for --set train.steps=N."),
    seed: Optional[int] = typer.Option(None, help="Shortcut for --set train.seed=N."),
    controller: Optional[str] = typer.Option(
        None, help="Shortcut for --set temperature.controller=NAME (`thermorl config` lists the registered ones)."
    ),
    plugins: list[str] = typer.Option(
        [], "--plugin", help="Import this module or .py file first, for the plug-ins it registers (repeatable; "
        "recorded in the run's config as plugins)."
    ),
    resume: Optional[Path] = typer.Option(
        None, "--resume", help="Continue this run directory from its newest valid checkpoint (uses its config.yaml)."
    ),
) -> None:
    """Train with GRPO and a temperature controller; writes config, metrics, checkpoints, plots to the run directory.

    Ctrl-C finishes the current step, saves a checkpoint and exits with code 130; continue with --resume RUN.
    """
    from thermorl.config import load_config

    extra = list(overrides)
    if steps is not None:
        extra.append(f"train.steps={steps}")
    if seed is not None:
        extra.append(f"train.seed={seed}")
    if controller is not None:
        extra.append(f"temperature.controller={controller}")
    try:
        if resume is not None:
            config = _resume_config(resume, config, out)
        cfg = load_config(config, extra, plugins)
        from thermorl.api import default_run_dir
        from thermorl.runtime.distributed import is_main_process
        from thermorl.runtime.trainer import train as run_training  # heavy imports only once the config is valid

        run_dir = resume or out or default_run_dir(cfg.temperature.controller)
        progress = TrainProgress(cfg.log.progress and is_main_process())  # one bar under accelerate launch
        try:
            summary = run_training(cfg, run_dir, progress, resume=resume is not None)
        finally:
            progress.stop()
    except ThermoRLError as err:
        fail(str(err))
    if summary.get("interrupted"):
        console.print(
            f"interrupted after step {summary['step']}; checkpoint {summary['checkpoint']}; "
            f"continue with: thermorl train --resume {run_dir}",
            highlight=False, soft_wrap=True,
        )
        raise typer.Exit(code=130)
    if not is_main_process():
        return
    table = Table(title=f"run {run_dir}")
    table.add_column("metric")
    table.add_column("value", justify="right")
    for key, value in summary.items():
        table.add_row(key, f"{value:.4f}" if isinstance(value, float) else str(value))
    Console().print(table)


@app.command()
def pretrain(
    out: Path = typer.Option(Path("pretrained-tiny"), "--out", "-o", help="Output model directory."),
    config: Optional[Path] = typer.Option(None, "--config", "-c", help="YAML config (its task and model sections)."),
    overrides: list[str] = typer.Option([], "--set", "-s", help="Override a field: section.field=value."),
    steps: int = typer.Option(275, help="Supervised steps (275 reproduces the shipped warm start)."),
    batch_size: int = typer.Option(128, help="Demonstrations per step."),
    lr: float = typer.Option(1e-3, help="Peak AdamW learning rate (one-cycle schedule)."),
    seed: int = typer.Option(0, help="Seed."),
    attempt_fraction: float = typer.Option(
        0.0, help="Share of rows that are target-blind attempts (right arithmetic, random choices) instead of solutions."
    ),
) -> None:
    """Warm-start the built-in tiny model on demonstrations of the synthetic task (the shipped `builtin` model).

    Uses the config's task and model sections, and train.threads."""
    from thermorl.config import load_config
    from thermorl.runtime.pretrain import pretrain as run_pretrain

    try:
        cfg = load_config(config, list(overrides))
        if out.exists() and any(out.iterdir()):
            fail(f"output directory {out} exists and is not empty")
        summary = run_pretrain(
            cfg.task, cfg.model, out, steps=steps, batch_size=batch_size, lr=lr, seed=seed, attempt_fraction=attempt_fraction,
            threads=cfg.train.threads, max_new_tokens=cfg.rollout.max_new_tokens,
            on_eval=lambda s, loss, acc: console.print(f"step {s:>5}  loss {loss:.4f}  held-out greedy acc {acc:.3f}"),
        )
    except ThermoRLError as err:
        fail(str(err))
    console.print(f"saved {out}  (held-out greedy accuracy {summary['eval_accuracy']:.3f})")


@app.command("eval")
def evaluate(
    checkpoint: Optional[Path] = typer.Option(
        None, "--checkpoint", help="A run directory, a checkpoint directory, or a model directory."
    ),
    k: int = typer.Option(8, help="Samples per problem for avg@k and pass@k."),
    problems: Optional[int] = typer.Option(
        None, help="Problems to score (default: all held-out / benchmark problems)."
    ),
    seed: int = typer.Option(0, help="Sampling seed."),
    model: Optional[str] = typer.Option(
        None, "--model",
        help="With --benchmarks: a model directory, .gguf file or LoRA adapter (instead of --checkpoint).",
    ),
    benchmarks: Optional[str] = typer.Option(
        None, "--benchmarks", help="Comma-separated math benchmarks or data files, e.g. math500,aime24,amc23 "
        "(shipped: math500, aime24, amc23, minerva, olympiadbench, gsm8k_test, gsm8k_train).",
    ),
    samples: Optional[int] = typer.Option(None, help="With --benchmarks: completions per problem, n >= k (default k)."),
    max_new_tokens: Optional[int] = typer.Option(None, help="With --benchmarks: generation budget (default 1024)."),
    batch_size: int = typer.Option(64, help="With --benchmarks: completions decoded together."),
    out: Optional[Path] = typer.Option(
        None, "--out", "-o",
        help="With --benchmarks: directory of eval.json / eval.md; benchmarks already in it are skipped.",
    ),
    overrides: list[str] = typer.Option([], "--set", "-s", help="Override a field, e.g. temperature.controller=fixed."),
) -> None:
    """Score a checkpoint on the held-out split (greedy accuracy, avg@k, pass@k), or with --benchmarks on math
    benchmarks (avg@k and unbiased pass@k with bootstrap 95% intervals, written to eval.json and eval.md)."""
    from thermorl import api

    if benchmarks is None and checkpoint is None:
        fail("--checkpoint is required (or --model with --benchmarks)")
    try:
        result = api.evaluate(
            checkpoint, k=k, problems=problems, seed=seed, overrides=overrides, benchmarks=benchmarks, model=model,
            samples=samples, max_new_tokens=max_new_tokens, batch_size=batch_size, out=out,
        )
    except ThermoRLError as err:
        fail(str(err))
    if benchmarks is None:  # the benchmark evaluation printed its table and wrote eval.json / eval.md
        print(json.dumps(result, indent=2))


@app.command()
def generate(
    checkpoint: Path = typer.Option(..., "--checkpoint", help="A run directory, a checkpoint directory, or a model directory."),
    prompt: str = typer.Option(..., "--prompt", help="Prompt text, in the task's format (e.g. '3,7,2>23:')."),
    show_temperatures: bool = typer.Option(
        False, "--show-temperatures", help="Print every token coloured by its temperature, with the value."
    ),
    samples: int = typer.Option(1, "--samples", min=1, help="Completions to sample."),
    seed: int = typer.Option(0, "--seed", help="Seed of token sampling and of the temperature policy."),
    overrides: list[str] = typer.Option([], "--set", "-s", help="Override a field, e.g. rollout.engine=vllm."),
) -> None:
    """Decode a prompt with the checkpoint's temperature controller (the learned head for introspective runs)."""
    from rich.text import Text

    from thermorl import api
    from thermorl.reports.interpret import colour_range, temperature_colour

    try:
        controller = api.checkpoint_config(checkpoint, overrides).temperature.controller
        generations = api.generate(checkpoint, prompt, samples=samples, seed=seed, overrides=overrides)
    except ThermoRLError as err:
        fail(str(err))
    console.print(f"controller {controller}, seed {seed}", highlight=False)
    out = Console(highlight=False, soft_wrap=True)
    low, high = colour_range([tau for g in generations for tau in g.temperatures])
    for i, generation in enumerate(generations):
        if not show_temperatures:
            out.print(generation.text, markup=False)
            continue
        line = Text(f"sample {i + 1}: ")
        for piece, tau in zip(generation.tokens, generation.temperatures):
            line.append(piece.replace("\n", "\\n"), style=f"black on {temperature_colour(tau, low, high)}")
            line.append(f"⟨{tau:.2f}⟩ ", style="dim")
        out.print(line)


def _resume_config(run_dir: Path, config: Optional[Path], out: Optional[Path]) -> Path:
    """The config of the run to resume; --config and --out would contradict it."""
    if config is not None or out is not None:
        raise ThermoRLError("--resume takes the run's own config.yaml and directory; drop --config/--out")
    if not (run_dir / "config.yaml").is_file():
        raise ThermoRLError(f"cannot resume {run_dir}: not a thermorl run directory (no config.yaml)")
    return run_dir / "config.yaml"


@app.command("config")
def show_config(
    plugins: list[str] = typer.Option([], "--plugin", help="Import this module or .py file first (repeatable)."),
) -> None:
    """List every config field with its default and help text (plug-ins' sections and names included)."""
    from thermorl.config import field_help, load_plugins

    try:
        load_plugins(plugins)
        rows = field_help()
        registered = {registry.key: ", ".join(registry) for registry in REGISTRIES}
    except ThermoRLError as err:
        fail(str(err))
    table = Table(title="thermorl configuration (override with --set name=value)")
    table.add_column("name")
    table.add_column("default")
    table.add_column("help")
    for name, help_text, default in rows:
        if name in registered:
            help_text = f"{help_text} Registered: {registered[name]}."
        # escaped: help texts and defaults hold brackets (pip extras, lists) that rich would read as markup
        table.add_row(name, rich.markup.escape(repr(default)), rich.markup.escape(help_text))
    Console(width=200).print(table)


@app.command()
def compare(
    controllers: str = typer.Option(
        "fixed:0.6,fixed:1.0,fixed:1.4,linear,ead,entropy,tampo,introspective",
        help="Comma-separated controllers (`thermorl config` lists them); fixed:T is a fixed temperature T, "
        "name[key=value,...] overrides that controller's section, other names use their config defaults.",
    ),
    seeds: int = typer.Option(5, min=1, help="Seeds per controller (0..N-1); the same seeds for every controller."),
    steps: int = typer.Option(
        80, min=1, help="GRPO steps of every run (equal budget; 80 keeps the default study within 30 minutes on 2 cores)."
    ),
    out: Path = typer.Option(Path("runs/compare"), "--out", "-o", help="Study directory (rerun to continue it)."),
    jobs: int = typer.Option(0, min=0, help="Runs at once, one CPU thread each (0 = number of CPU cores)."),
    config: Optional[Path] = typer.Option(None, "--config", "-c", help="YAML config shared by every run."),
    overrides: list[str] = typer.Option([], "--set", "-s", help="Override a field of every run (repeatable)."),
    doc: Optional[Path] = typer.Option(
        None, help="Also write the table and plots into this markdown file's compare:begin/end block."
    ),
    doc_block: Optional[str] = typer.Option(
        None, help="Write into the named block <!-- compare:NAME:begin/end --> of --doc instead (several per file)."
    ),
    aggregate_only: bool = typer.Option(
        False, help="Start no run: tabulate the runs finished so far (e.g. while the study runs elsewhere)."
    ),
) -> None:
    """Train every controller x seed at one budget; write a table with 95% intervals, compare.json and plots.

    Finished runs are skipped, interrupted ones resumed. Writes OUT/compare.md, compare.json, curves.png
    and final_accuracy.png; exits 1 if a run failed (its log is OUT/runs/<run>.log).
    """
    import os

    from rich.markup import escape

    from thermorl.config import load_config
    from thermorl.study import compare as study

    try:
        arms = study.parse_arms(controllers)
        for arm in arms:  # a bad config fails here, before any run starts
            load_config(config, [*arm.overrides, *overrides, f"train.steps={steps}"])
        if doc is not None:
            study.read_doc(doc, doc_block)
        study.check_study(out, steps, config, list(overrides))
    except ThermoRLError as err:
        fail(str(err))
    runs = study.plan_runs(out, arms, seeds)
    todo = sum(not r.done for r in runs)
    jobs = jobs or os.cpu_count() or 1
    console.print(f"{len(runs)} runs ({len(runs) - todo} already finished), {jobs} at a time, {steps} steps each")
    bar = Progress(TextColumn("[bold]compare"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                   TimeRemainingColumn(), console=console)

    def finished(run: "study.Run", code: int) -> None:
        if run.done:
            acc = json.loads((run.out / "summary.json").read_text())["final_eval_accuracy"]
            bar.console.print(f"{escape(run.arm.label):>14} seed {run.seed}: greedy acc {acc:.3f}", highlight=False)
        else:
            bar.console.print(f"[red]{escape(run.arm.label)} seed {run.seed} failed (exit {code}); log {run.out}.log")
        bar.advance(task)

    with bar:
        task = bar.add_task("runs", total=todo)
        failed = [] if aggregate_only else study.execute(runs, steps, jobs, config, list(overrides), finished)
    try:
        result = study.aggregate(out, arms, seeds)
        if doc is not None:
            study.update_doc(doc, out, "thermorl " + " ".join(sys.argv[1:]), doc_block)
    except ThermoRLError as err:
        fail(str(err))
    Console().print((out / "compare.md").read_text(), highlight=False, soft_wrap=True, markup=False)
    console.print(f"wrote {out / 'compare.md'}, {out / 'compare.json'}, {out / 'curves.png'}, {out / 'final_accuracy.png'}")
    if aggregate_only and result["missing_runs"]:
        console.print(f"{len(result['missing_runs'])} run(s) not finished yet (left out of the table)")
    elif failed or result["missing_runs"]:
        console.print(f"[bold red]error:[/] {len(failed)} run(s) failed; rerun the same command to retry them")
        raise typer.Exit(code=1)


def main() -> None:
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()
    try:
        app()
    except KeyboardInterrupt:
        console.print("interrupted")
        sys.exit(130)


if __name__ == "__main__":
    main()
