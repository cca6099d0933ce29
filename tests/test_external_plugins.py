"""Plug-ins from outside the repository reach the CLI: an installed package's entry point, a ``--plugin``
file, and a plug-in that fails to load (one line naming it, exit 2, no run directory).

The package is ``examples/plugin-package`` (a sawtooth temperature controller), installed with pip into a
temporary directory put on ``PYTHONPATH`` (its ``.dist-info`` is what Python's entry-point discovery reads);
each CLI run is a fresh ``python -m thermorl.cli`` process, as a user's would be.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "plugin-package"
TINY = [
    "model.path=builtin:random", "model.hidden_size=32", "model.num_layers=1", "model.num_heads=2",
    "task.eval_size=4", "train.eval_avg_problems=2", "train.eval_avg_k=2", "train.threads=1",
    "rollout.prompts_per_step=2", "rollout.group_size=2", "rollout.max_new_tokens=6", "log.progress=false",
    "log.tensorboard=false", "log.plot=false", "task.reward_workers=0",
]
SAWTOOTH = {0.7, 0.9, 1.1, 1.3}  # low 0.7, high 1.3, period 4: tau_t = 0.7 + 0.6 * (t mod 4) / 3


def _cli(out: Path, *args: str, site: Path | None = None) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    if site is not None:
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(site), env.get("PYTHONPATH", "")]))
    sets = [arg for item in TINY for arg in ("--set", item)]
    command = [sys.executable, "-m", "thermorl.cli", "train", "--steps", "2", "--out", str(out), *sets, *args]
    return subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)


def _sampled_temperatures(run: Path) -> set[float]:
    rows = [json.loads(line) for line in (run / "samples.jsonl").read_text().splitlines()]
    return {round(t, 4) for row in rows for t in row["temperatures"]}


def _error_lines(result: subprocess.CompletedProcess) -> list[str]:
    return [line for line in result.stderr.splitlines() if line.strip()]


def test_an_installed_package_controller_trains_through_the_cli(tmp_path):
    package, site = tmp_path / "package", tmp_path / "site"
    shutil.copytree(EXAMPLE, package)  # pip builds in the source tree: keep the repository's copy clean
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation", "--target", str(site),
         str(package)], check=True, capture_output=True, timeout=300,
    )
    assert list(site.glob("thermorl_sawtooth-*.dist-info/entry_points.txt"))
    run = tmp_path / "run"
    result = _cli(run, "--controller", "sawtooth", site=site)
    assert result.returncode == 0, result.stderr
    metrics = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in metrics] == [0, 1, 2]
    assert json.loads((run / "summary.json").read_text())["controller"] == "sawtooth"
    assert _sampled_temperatures(run) <= SAWTOOTH and len(_sampled_temperatures(run)) >= 3
    assert yaml.safe_load((run / "config.yaml").read_text())["temperature"]["sawtooth"]["period"] == 4
    # without the package on the path the name is unknown: the entry point, not anything in thermorl, found it
    missing = _cli(tmp_path / "missing", "--controller", "sawtooth")
    assert missing.returncode == 2 and "temperature.controller must be one of" in missing.stderr


def test_a_plugin_file_trains_through_the_cli_and_is_recorded_in_the_run_config(tmp_path):
    plugin = tmp_path / "sawtooth_plugin.py"
    shutil.copy(EXAMPLE / "src" / "thermorl_sawtooth" / "__init__.py", plugin)
    run = tmp_path / "run"
    result = _cli(run, "--plugin", str(plugin), "--controller", "sawtooth", "--set", "temperature.sawtooth.period=2")
    assert result.returncode == 0, result.stderr
    assert _sampled_temperatures(run) == {0.7, 1.3}
    assert yaml.safe_load((run / "config.yaml").read_text())["plugins"] == [str(plugin.resolve())]


def test_a_plugin_that_raises_on_import_exits_2_with_one_line_naming_it(tmp_path):
    broken = tmp_path / "broken_plugin.py"
    broken.write_text("raise RuntimeError('the plug-in is broken')\n")
    run = tmp_path / "run"
    result = _cli(run, "--plugin", str(broken))
    assert result.returncode == 2
    lines = _error_lines(result)
    assert len(lines) == 1 and str(broken) in lines[0] and "RuntimeError: the plug-in is broken" in lines[0], lines
    assert not run.exists()


def test_an_installed_entry_point_that_raises_exits_2_with_one_line_naming_it(tmp_path):
    site = tmp_path / "site"  # a distribution as pip lays it out: the module and its .dist-info
    (site / "broken_tasks-0.1.dist-info").mkdir(parents=True)
    (site / "broken_tasks-0.1.dist-info" / "METADATA").write_text("Metadata-Version: 2.1\nName: broken-tasks\nVersion: 0.1\n")
    (site / "broken_tasks-0.1.dist-info" / "entry_points.txt").write_text("[thermorl.tasks]\nriddles = broken_tasks\n")
    (site / "broken_tasks.py").write_text("import this_module_does_not_exist\n")
    run = tmp_path / "run"
    result = _cli(run, site=site)  # the default job: the task registry loads every installed task plug-in
    assert result.returncode == 2
    lines = _error_lines(result)
    assert len(lines) == 1, lines
    assert "plug-in 'riddles'" in lines[0] and "thermorl.tasks" in lines[0] and "broken-tasks" in lines[0]
    assert "ModuleNotFoundError" in lines[0]
    assert not run.exists()
