"""Figures of a run (matplotlib, headless).

* ``curves.png``: training reward, held-out accuracy (greedy and avg@k), temperature and entropy per step.
* ``temperature.png``: the token-mean temperature per GRPO step (+- one std), and the mean
  temperature at each completion position, early / middle / late in training (from the
  per-token ``temperatures`` of RUN/samples.jsonl) -- EAD's annealing or EDT's entropy
  response show up in the second panel.
* ``tampo_heatmap.png``: TAMPO's distribution pi(T_k) after every step, with the drawn T_s.
* a study's (``thermorl compare``) ``curves.png``, ``final_accuracy.png`` and ``dynamics.png``.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from thermorl.config import TemperatureConfig  # noqa: E402
from thermorl.runtime.tracking import read_jsonl  # noqa: E402
from thermorl.study.stats import mean_ci, moving_mean  # noqa: E402

PANELS = [
    ("reward_mean", "training reward (mean of batch)"),
    ("eval_accuracy", "held-out greedy accuracy"),
    ("temperature_mean", "sampling temperature (token mean)"),
    ("entropy_mean", "token entropy (tempered)"),
]


def plot_curves(metrics_path: Path, out_path: Path, title: str = "") -> None:
    rows = read_jsonl(metrics_path)
    fig, axes = plt.subplots(2, 2, figsize=(10, 7))
    for axis, (key, label) in zip(axes.flat, PANELS):
        points = [(r["step"], r[key]) for r in rows if r.get(key) is not None]
        if points:
            steps, values = zip(*points)
            axis.plot(steps, values, marker="o" if key.startswith("eval") else None, markersize=3)
            if max(values) - min(values) < 1e-3:  # a fixed temperature: float noise, not a 1e-7 axis
                axis.set_ylim(min(values) - 0.1, max(values) + 0.1)
        if key == "eval_accuracy":
            avg = [(r["step"], r["eval_avg_at_k"]) for r in rows if r.get("eval_avg_at_k") is not None]
            if avg:
                axis.plot(*zip(*avg), marker="s", markersize=3, label="avg@k (sampled)")
                axis.legend()
        axis.set_title(label)
        axis.set_xlabel("GRPO step")
        axis.grid(alpha=0.3)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(out_path, dpi=100)
    plt.close(fig)


def read_samples(path: Path) -> list[dict[str, Any]]:
    """Rows of RUN/samples.jsonl (an empty list when the run logged no samples)."""
    return read_jsonl(path) if path.is_file() else []


def position_profile(samples: list[dict[str, Any]]) -> np.ndarray:
    """Mean temperature at each completion position over the samples long enough to reach it."""
    length = max((len(s["temperatures"]) for s in samples), default=0)
    totals, counts = np.zeros(length), np.zeros(length)
    for sample in samples:
        temperatures = np.asarray(sample["temperatures"], dtype=float)
        totals[: len(temperatures)] += temperatures
        counts[: len(temperatures)] += 1
    return totals / np.maximum(counts, 1)


def _plot_step_curve(axis: plt.Axes, metrics: list[dict[str, Any]], label: str | None = None) -> None:
    rows = [r for r in metrics if r.get("temperature_mean") is not None]
    steps = np.array([r["step"] for r in rows])
    mean = np.array([r["temperature_mean"] for r in rows])
    std = np.array([r.get("temperature_std", 0.0) for r in rows])
    (line,) = axis.plot(steps, mean, label=label)
    axis.fill_between(steps, mean - std, mean + std, color=line.get_color(), alpha=0.2)
    axis.set_xlabel("GRPO step")
    axis.set_ylabel("temperature (token mean +- std)")
    axis.grid(alpha=0.3)


def _plot_profiles(axis: plt.Axes, samples: list[dict[str, Any]], phases: int) -> None:
    """Per-position profile of the samples split into ``phases`` consecutive ranges of steps."""
    steps = sorted({s["step"] for s in samples})
    if not steps:
        axis.text(0.5, 0.5, "no samples logged", ha="center", transform=axis.transAxes)
        return
    for part in np.array_split(np.array(steps), min(phases, len(steps))):
        chosen = [s for s in samples if part[0] <= s["step"] <= part[-1]]
        axis.plot(position_profile(chosen), label=f"steps {part[0]}-{part[-1]}")
    axis.set_xlabel("completion position t")
    axis.set_ylabel("mean temperature")
    axis.grid(alpha=0.3)
    axis.legend(fontsize=8)


def plot_temperature_usage(run_dir: Path, out_path: Path, title: str = "", phases: int = 3) -> None:
    """RUN/temperature.png: temperature per step and per completion position."""
    fig, (by_step, by_position) = plt.subplots(1, 2, figsize=(11, 4))
    _plot_step_curve(by_step, read_jsonl(run_dir / "metrics.jsonl"))
    by_step.set_title("temperature over training")
    _plot_profiles(by_position, read_samples(run_dir / "samples.jsonl"), phases)
    by_position.set_title("temperature along the completion")
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(out_path, dpi=100)
    plt.close(fig)


def plot_tampo_heatmap(metrics_path: Path, candidates: list[float], out_path: Path, title: str = "") -> None:
    """pi(T_k) after each step's outer update as a (candidate x step) heatmap, drawn T_s overlaid."""
    rows = [r for r in read_jsonl(metrics_path) if r.get("tampo_distribution") is not None]
    if not rows:
        return
    steps = [r["step"] for r in rows]
    distribution = np.array([r["tampo_distribution"] for r in rows]).T  # (K, steps)
    fig, axis = plt.subplots(figsize=(10, 4))
    image = axis.imshow(
        distribution, aspect="auto", origin="lower", cmap="viridis", interpolation="nearest",
        extent=(steps[0] - 0.5, steps[-1] + 0.5, -0.5, len(candidates) - 0.5),
    )
    fig.colorbar(image, ax=axis, label="pi(T_k) after the step's outer update")
    grid = np.asarray(candidates)
    drawn = [  # (step, row of the candidate nearest to each drawn T_s)
        (r["step"], int(np.abs(grid - t).argmin()))
        for r in rows
        for t in r.get("tampo_group_temperatures", [r["tampo_temperature"]])
    ]
    if drawn:
        axis.scatter(*zip(*drawn), s=10, c="white", edgecolors="black", linewidths=0.3, label="drawn T_s")
        axis.legend(loc="upper right", fontsize=8)
    axis.set_yticks(range(len(candidates)), [f"{t:g}" for t in candidates])
    axis.set_xlabel("GRPO step")
    axis.set_ylabel("candidate temperature T_k")
    axis.set_title(title or "TAMPO meta-policy")
    fig.tight_layout()
    fig.savefig(out_path, dpi=100)
    plt.close(fig)


def plot_tampo_tstar(metrics_path: Path, out_path: Path, title: str = "") -> None:
    """The likelihood-optimal temperature T* of the batch's positive- and negative-advantage trajectories
    per step (TAMPO's own analysis), beside the temperature the meta-policy drew."""
    rows = read_jsonl(metrics_path)
    fig, axis = plt.subplots(figsize=(9, 4))
    for key, label in (("tampo_tstar_positive", "T* of trajectories with A > 0"),
                       ("tampo_tstar_negative", "T* of trajectories with A < 0"),
                       ("tampo_temperature", "drawn T_s")):
        points = [(r["step"], r[key]) for r in rows if r.get(key) is not None]
        if points:
            axis.plot(*zip(*points), marker=".", linewidth=0.8, label=label)
    axis.set(xlabel="GRPO step", ylabel="temperature", title=title or "TAMPO: likelihood-optimal temperature T*")
    axis.grid(alpha=0.3)
    axis.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out_path, dpi=100)
    plt.close(fig)


def plot_run_temperatures(run_dir: Path, temperature: TemperatureConfig) -> None:
    """The end-of-run figures: RUN/temperature.png, plus RUN/tampo_heatmap.png and RUN/tampo_tstar.png for
    TAMPO runs."""
    plot_temperature_usage(run_dir, run_dir / "temperature.png", f"temperature used by '{temperature.controller}'")
    if temperature.controller == "tampo":
        plot_tampo_heatmap(run_dir / "metrics.jsonl", temperature.tampo.candidates, run_dir / "tampo_heatmap.png")
        plot_tampo_tstar(run_dir / "metrics.jsonl", run_dir / "tampo_tstar.png")


def plot_study(
    out: Path, labels: list[str], runs: list[list[Path]], seeds: int, result: dict, smooth: int = 10
) -> None:
    """A study's figures (``thermorl compare``), from each arm's finished run directories ``runs``:
    curves.png: training reward per step (moving mean over ``smooth`` steps), mean and 95% band over
    seeds; final_accuracy.png: final greedy accuracy per controller with its interval; dynamics.png."""
    fig, axis = plt.subplots(figsize=(9, 5.5))
    for label, run_dirs in zip(labels, runs):
        curves = []
        for run_dir in run_dirs:
            rewards = [row["reward_mean"] for row in read_jsonl(run_dir / "metrics.jsonl")
                       if row.get("reward_mean") is not None]
            curves.append(moving_mean(rewards, smooth))
        if not curves:
            continue
        length = min(map(len, curves))
        points = [mean_ci([c[i] for c in curves]) for i in range(length)]
        steps = range(1, length + 1)
        means = [m for m, _ in points]
        axis.plot(steps, means, label=label)
        if len(curves) > 1:
            axis.fill_between(steps, [m - h for m, h in points], [m + h for m, h in points], alpha=0.15)
    axis.set_xlabel("GRPO step")
    axis.set_ylabel(f"training reward ({smooth}-step moving mean)")
    axis.set_title(f"mean over {seeds} seeds, 95% band")
    axis.grid(alpha=0.3)
    axis.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "curves.png", dpi=100)
    plt.close(fig)

    plot_dynamics(out, labels, runs, seeds, smooth)
    plot_learned_temperatures(out, labels, runs)

    fig, axis = plt.subplots(figsize=(9, 4.5))
    labels = [label for label in labels if "final_eval_accuracy" in result["arms"][label]]
    means = [result["arms"][k]["final_eval_accuracy"]["mean"] for k in labels]
    halves = [result["arms"][k]["final_eval_accuracy"]["ci95"] for k in labels]
    axis.errorbar(range(len(labels)), means, yerr=[0 if math.isnan(h) else h for h in halves], fmt="o", capsize=4)
    for i, label in enumerate(labels):
        values = result["arms"][label]["final_eval_accuracy"]["values"]
        axis.scatter([i] * len(values), values, s=8, color="gray", alpha=0.6)
    axis.axhline(result["warm_start_accuracy"], color="black", linestyle="--", linewidth=1, label="warm start")
    axis.set_xticks(range(len(labels)), labels, rotation=30, ha="right")
    axis.set_ylabel("held-out greedy accuracy")
    axis.set_title(f"after {result['steps']} steps: mean and 95% interval over {seeds} seeds (dots: seeds)")
    axis.grid(alpha=0.3, axis="y")
    axis.legend()
    fig.tight_layout()
    fig.savefig(out / "final_accuracy.png", dpi=100)
    plt.close(fig)


DYNAMICS = (  # metrics.jsonl key, axis label: the signs of collapsing exploration
    ("temperature_mean", "mean sampling temperature"),
    ("zero_variance_groups", "groups with zero reward variance"),
    ("entropy_mean", "token entropy (sampled distribution)"),
)


def plot_dynamics(out: Path, labels: list[str], runs: list[list[Path]], seeds: int, smooth: int = 10) -> None:
    """dynamics.png: per arm, the mean over seeds of the sampling temperature, the fraction of groups with
    zero reward variance (no GRPO signal) and the token entropy, per step (moving mean over ``smooth``)."""
    fig, axes = plt.subplots(1, len(DYNAMICS), figsize=(16, 4.5))
    for label, run_dirs in zip(labels, runs):
        rows = [read_jsonl(run_dir / "metrics.jsonl") for run_dir in run_dirs]
        for axis, (key, _) in zip(axes, DYNAMICS):
            curves = [moving_mean([row[key] for row in run if row.get(key) is not None], smooth) for run in rows]
            curves = [c for c in curves if c]
            if curves:
                length = min(map(len, curves))
                axis.plot(range(1, length + 1), [sum(c[i] for c in curves) / len(curves) for i in range(length)],
                          label=label)
    for axis, (_, label) in zip(axes, DYNAMICS):
        axis.set(xlabel="GRPO step", ylabel=label)
        axis.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    fig.suptitle(f"mean over {seeds} seeds, {smooth}-step moving mean")
    fig.tight_layout()
    fig.savefig(out / "dynamics.png", dpi=100)
    plt.close(fig)


def class_temperature_curves(samples: list[dict], window: int = 25) -> dict[str, list[tuple[float, float]]]:
    """Token class -> [(window's middle step, mean temperature of that class's logged tokens)], from the
    ``classes`` and ``temperatures`` of RUN/samples.jsonl rows, in windows of ``window`` steps."""
    sums: dict[str, dict[int, list[float]]] = {}
    for row in samples:
        bucket = (row["step"] - 1) // window
        for cls, tau in zip(row.get("classes", []), row["temperatures"]):
            entry = sums.setdefault(cls, {}).setdefault(bucket, [0.0, 0.0])
            entry[0] += tau
            entry[1] += 1
    return {cls: [(b * window + (window + 1) / 2, total / count) for b, (total, count) in sorted(buckets.items())]
            for cls, buckets in sums.items()}


def plot_learned_temperatures(out: Path, labels: list[str], runs: list[list[Path]]) -> None:
    """learned_temperatures.png: for each arm whose temperature varies within a completion, the mean
    temperature of each token class over training (logged samples of every seed pooled); for TAMPO arms,
    the likelihood-optimal temperature T* of positive and negative trajectories per step (mean over seeds)."""
    panels = []
    for label, run_dirs in zip(labels, runs):
        if not run_dirs:
            continue
        metrics = [read_jsonl(run_dir / "metrics.jsonl") for run_dir in run_dirs]
        if any(row.get("tampo_tstar_positive") is not None for run in metrics for row in run):
            panels.append((label, "tstar", metrics))
        samples = [row for run_dir in run_dirs for row in read_samples(run_dir / "samples.jsonl")]
        if any(row.get("temperature_std", 0) > 1e-6 for run in metrics for row in run) and samples:
            panels.append((label, "classes", samples))
    if not panels:
        return
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.8), squeeze=False)
    for axis, (label, kind, data) in zip(axes[0], panels):
        if kind == "classes":
            for cls, points in class_temperature_curves(data).items():
                axis.plot(*zip(*points), marker=".", label=cls)
            axis.set_title(f"{label}: temperature by token class", fontsize=9)
        else:
            for key, name in (("tampo_tstar_positive", "T* of A > 0"), ("tampo_tstar_negative", "T* of A < 0")):
                curves = [moving_mean([row[key] for row in run if row.get(key) is not None], 10) for run in data]
                length = min(map(len, curves))
                axis.plot(range(1, length + 1), [sum(c[i] for c in curves) / len(curves) for i in range(length)],
                          label=name)
            axis.set_title(f"{label}: likelihood-optimal T*", fontsize=9)
        axis.set_xlabel("GRPO step")
        axis.grid(alpha=0.3)
        axis.legend(fontsize=7)
    axes[0][0].set_ylabel("temperature")
    fig.tight_layout()
    fig.savefig(out / "learned_temperatures.png", dpi=100)
    plt.close(fig)
