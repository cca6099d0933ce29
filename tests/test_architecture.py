"""The architecture holds: the default job's numbers do not move with a refactor, the package has no import
cycles, the trainer only wires, and the benchmarks use thermorl's public API."""

from __future__ import annotations

import ast
import json
from pathlib import Path

import pytest
from conftest import run_cli

FIXTURES = Path(__file__).resolve().parent / "fixtures"


def _rerun_pinned(fixture: str, out: Path, *extra: str) -> None:
    """Rerun the command a fixture was produced with (on commit 151c26f) and require its metrics, value for value."""
    pinned = json.loads((FIXTURES / fixture).read_text())
    result = run_cli(*pinned["command"], "--out", str(out), *extra)
    assert result.returncode == 0, result.stderr[-2000:]
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [row["step"] for row in rows] == [row["step"] for row in pinned["rows"]]
    for row, expected in zip(rows, pinned["rows"]):
        assert {key: row.get(key) for key in expected} == expected, f"step {expected['step']}"


def test_short_default_job_is_bit_identical_to_the_code_before_the_refactor(tmp_path):
    """The default job, 3 steps on a 100-problem held-out split: the metrics 151c26f wrote (see the fixture)."""
    _rerun_pinned("default_job_seed3_steps3_short.json", tmp_path / "run")


@pytest.mark.slow
def test_default_job_is_bit_identical_to_the_code_before_the_refactor(tmp_path):
    """`thermorl train --steps 10 --seed 3` writes the metrics pinned from commit 151c26f (see the fixture's "how");
    plots and the progress bar are off (they come after, or beside, what metrics.jsonl holds)."""
    _rerun_pinned("default_job_seed3_steps10.json", tmp_path / "run", "--set", "log.plot=false",
                  "--set", "log.progress=false")


SRC = Path(__file__).resolve().parent.parent / "src" / "thermorl"
BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"


def import_graph(package_dir: Path) -> dict[str, set[str]]:
    """module -> the package's modules it imports when imported (imports inside functions run later, on
    call, and are left out; ``if TYPE_CHECKING:`` imports count: a type-only cycle is still a cycle)."""
    names = {}
    for path in package_dir.rglob("*.py"):
        parts = path.relative_to(package_dir.parent).with_suffix("").parts
        names[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    graph = {}
    for name, path in names.items():
        found = set()
        for node in ast.parse(path.read_text(encoding="utf-8")).body:
            for item in node.body if isinstance(node, ast.If) else [node]:
                if isinstance(item, ast.Import):
                    found.update(alias.name for alias in item.names)
                elif isinstance(item, ast.ImportFrom) and item.module:
                    found.update(
                        f"{item.module}.{a.name}" if f"{item.module}.{a.name}" in names else item.module
                        for a in item.names
                    )
        graph[name] = {m for m in found if m in names and m != name}
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle of ``graph`` as a path (first module repeated at the end), or None."""
    state: dict[str, int] = {}  # 1 = on the current path, 2 = done

    def visit(name: str, path: list[str]) -> list[str] | None:
        state[name] = 1
        for child in sorted(graph[name]):
            if state.get(child) == 1:
                return [*path, name, child]
            if child not in state and (cycle := visit(child, [*path, name])):
                return cycle
        state[name] = 2
        return None

    for name in sorted(graph):
        if name not in state and (cycle := visit(name, [])):
            return cycle
    return None


def test_the_package_has_no_import_cycles():
    graph = import_graph(SRC)
    assert graph["thermorl.runtime.trainer"] >= {"thermorl.runtime.components", "thermorl.runtime.update"}
    assert find_cycle(graph) is None, " -> ".join(find_cycle(graph))


def test_the_cycle_check_sees_type_checking_imports(tmp_path):
    """The kind of cycle resume.py <-> trainer.py had: one side imports the other only for type hints."""
    package = tmp_path / "thermorl"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "trainer.py").write_text("from thermorl.resume import restore\n")
    (package / "resume.py").write_text(
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from thermorl.trainer import Components\n"
    )
    assert find_cycle(import_graph(package)) == ["thermorl.resume", "thermorl.trainer", "thermorl.resume"]


def test_the_trainer_only_wires():
    lines = (SRC / "runtime" / "trainer.py").read_text(encoding="utf-8").splitlines()
    assert len(lines) <= 250, len(lines)


def test_benchmarks_use_only_public_names_of_thermorl():
    private = []
    for path in sorted(BENCHMARKS.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("thermorl"):
                private += [f"{path.name}: {node.module}.{a.name}" for a in node.names if a.name.startswith("_")]
                private += [f"{path.name}: {node.module}" for part in node.module.split(".") if part.startswith("_")]
            if isinstance(node, ast.Attribute) and node.attr.startswith("_") and not node.attr.startswith("__"):
                if isinstance(node.value, ast.Name) and node.value.id in {"trainer", "thermorl", "ckpt", "study"}:
                    private.append(f"{path.name}: {node.value.id}.{node.attr}")
    assert private == []


def test_plots_and_compare_read_the_keys_the_trainer_writes():
    from dataclasses import fields

    from thermorl.reports.plots import DYNAMICS, PANELS
    from thermorl.runtime.tracking import STEP_METRICS, RunSummary
    from thermorl.study.compare import METRICS

    assert {key for key, _ in [*PANELS, *DYNAMICS]} <= set(STEP_METRICS)
    assert {key for key, _ in METRICS} <= {f.name for f in fields(RunSummary)}
    pinned = json.loads((FIXTURES / "default_job_seed3_steps10.json").read_text())
    written = {key for row in pinned["rows"] for key in row} | {"step_time_s"}
    assert set(STEP_METRICS) - written <= {"head_grad_norm", "lm_updates", "head_updates"}  # not in 151c26f's job
