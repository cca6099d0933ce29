import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parent.parent
torch.set_num_threads(1)  # extra threads spin-wait on busy shared cores


def run_cli(*args: str, timeout: float = 1800) -> subprocess.CompletedProcess:
    """Run the real `thermorl` entry point in a subprocess (``timeout``: a guard for a hung run, generous
    because a shared, loaded machine can be 30x slower than an idle one)."""
    return subprocess.run(
        [sys.executable, "-m", "thermorl.cli", *args], capture_output=True, text=True, timeout=timeout, cwd=REPO
    )


@pytest.fixture(scope="session")
def tiny_policy():
    from thermorl.config import ModelConfig
    from thermorl.models import load_policy

    return load_policy(ModelConfig(path="builtin:random"), seed=0)
