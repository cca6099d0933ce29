"""The public Python API: the names ``from thermorl import ...`` gives are listed here (kept stable), each has a
docstring, ``import thermorl`` stays cheap, the README's Python example runs, and the API reference builds."""

from __future__ import annotations

import inspect
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

import thermorl

ROOT = Path(__file__).resolve().parent.parent
PUBLIC = [  # adding a name is fine; removing or renaming one breaks users: change this list only deliberately
    "Config", "ConfigError", "ControllerEnv", "Generation", "InModelHead", "PerPosition", "PerRequest", "PluginError",
    "PolicyLoss", "Problem", "RolloutBatch",
    "RolloutEngine", "StepContext", "Task", "TemperatureActions", "TemperatureController", "ThermoRLError",
    "__version__", "compare", "doc", "evaluate", "generate", "load_config", "load_plugins", "make_config",
    "register_controller", "register_engine", "register_policy_loss", "register_reward", "register_task", "train",
]


@pytest.mark.fast
def test_the_public_names_are_the_listed_ones_and_each_has_a_docstring():
    assert sorted(thermorl.__all__) == sorted(PUBLIC)
    for name in PUBLIC:
        if name == "__version__":
            continue
        value = getattr(thermorl, name)
        assert inspect.getdoc(value), f"thermorl.{name} has no docstring"
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        thermorl.nope  # noqa: B018


@pytest.mark.fast
def test_make_config_takes_sections_as_keyword_arguments():
    config = thermorl.make_config(
        temperature={"controller": "ead", "ead": {"tau_max": 1.1}}, train={"steps": 7}, overrides=["train.seed=3"]
    )
    assert (config.temperature.controller, config.temperature.ead.tau_max) == ("ead", 1.1)
    assert (config.train.steps, config.train.seed) == (7, 3)
    derived = thermorl.make_config(config, train={"steps": 9})
    assert (derived.train.steps, derived.train.seed, derived.temperature.controller) == (9, 3, "ead")
    assert thermorl.load_config(None, ["train.steps=7", "train.seed=3", "temperature.controller=ead",
                                       "temperature.ead.tau_max=1.1"]) == config
    with pytest.raises(thermorl.ConfigError, match="rollout.group_size must be >= 2"):
        thermorl.make_config(rollout={"group_size": 1})


def test_import_thermorl_and_its_public_names_import_neither_vllm_nor_eagerly_torch(tmp_path):
    # a stand-in vllm package first on the path: importing it would succeed and show in sys.modules, whether or
    # not the real vLLM is installed in this venv
    (tmp_path / "vllm").mkdir()
    (tmp_path / "vllm" / "__init__.py").write_text("")
    names = ", ".join(n for n in PUBLIC if n != "__version__")
    code = (
        "import sys, thermorl\n"
        "assert 'torch' not in sys.modules, 'import thermorl imported torch'\n"
        f"from thermorl import {names}\n"
        "thermorl.make_config(train={'steps': 2})\n"
        "assert 'vllm' not in sys.modules, 'the public names or a config imported vllm'\n"
        "import vllm\n"
        "assert vllm.__file__.startswith(sys.argv[1]), vllm.__file__\n"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")])}
    result = subprocess.run([sys.executable, "-c", code, str(tmp_path)], capture_output=True, text=True, timeout=120,
                            env=env)
    assert result.returncode == 0, result.stderr


def _readme_example() -> str:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    section = readme.split("\n## Python\n", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```python\n(.*?)```", section, flags=re.S)
    assert len(blocks) == 1
    return blocks[0]


def test_the_readme_python_example_runs(tmp_path):
    script = tmp_path / "example.py"
    script.write_text(_readme_example(), encoding="utf-8")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run([sys.executable, str(script)], cwd=tmp_path, capture_output=True, text=True,
                            timeout=600, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    lines = result.stdout.splitlines()
    assert 0.0 <= float(lines[0]) <= 1.0 and 0.0 <= float(lines[1]) <= 1.0
    assert len(lines) == 4  # two samples
    assert (tmp_path / "runs" / "python-example" / "summary.json").is_file()
    half = tmp_path / "runs" / "python-half"
    assert '"controller": "half"' in (half / "summary.json").read_text()
    rows = [json.loads(line) for line in (half / "samples.jsonl").read_text().splitlines()]
    assert rows and {t for row in rows for t in row["temperatures"]} == {0.5}


def test_the_api_reference_builds_from_the_docstrings(tmp_path):
    pdoc = pytest.importorskip("pdoc", reason="pdoc is in the test extra")
    pdoc.render.configure(docformat="restructuredtext")
    pdoc.pdoc("thermorl", r"!thermorl\..*", output_directory=tmp_path)  # the package page only
    page = (tmp_path / "thermorl.html").read_text(encoding="utf-8")
    for name in PUBLIC:
        if name != "__version__":
            assert f'id="{name}"' in page, name
    assert "Train with GRPO and the configured temperature controller" in page


def test_compare_checks_every_arm_first_then_runs_the_study_and_returns_it(tmp_path):
    with pytest.raises(thermorl.ConfigError, match="rollout.group_size must be >= 2"):
        thermorl.compare("fixed:1.0", out=tmp_path / "bad", overrides=["rollout.group_size=1"])
    assert not (tmp_path / "bad").exists()
    tiny = ["model.path=builtin:random", "model.hidden_size=32", "model.num_layers=1", "model.num_heads=2",
            "task.eval_size=20", "train.eval_avg_problems=4", "train.eval_avg_k=2", "rollout.prompts_per_step=2",
            "rollout.group_size=2", "rollout.max_new_tokens=6"]
    result = thermorl.compare("fixed:0.8", seeds=2, steps=1, out=tmp_path / "study", jobs=2, overrides=tiny)
    assert set(result["arms"]) == {"fixed:0.8"} and result["missing_runs"] == []
    assert all(row["seeds"] == [0, 1] for row in result["arms"].values())
    assert (tmp_path / "study" / "compare.md").stat().st_size > 0


def test_evaluate_scores_a_model_on_a_benchmark_and_returns_the_results(tmp_path, tiny_policy):
    model = tmp_path / "model"
    tiny_policy.model.save_pretrained(model)
    tiny_policy.tokenizer.save_pretrained(model)
    with pytest.raises(thermorl.ThermoRLError, match="give exactly one of --checkpoint and --model"):
        thermorl.evaluate(benchmarks="amc23")
    results = thermorl.evaluate(model=str(model), benchmarks="amc23", k=1, samples=2, problems=2, max_new_tokens=4,
                                batch_size=8, out=tmp_path / "eval", overrides=["task.reward_workers=0"])
    row = results["benchmarks"]["amc23"]
    assert row["problems"] == 2 and (tmp_path / "eval" / "eval.json").is_file()
