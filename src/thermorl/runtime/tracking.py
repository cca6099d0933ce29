"""Run-directory outputs: metrics.jsonl, TensorBoard events, sample completions, summary.json, trackers.

``RunSummary`` is the typed summary.json that the trainer writes and compare and the plots read;
``read_jsonl`` is the one reader of the run's JSON-lines files (metrics, samples, traces).
``metrics.jsonl`` is the record; ``log.report_to`` mirrors every step's scalars to experiment trackers
through accelerate's tracking API (``accelerate.tracking``: one ``GeneralTracker`` class per service,
started here, given the run's config once, then ``log(values, step)``, ``finish()``).
"""

from __future__ import annotations

import json
import math
import os
import shutil
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from thermorl.config import Config, dump_config
from thermorl.errors import ThermoRLError
from thermorl.runtime.runlock import LOCK_NAME, RunLock


class RunLogger:
    def __init__(
        self, run_dir: Path, tensorboard: bool, purge_step: int | None = None, trackers: Sequence[Any] = ()
    ) -> None:
        """``purge_step``: a resumed run drops TensorBoard events from this step on (they are redone);
        ``trackers``: started accelerate trackers (``build_trackers``), finished by ``close``."""
        self.run_dir = run_dir
        self.trackers = list(trackers)
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
        scalars = {
            key: value for key, value in metrics.items()
            if key != "step" and isinstance(value, (int, float)) and math.isfinite(value)
        }
        if self.writer is not None:
            for key, value in scalars.items():
                self.writer.add_scalar(key, value, metrics["step"])
        for tracker in self.trackers:
            tracker.log(scalars, step=metrics["step"])

    def samples(self, step: int, rows: list[dict[str, Any]]) -> None:
        for row in rows:
            self.samples_file.write(json.dumps({"step": step, **row}) + "\n")
        self.samples_file.flush()

    def close(self) -> None:
        self.metrics_file.close()
        self.samples_file.close()
        if self.writer is not None:
            self.writer.close()
        for tracker in self.trackers:
            tracker.finish()
        self.trackers = []


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


STEP_METRICS = {  # metrics.jsonl: the keys every trainer step (or evaluation) writes, read by plots and compare
    "step": "GRPO step (0: the evaluation before training)",
    "reward_mean": "mean reward of the step's completions",
    "reward_std": "standard deviation of those rewards",
    "zero_variance_groups": "fraction of prompt groups whose rewards are all equal (no GRPO signal)",
    "temperature_mean": "token-mean sampling temperature",
    "temperature_std": "token standard deviation of the sampling temperature",
    "entropy_mean": "token-mean entropy of the sampled (tempered) distributions",
    "completion_length": "mean completion length in tokens",
    "lr": "language-model learning rate",
    "pg_loss": "policy-gradient term of the token objective",
    "clip_fraction": "fraction of tokens whose ratio was clipped",
    "approx_kl": "k3 estimate of KL(pi_old || pi)",
    "grad_norm": "LM gradient norm before clipping",
    "head_grad_norm": "temperature-head gradient norm before clipping (controllers with a head)",
    "loss": "total loss (LM and head)",
    "lm_updates": "optimizer steps of the LM so far",
    "head_updates": "optimizer steps of the temperature head so far",
    "skipped_steps": "steps skipped for NaN/inf so far",
    "step_time_s": "wall time of the step",
    "step_time_rollout_s": "of which sampling and scoring the batch (rollout engine and reward functions)",
    "step_time_update_s": "of which advantages, pi_old, rollout correction, forward, backward and optimizer step(s)",
    "step_time_sync_s": "of which writing the new weights into the rollout engine (0 for hf)",
    "eval_accuracy": "held-out greedy accuracy (evaluation steps)",
    "eval_avg_at_k": "held-out avg@k at train.eval_temperature (evaluation steps)",
    "eval_pass_at_k": "held-out pass@k at train.eval_temperature (evaluation steps)",
}


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """The rows of a JSON-lines file (metrics.jsonl, samples.jsonl, temperature_traces.jsonl)."""
    with open(path, encoding="utf-8") as handle:
        return [json.loads(line) for line in handle if line.strip()]


@dataclass
class RunSummary:
    """RUN/summary.json: the headline numbers of a finished run."""

    controller: str
    seed: int
    steps: int
    initial_eval_accuracy: float  # greedy accuracy on the held-out split before training
    final_eval_accuracy: float
    initial_eval_avg_at_k: float  # avg@k at train.eval_temperature
    final_eval_avg_at_k: float
    final_eval_pass_at_k: float
    eval_temperature: float  # the one temperature every arm's avg@k / pass@k is sampled at
    lm_updates: int  # optimizer steps of the language model
    head_updates: int  # optimizer steps of the temperature head
    eval_problems: int
    skipped_steps: int
    train_time_s: float
    wall_time_s: float
    final_eval_own_avg_at_k: float | None = None  # at the controller's own temperatures, when it decodes with them
    final_eval_own_pass_at_k: float | None = None

    _ORDER = (  # summary.json's key order (the own-temperature columns follow eval_temperature)
        "controller", "seed", "steps", "initial_eval_accuracy", "final_eval_accuracy", "initial_eval_avg_at_k",
        "final_eval_avg_at_k", "final_eval_pass_at_k", "eval_temperature", "final_eval_own_avg_at_k",
        "final_eval_own_pass_at_k", "lm_updates", "head_updates", "eval_problems", "skipped_steps", "train_time_s",
        "wall_time_s",
    )

    def to_json(self) -> dict[str, Any]:
        values = asdict(self)
        return {key: values[key] for key in self._ORDER if values[key] is not None}

    def write(self, run_dir: Path) -> None:
        (run_dir / "summary.json").write_text(json.dumps(self.to_json(), indent=2))

    @classmethod
    def read(cls, run_dir: Path) -> "RunSummary":
        return cls(**json.loads((run_dir / "summary.json").read_text()))


def prepare_run_dir(out_dir: Path, config: Config) -> RunLock:
    """Create and lock the run directory; refuse to write into a non-empty one; leave nothing behind on
    failure. Returns the held lock (a concurrent run with the same --out gets a one-line error)."""
    if (out_dir / "config.yaml").is_file():
        raise ThermoRLError(f"output directory {out_dir} is an existing run (continue it with --resume {out_dir})")
    if out_dir.exists() and not out_dir.is_dir():
        raise ThermoRLError(f"output directory {out_dir} exists and is a file (choose another --out)")
    if out_dir.exists() and any(p.name != LOCK_NAME for p in out_dir.iterdir()):
        raise ThermoRLError(f"output directory {out_dir} exists and is not empty (choose another --out)")
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise ThermoRLError(f"cannot create output directory {out_dir}: {err.strerror}") from None
    lock = RunLock(out_dir).acquire()
    if (out_dir / "config.yaml").is_file():  # a run that took the directory between the check and the lock
        lock.release()
        raise ThermoRLError(f"output directory {out_dir} is an existing run (continue it with --resume {out_dir})")
    try:
        dump_config(config, out_dir / "config.yaml")
    except OSError as err:
        lock.release()
        shutil.rmtree(out_dir, ignore_errors=True)
        raise ThermoRLError(f"cannot write {out_dir / 'config.yaml'}: {err.strerror}") from None
    return lock


def release(lock: RunLock | None) -> None:
    """Release a run directory's lock, if one is held."""
    if lock is not None:
        lock.release()


def build_trackers(names: Sequence[str], project: str, run_dir: Path, config: dict[str, Any]) -> list[Any]:
    """Started accelerate trackers for ``log.report_to``, each given the run's config (flattened) once.

    Offline-safe: trackers that need a directory write under RUN/trackers, and wandb runs offline
    unless the user's WANDB_MODE says otherwise. A tracker whose package is missing is a ThermoRLError.
    """
    if not names:
        return []
    from accelerate.tracking import LOGGER_TYPE_TO_CLASS, filter_trackers

    logging_dir = run_dir / "trackers"
    available = {str(getattr(t, "value", t)) for t in filter_trackers(list(names), logging_dir)}
    missing = [name for name in names if name not in available]
    if missing:
        raise ThermoRLError(f"log.report_to: {', '.join(missing)} is not installed (pip install {' '.join(missing)})")
    trackers = []
    for name in dict.fromkeys(names):
        cls = LOGGER_TYPE_TO_CLASS[name]
        options: dict[str, Any] = {"logging_dir": str(logging_dir)} if cls.requires_logging_directory else {}
        if name == "wandb":
            options.update(mode=os.environ.get("WANDB_MODE", "offline"), dir=str(run_dir))
        tracker = cls(project, **options)
        tracker.start()
        tracker.store_init_configuration(_flat(config))
        trackers.append(tracker)
    return trackers


def _flat(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}``; lists as text (trackers take scalars only)."""
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            flat.update(_flat(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value if isinstance(value, (bool, int, float, str)) or value is None else str(value)
    return flat
