"""How far the default job's floats move when the CPU's arithmetic takes another code path.

The pinned-numbers tests (tests/test_architecture.py) rerun a fixed command and compare its metrics with a
fixture made on one machine. Another CPU runs the same code through other BLAS and vector kernels (MKL and
PyTorch's ATen pick them by instruction set), which reorders float sums: the floats move at ~1e-6, the
sampled tokens (and so every count, reward and length) do not. This script measures that drift here, as a
stand-in for other CPUs, by rerunning the pinned command under settings that force another code path:

- ``MKL_CBWR=COMPATIBLE`` / ``AVX2``: MKL's conditional numerical reproducibility, forced to the SSE2 or
  AVX2 kernels (an Intel Xeon without AVX-512, or any MKL dispatch other than this machine's);
- ``ATEN_CPU_CAPABILITY=avx2`` / ``default``: PyTorch's own vectorised kernels at AVX2, or scalar;
- ``train.threads=2``: two threads split reductions differently.

Each variant is compared, key by key, with a baseline run of the same command in the same process of this
script (same machine, same moment), and the largest relative and absolute difference per metric written to
``results_code_paths.json``. tests/test_architecture.py takes its tolerance from these numbers.

    python benchmarks/code_path_drift.py --steps 10 --out benchmarks/results_code_paths.json
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
from pathlib import Path

VARIANTS: dict[str, tuple[dict[str, str], list[str]]] = {
    "MKL_CBWR=COMPATIBLE": ({"MKL_CBWR": "COMPATIBLE"}, []),
    "MKL_CBWR=AVX2": ({"MKL_CBWR": "AVX2"}, []),
    "ATEN_CPU_CAPABILITY=avx2": ({"ATEN_CPU_CAPABILITY": "avx2"}, []),
    "ATEN_CPU_CAPABILITY=default": ({"ATEN_CPU_CAPABILITY": "default"}, []),
    "train.threads=2": ({}, ["--set", "train.threads=2"]),
}


def run_job(steps: int, out: Path, env: dict[str, str], extra: list[str]) -> list[dict]:
    """metrics.jsonl rows of ``thermorl train --steps STEPS --seed 3`` (plots and progress bar off)."""
    command = [sys.executable, "-m", "thermorl.cli", "train", "--steps", str(steps), "--seed", "3",
               "--set", "log.plot=false", "--set", "log.progress=false", "--out", str(out), *extra]
    full_env = {**os.environ, "OMP_NUM_THREADS": "1", **env}
    subprocess.run(command, check=True, capture_output=True, env=full_env)
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def drift(base: list[dict], other: list[dict]) -> dict[str, dict[str, float]]:
    """Per metric: the largest |a - b| / |a| and |a - b| over the steps (timings left out)."""
    result: dict[str, dict[str, float]] = {}
    for row_a, row_b in zip(base, other, strict=True):
        for key, a in row_a.items():
            b = row_b.get(key)
            if key.startswith("step_time") or not isinstance(a, (int, float)) or not isinstance(b, (int, float)):
                continue
            entry = result.setdefault(key, {"max_rel": 0.0, "max_abs": 0.0})
            diff = abs(a - b)
            entry["max_abs"] = max(entry["max_abs"], diff)
            entry["max_rel"] = max(entry["max_rel"], diff / abs(a) if a else (0.0 if diff == 0 else math.inf))
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--out", type=Path, default=Path(__file__).with_name("results_code_paths.json"))
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        base = run_job(args.steps, Path(tmp) / "base", {}, [])
        variants = {name: drift(base, run_job(args.steps, Path(tmp) / str(i), env, extra))
                    for i, (name, (env, extra)) in enumerate(VARIANTS.items())}
    keys = sorted(key for key in {key for row in base for key in row} - {"step"} if not key.startswith("step_time"))
    exact = [k for k in keys if all(v.get(k, {}).get("max_abs", 0.0) == 0.0 for v in variants.values())]
    worst = {k: max(v[k]["max_rel"] for v in variants.values() if k in v) for k in keys if k not in exact}
    report = {"command": f"thermorl train --steps {args.steps} --seed 3", "cpu": _cpu_name(),
              "exact_in_every_variant": exact, "worst_relative_drift": worst, "variants": variants}
    args.out.write_text(json.dumps(report, indent=1) + "\n")
    print(json.dumps({"exact_in_every_variant": exact, "worst_relative_drift": worst}, indent=1))


def _cpu_name() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return "unknown"


if __name__ == "__main__":
    main()
