"""Learning-curve figure of a run (matplotlib, headless)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from thermorl.runtime.tracking import read_metrics  # noqa: E402

PANELS = [
    ("reward_mean", "training reward (mean of batch)"),
    ("eval_accuracy", "held-out greedy accuracy"),
    ("temperature_mean", "sampling temperature (token mean)"),
    ("entropy_mean", "token entropy (tempered)"),
]


def plot_curves(metrics_path: Path, out_path: Path, title: str = "") -> None:
    rows = read_metrics(metrics_path)
    fig, axes = plt.subplots(2, 2, figsize=(10, 7))
    for axis, (key, label) in zip(axes.flat, PANELS):
        points = [(r["step"], r[key]) for r in rows if r.get(key) is not None]
        if points:
            steps, values = zip(*points)
            axis.plot(steps, values, marker="o" if key.startswith("eval") else None, markersize=3)
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
