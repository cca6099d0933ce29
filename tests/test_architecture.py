"""The architecture holds: the default job's numbers do not move with a refactor."""

from __future__ import annotations

import json
from pathlib import Path

from conftest import run_cli

FIXTURES = Path(__file__).resolve().parent / "fixtures"


def test_default_job_is_bit_identical_to_the_code_before_the_refactor(tmp_path):
    """`thermorl train --steps 10 --seed 3` writes the metrics pinned from commit 151c26f (see the fixture's "how")."""
    pinned = json.loads((FIXTURES / "default_job_seed3_steps10.json").read_text())
    out = tmp_path / "run"
    result = run_cli(*pinned["command"], "--out", str(out), "--set", "log.plot=false", "--set", "log.progress=false")
    assert result.returncode == 0, result.stderr[-2000:]
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [row["step"] for row in rows] == [row["step"] for row in pinned["rows"]]
    for row, expected in zip(rows, pinned["rows"]):
        assert {key: row.get(key) for key in expected} == expected, f"step {expected['step']}"
