"""Run-directory outputs: metrics.jsonl, TensorBoard events, sample completions."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any


class RunLogger:
    def __init__(self, run_dir: Path, tensorboard: bool) -> None:
        self.run_dir = run_dir
        self.metrics_file = open(run_dir / "metrics.jsonl", "a", encoding="utf-8")
        self.samples_file = open(run_dir / "samples.jsonl", "a", encoding="utf-8")
        self.writer = None
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(str(run_dir / "tensorboard"))

    def log(self, metrics: dict[str, Any]) -> None:
        """Append one step's metrics (a JSON object per line) and mirror scalars to TensorBoard."""
        self.metrics_file.write(json.dumps(metrics) + "\n")
        self.metrics_file.flush()
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


def read_metrics(path: Path) -> list[dict[str, Any]]:
    with open(path, encoding="utf-8") as handle:
        return [json.loads(line) for line in handle if line.strip()]
