"""Figures of the temperatures a run used (matplotlib, headless).

* ``temperature.png``: the token-mean temperature per GRPO step (+- one std), and the mean
  temperature at each completion position, early / middle / late in training (from the
  per-token ``temperatures`` of RUN/samples.jsonl) -- EAD's annealing or EDT's entropy
  response show up in the second panel.
* ``tampo_heatmap.png``: TAMPO's distribution pi(T_k) after every step, with the drawn T_s.
* ``plot_temperature_comparison``: the same two panels for several runs (one per controller).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from thermorl.config import TemperatureConfig  # noqa: E402
from thermorl.runtime.tracking import read_metrics  # noqa: E402


def read_samples(path: Path) -> list[dict[str, Any]]:
    """Rows of RUN/samples.jsonl (an empty list when the run logged no samples)."""
    if not path.is_file():
        return []
    with open(path, encoding="utf-8") as handle:
        return [json.loads(line) for line in handle if line.strip()]


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
    _plot_step_curve(by_step, read_metrics(run_dir / "metrics.jsonl"))
    by_step.set_title("temperature over training")
    _plot_profiles(by_position, read_samples(run_dir / "samples.jsonl"), phases)
    by_position.set_title("temperature along the completion")
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(out_path, dpi=100)
    plt.close(fig)


def plot_tampo_heatmap(metrics_path: Path, candidates: list[float], out_path: Path, title: str = "") -> None:
    """pi(T_k) after each step's outer update as a (candidate x step) heatmap, drawn T_s overlaid."""
    rows = [r for r in read_metrics(metrics_path) if r.get("tampo_distribution") is not None]
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
    rows = read_metrics(metrics_path)
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


def plot_temperature_comparison(run_dirs: list[Path], out_path: Path) -> None:
    """Temperature per step and per completion position of several runs, labelled by controller."""
    fig, (by_step, by_position) = plt.subplots(1, 2, figsize=(11, 4))
    for run_dir in run_dirs:
        summary_path = run_dir / "summary.json"
        name = json.loads(summary_path.read_text())["controller"] if summary_path.is_file() else run_dir.name
        _plot_step_curve(by_step, read_metrics(run_dir / "metrics.jsonl"), label=name)
        by_position.plot(position_profile(read_samples(run_dir / "samples.jsonl")), label=name)
    by_step.set_title("temperature over training")
    by_step.legend(fontsize=8)
    by_position.set_title("temperature along the completion (all logged samples)")
    by_position.set_xlabel("completion position t")
    by_position.set_ylabel("mean temperature")
    by_position.grid(alpha=0.3)
    by_position.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out_path, dpi=100)
    plt.close(fig)
