"""No code execution from files, data or model output: a scan of every module under src/.

The scan reads the syntax tree (comments, docstrings and data files cannot trip it) and fails on:
pickle-family imports, ``torch.load`` without ``weights_only=True``, ``numpy.load(allow_pickle=True)``,
``eval``/``exec``/``compile``/``__import__``, unsafe YAML loaders, ``trust_remote_code=True``,
``shell=True`` and ``os.system``/``os.popen``. Dynamic imports are allowed only in
``thermorl/config/plugins.py``, which imports the modules a user named (``plugins`` / ``--plugin``, the
module of ``task.reward=module:function``) and installed packages' declared entry points, and in
``thermorl/__init__.py``, which imports a public name's module from its fixed table (lazy imports).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parent.parent / "src" / "thermorl"
PICKLE_MODULES = {"pickle", "cPickle", "_pickle", "dill", "cloudpickle", "shelve", "marshal", "joblib"}
BUILTINS_THAT_RUN_CODE = {"eval", "exec", "compile", "__import__"}
UNSAFE_YAML = {"load", "unsafe_load", "full_load", "load_all", "unsafe_load_all", "full_load_all"}
DYNAMIC_IMPORTS = {"import_module", "exec_module", "spec_from_file_location", "run_path", "run_module"}
DYNAMIC_IMPORT_ALLOWED = {  # the only modules that may import by name, and why
    SRC / "config" / "plugins.py": "imports exactly the modules the user named and declared entry points",
    SRC / "__init__.py": "lazy public names: imports the modules of its own fixed table only",
}


def _keyword(call: ast.Call, name: str) -> ast.expr | None:
    return next((k.value for k in call.keywords if k.arg == name), None)


def _is_true(node: ast.expr | None) -> bool:
    return isinstance(node, ast.Constant) and node.value is True


def _dotted(node: ast.expr) -> str:
    if isinstance(node, ast.Attribute):
        return f"{_dotted(node.value)}.{node.attr}"
    return node.id if isinstance(node, ast.Name) else "?"


def findings(path: Path) -> list[str]:
    """Every forbidden construct in the module at ``path``, as 'file:line: what'."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    found = []

    def report(node: ast.AST, what: str) -> None:
        found.append(f"{path.name}:{node.lineno}: {what}")

    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] in PICKLE_MODULES:
                    report(node, f"import {alias.name}")
        elif isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] in PICKLE_MODULES:
            report(node, f"from {node.module} import ...")
        elif isinstance(node, ast.Call):
            func, name = node.func, _dotted(node.func)
            if isinstance(func, ast.Name) and func.id in BUILTINS_THAT_RUN_CODE:
                report(node, f"{func.id}(...)")
            if name == "torch.load" and not _is_true(_keyword(node, "weights_only")):
                report(node, "torch.load without weights_only=True")
            if name in ("np.load", "numpy.load") and _is_true(_keyword(node, "allow_pickle")):
                report(node, "numpy.load(allow_pickle=True)")
            if name.startswith("yaml.") and name.split(".", 1)[1] in UNSAFE_YAML:
                report(node, f"{name} (use yaml.safe_load)")
            if name in ("os.system", "os.popen") or _is_true(_keyword(node, "shell")):
                report(node, f"{name} / shell=True")
            if _is_true(_keyword(node, "trust_remote_code")):
                report(node, "trust_remote_code=True")
            if isinstance(func, ast.Attribute) and func.attr in DYNAMIC_IMPORTS and path not in DYNAMIC_IMPORT_ALLOWED:
                report(node, f"dynamic import {name} outside config/plugins.py and the package's lazy __init__")
    return found


def test_the_scan_catches_what_it_looks_for(tmp_path):
    probe = tmp_path / "probe.py"
    probe.write_text(
        "import pickle\nimport torch, yaml, os\n"
        "torch.load('x')\ntorch.load('x', weights_only=True)\neval('1')\nexec('x=1')\nyaml.load('a')\n"
        "os.system('ls')\nm = __import__('os')\nfrom_pretrained('x', trust_remote_code=True)\n"
        "importlib.import_module('x')\nmodel.eval()\n# eval( pickle in a comment\n"
    )
    found = findings(probe)
    kinds = "\n".join(found)
    assert len(found) == 9, kinds
    for expected in ["import pickle", "torch.load without", "eval(", "exec(", "yaml.load", "os.system",
                     "__import__(", "trust_remote_code", "dynamic import importlib.import_module"]:
        assert expected in kinds, expected
    assert findings(SRC / "config" / "loader.py") == []


@pytest.mark.parametrize("path", sorted(SRC.rglob("*.py")), ids=lambda p: str(p.relative_to(SRC)))
def test_source_has_no_code_execution_from_files_or_data(path):
    assert findings(path) == []


def test_custom_reward_is_imported_only_from_the_configured_spec():
    """load_reward_function is only ever called with a spec of the user's task.reward / task.rewards."""
    def calls_of(name: str) -> list[tuple[str, str]]:
        found = []
        for path in SRC.rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
                if isinstance(node, ast.Call) and _dotted(node.func).endswith(name):
                    found.append((path.relative_to(SRC).as_posix(), ast.unparse(node.args[0])))
        return found

    assert calls_of("load_reward_function") == [("rewards/functions.py", "spec")]  # NamedRewardFunction's own spec
    assert calls_of("NamedRewardFunction") == [("rewards/functions.py", "spec")]
    # import_user_module imports user code: only a plug-in spec, a reward spec's module, or the module that
    # registered a named reward (recorded when the main process looked it up)
    assert sorted(calls_of("import_user_module")) == [
        ("config/plugins.py", "spec"), ("rewards/functions.py", "module_name"), ("rewards/functions.py", "source")
    ]
    source = (SRC / "rewards" / "functions.py").read_text(encoding="utf-8")
    assert "specs = config.rewards or [config.reward]" in source and "for spec, weight in zip(specs, weights)" in source


def test_reward_spec_must_name_a_module_and_a_function():
    from thermorl.errors import RewardError
    from thermorl.rewards import load_reward_function

    for spec in ["os.system", "print", "os:system; rm -rf /", ":fn", "module:"]:
        with pytest.raises(RewardError):
            load_reward_function(spec)
