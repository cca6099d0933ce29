"""Where does the temperature policy run hot or cold? Traces, plots and an HTML page of a run.

Written at the end of training, for any controller:

* ``RUN/temperature_traces.jsonl``: one sampled completion of a held-out prompt per line,
  with per-token text, temperature, the model's own (untempered) entropy, token class and
  the controller's own actions (gate, z, ...);
* ``RUN/temperature_plots.png``: mean temperature vs position, temperature vs entropy,
  temperature by token class, and the temperature distribution over training (from
  ``RUN/samples.jsonl``);
* ``RUN/temperature_summary.json``: mean temperature per token class;
* ``RUN/temperatures.html``: the completions with each token coloured by its temperature.

Token classes come from the task (``Task.report_token_classes``): on the synthetic tasks digit,
operator (+ - * /), separator (, =), final answer (every token after the last '='), end (EOS),
other; on prose tasks (word_arithmetic, math) step start, connective (so, then, wait, ...),
number, operator, final answer (the last number written), end, other. The Introspective LLM
paper reports hot reasoning pivots and cold arithmetic / final answers; these outputs show what
a run actually learned.
"""

from __future__ import annotations

import html
import json
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from torch import Tensor  # noqa: E402

from thermorl.engines.base import RolloutEngine, completion_id_lists  # noqa: E402
from thermorl.engines.hf import stop_token_ids  # noqa: E402
from thermorl.models.policy import Policy  # noqa: E402
from thermorl.rewards.guard import RewardGuard  # noqa: E402
from thermorl.tasks.base import CLASSES, TEXT_CLASSES, Task  # noqa: E402
from thermorl.temperature.base import StepContext, TemperatureActions, TemperatureController  # noqa: E402
from thermorl.temperature.entropy import logits_entropy  # noqa: E402


class _EntropyProbe(TemperatureController):
    """Wraps a controller and keeps the untempered entropy of every step (no extra forward pass)."""

    def __init__(self, inner: TemperatureController) -> None:
        self.inner = inner
        self.steps: list[tuple[Tensor, Tensor]] = []  # (rows, entropy) of each decoding step

    def start(self, num_rows: int, training_step: int) -> None:
        self.inner.start(num_rows, training_step)
        self.steps = []

    def choose(self, ctx: StepContext) -> tuple[Tensor, TemperatureActions]:
        tau, actions = self.inner.choose(ctx)
        self.steps.append((ctx.rows, logits_entropy(ctx.logits)))
        return tau, actions

    def entropies(self, num_rows: int) -> Tensor:
        """(num_rows, steps) untempered entropy of every sampled token (0 after a row ended)."""
        table = torch.zeros(num_rows, len(self.steps))
        for t, (rows, entropy) in enumerate(self.steps):
            table[rows.cpu(), t] = entropy.float().cpu()
        return table


@torch.no_grad()
def temperature_traces(
    policy: Policy, engine: RolloutEngine, task: Task, controller: TemperatureController,
    generator: torch.Generator, problems: int = 32, samples: int = 2, training_step: int = 0,
    reward: RewardGuard | None = None,
) -> list[dict[str, Any]]:
    """Sample ``samples`` completions for each of the first ``problems`` held-out prompts, per token."""
    chosen = [p for p in task.eval_problems()[:problems] for _ in range(samples)]
    probe = _EntropyProbe(controller)
    group_ids = torch.arange(len(chosen)) // samples
    batch = engine.generate([p.prompt for p in chosen], probe, generator, group_ids=group_ids,
                            training_step=training_step)
    model_entropy = probe.entropies(len(chosen))
    stop_ids = set(stop_token_ids(policy))
    texts = engine.decode(batch)
    reward = reward or RewardGuard([task.default_reward()], timeout_s=10.0, fail_fast=False, workers=0)
    rewards = reward.score(chosen, texts, completion_id_lists(batch), training_step).values()
    traces = []
    for i, (problem, text) in enumerate(zip(chosen, texts)):
        length = int(batch.completion_mask[i].sum().item())
        ids = batch.completion_ids[i, :length].tolist()
        pieces = [policy.tokenizer.decode([token]) for token in ids]
        row = {
            "prompt": problem.prompt,
            "completion": text,
            "reward": rewards[i],
            "tokens": pieces,
            "temperatures": [round(t, 4) for t in batch.temperatures[i, :length].tolist()],
            "entropy": [round(h, 4) for h in model_entropy[i, :length].tolist()],
            "classes": task.report_token_classes(pieces, [token in stop_ids for token in ids]),
        }
        for name, values in batch.actions.present().items():
            row[name] = [round(float(v), 4) for v in values[i, :length].tolist()]
        traces.append(row)
    return traces


def class_means(traces: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    """Mean, std and count of the temperature of each token class that occurs."""
    by_class: dict[str, list[float]] = {}
    for row in traces:
        for cls, tau in zip(row["classes"], row["temperatures"]):
            by_class.setdefault(cls, []).append(tau)
    return {
        cls: {"mean": float(np.mean(by_class[cls])), "std": float(np.std(by_class[cls])), "count": len(by_class[cls])}
        for cls in (TEXT_CLASSES if set(by_class) - set(CLASSES) else CLASSES) if cls in by_class
    }


def training_percentiles(samples_path: Path) -> dict[int, list[float]]:
    """Step -> 5/25/50/75/95th percentiles of the logged sample temperatures."""
    per_step: dict[int, list[float]] = {}
    if samples_path.is_file():
        for line in samples_path.read_text(encoding="utf-8").splitlines():
            if line.strip():
                row = json.loads(line)
                per_step.setdefault(row["step"], []).extend(row.get("temperatures", []))
    return {step: list(np.percentile(v, [5, 25, 50, 75, 95])) for step, v in sorted(per_step.items()) if v}


def plot_temperatures(traces: list[dict[str, Any]], percentiles: dict[int, list[float]], out_path: Path) -> None:
    """The four panels of ``RUN/temperature_plots.png``."""
    fig, axes = plt.subplots(2, 2, figsize=(11, 8))
    length = max((len(r["temperatures"]) for r in traces), default=0)
    by_position = [[r["temperatures"][t] for r in traces if t < len(r["temperatures"])] for t in range(length)]
    means = np.array([np.mean(v) for v in by_position])
    spreads = np.array([np.std(v) for v in by_position])
    axis = axes[0, 0]
    axis.plot(range(length), means)
    axis.fill_between(range(length), means - spreads, means + spreads, alpha=0.25)
    axis.set(title="mean temperature vs position (+- std)", xlabel="completion token", ylabel="temperature")

    taus = [t for r in traces for t in r["temperatures"]]
    entropies = [h for r in traces for h in r["entropy"]]
    axes[0, 1].scatter(entropies, taus, s=6, alpha=0.4)
    axes[0, 1].set(title="temperature vs model entropy (untempered)", xlabel="entropy (nats)", ylabel="temperature")

    stats = class_means(traces)
    names = list(stats)
    axes[1, 0].bar(names, [stats[n]["mean"] for n in names], yerr=[stats[n]["std"] for n in names], capsize=3)
    axes[1, 0].set(title="temperature by token class (mean +- std)", ylabel="temperature")
    axes[1, 0].tick_params(axis="x", labelrotation=20)

    axis = axes[1, 1]
    if percentiles:
        steps = list(percentiles)
        p = np.array(list(percentiles.values()))
        axis.fill_between(steps, p[:, 0], p[:, 4], alpha=0.2, label="5-95%")
        axis.fill_between(steps, p[:, 1], p[:, 3], alpha=0.35, label="25-75%")
        axis.plot(steps, p[:, 2], label="median")
        axis.legend()
    axis.set(title="sampled temperatures over training", xlabel="GRPO step", ylabel="temperature")
    for axis in axes.flat:
        axis.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out_path, dpi=100)
    plt.close(fig)


def colour_range(temperatures: list[float]) -> tuple[float, float]:
    """(low, high) of the colour scale: the range of ``temperatures``, widened when it is a point."""
    low, high = min(temperatures, default=1.0), max(temperatures, default=1.0)
    return (low - 0.1, high + 0.1) if high - low < 1e-6 else (low, high)


def temperature_colour(tau: float, low: float, high: float) -> str:
    """Hex colour of ``tau`` on a blue (cold) to red (hot) scale over [low, high]."""
    return matplotlib.colors.to_hex(matplotlib.colormaps["coolwarm"]((tau - low) / (high - low)))


def render_html(traces: list[dict[str, Any]], title: str, image: str | None = None) -> str:
    """Completions with every token's background coloured by its temperature (blue cold, red hot)."""
    low, high = colour_range([t for r in traces for t in r["temperatures"]])

    def span(piece: str, tau: float, tip: str) -> str:
        background = temperature_colour(tau, low, high)
        return f'<span style="background:{background}" title="{html.escape(tip)}">{html.escape(piece)}</span>'

    scale = [low + (high - low) * k / 6 for k in range(7)]
    legend = " ".join(span(f"{tau:.2f}", tau, "temperature") for tau in scale)
    rows = []
    for r in traces:
        tokens = "".join(
            span(piece, tau, f"tau={tau:.3f}  H={entropy:.2f}  {cls}")
            for piece, tau, entropy, cls in zip(r["tokens"], r["temperatures"], r["entropy"], r["classes"])
        )
        prompt = html.escape(r["prompt"])
        rows.append(f"<tr><td>{prompt}</td><td class=tok>{tokens}</td><td>{r['reward']:.0f}</td></tr>")
    stats = "".join(
        f"<tr><td>{cls}</td><td>{s['mean']:.3f}</td><td>{s['std']:.3f}</td><td>{s['count']}</td></tr>"
        for cls, s in class_means(traces).items()
    )
    figure = f'<img src="{html.escape(image)}" width="900">' if image else ""
    return f"""<!doctype html><html><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>body{{font-family:sans-serif}} td{{padding:2px 8px}} .tok{{font-family:monospace;white-space:pre}}
span{{padding:1px 0}}</style></head><body><h2>{html.escape(title)}</h2>
<p>temperature scale: {legend} (hover a token for its temperature, entropy and class)</p>
<table border=1 cellspacing=0><tr><th>class</th><th>mean tau</th><th>std</th><th>tokens</th></tr>{stats}</table>
{figure}<table><tr><th>prompt</th><th>completion</th><th>reward</th></tr>{''.join(rows)}</table></body></html>"""


def write_temperature_report(
    policy: Policy, engine: RolloutEngine, task: Task, controller: TemperatureController, run_dir: Path,
    seed: int, training_step: int, title: str = "", reward: RewardGuard | None = None,
) -> dict[str, dict[str, float]]:
    """Write traces, plots, per-class summary and HTML into ``run_dir``; returns the per-class means.

    Sampled through ``engine``, so the run's clamp range and ``max_new_tokens`` apply."""
    generator = torch.Generator(device=policy.device).manual_seed(seed + 2)
    traces = temperature_traces(
        policy, engine, task, controller, generator, training_step=training_step, reward=reward
    )
    with open(run_dir / "temperature_traces.jsonl", "w", encoding="utf-8") as handle:
        handle.writelines(json.dumps(row) + "\n" for row in traces)
    plot_temperatures(traces, training_percentiles(run_dir / "samples.jsonl"), run_dir / "temperature_plots.png")
    summary = class_means(traces)
    (run_dir / "temperature_summary.json").write_text(json.dumps(summary, indent=2))
    page = render_html(traces, title or f"temperatures of {run_dir.name}", "temperature_plots.png")
    (run_dir / "temperatures.html").write_text(page, encoding="utf-8")
    return summary
