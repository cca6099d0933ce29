"""Run-directory outputs: metrics.jsonl, TensorBoard events, sample completions."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from thermorl.errors import ThermoRLError


class RunLogger:
    def __init__(self, run_dir: Path, tensorboard: bool, purge_step: int | None = None) -> None:
        """``purge_step``: a resumed run drops TensorBoard events from this step on (they are redone)."""
        self.run_dir = run_dir
        self.metrics_file = open(run_dir / "metrics.jsonl", "a", encoding="utf-8")
        self.samples_file = open(run_dir / "samples.jsonl", "a", encoding="utf-8")
        self.writer = None
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(str(run_dir / "tensorboard"), purge_step=purge_step)

    def log(self, metrics: dict[str, Any]) -> None:
        """Append one step's metrics (a JSON object per line) and mirror scalars to TensorBoard."""
        try:
            self.metrics_file.write(json.dumps(metrics) + "\n")
            self.metrics_file.flush()
        except OSError as err:
            raise ThermoRLError(f"cannot write {self.run_dir / 'metrics.jsonl'}: {err.strerror}") from None
        if self.writer is not None:
            for key, value in metrics.items():
                if key != "step" and isinstance(value, (int, float)) and math.isfinite(value):
                    self.writer.add_scalar(key, value, metrics["step"])

    def samples(self, step: int, rows: list[dict[str, Any]]) -> None:
        for row in rows:
            self.samples_file.write(json.dumps({"step": step, **row}) + "\n")
        self.samples_file.flush()

    def close(self) -> None:
        self.metrics_file.close()
        self.samples_file.close()
        if self.writer is not None:
            self.writer.close()


def truncate_jsonl(path: Path, last_step: int) -> None:
    """Keep the rows of ``path`` up to ``last_step`` (a resumed run rewrites the later ones).

    A torn last line (the process was killed mid-write) is dropped too. Rewritten atomically.
    """
    if not path.is_file():
        return
    kept = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(row, dict) and row.get("step", 0) <= last_step:
            kept.append(line + "\n")
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text("".join(kept), encoding="utf-8")
    tmp.replace(path)


def read_metrics(path: Path) -> list[dict[str, Any]]:
    with open(path, encoding="utf-8") as handle:
        return [json.loads(line) for line in handle if line.strip()]
