"""Reports of a run: training curves, temperature plots, the per-token temperature report.

``write_run_reports`` writes them all at the end of training (``log.plot``).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from thermorl.config import Config
    from thermorl.engines import RolloutEngine
    from thermorl.models.policy import Policy
    from thermorl.tasks import Task
    from thermorl.temperature import TemperatureController


def write_run_reports(
    policy: Policy, engine: RolloutEngine, task: Task, controller: TemperatureController, run_dir: Path, config: Config,
    reward: Any = None,
) -> None:
    """RUN/curves.png, RUN/temperature.png (+ tampo.png) and the temperature report (traces, plots, HTML)."""
    from thermorl.reports.interpret import write_temperature_report
    from thermorl.reports.plots import plot_curves, plot_run_temperatures

    title = f"{config.temperature.controller}, seed {config.train.seed}"
    plot_curves(run_dir / "metrics.jsonl", run_dir / "curves.png", title)
    plot_run_temperatures(run_dir, config.temperature)
    write_temperature_report(
        policy, engine, task, controller, run_dir, config.train.seed, config.train.steps, title, reward
    )
