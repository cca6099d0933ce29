"""Plug-in loading in one process: entry points found through a distribution's metadata on sys.path, a
registry that failed to load keeps failing, and plug-in files recorded by absolute path."""

from __future__ import annotations

import sys

import pytest

from thermorl import PluginError, load_config, load_plugins
from thermorl.config.registry import Registry

pytestmark = pytest.mark.fast


def _distribution(site, name: str, group: str, entry: str, module_source: str) -> None:
    info = site / f"{name}-0.1.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(f"[{group}]\n{entry}\n")
    (site / f"{name}.py").write_text(module_source)


@pytest.fixture
def site(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(tmp_path))
    yield tmp_path
    for name in [m for m in sys.modules if m.startswith("ep_")]:
        del sys.modules[name]


def test_a_registry_loads_its_groups_entry_points_on_first_use(site):
    registry = Registry("algorithm.loss_aggregation", lambda: None)  # a fresh registry: group thermorl.loss_aggregations
    source = "from tests_registry_under_test import registry\nregistry.register('sum')(sum)\n"
    _distribution(site, "ep_sum", "thermorl.loss_aggregations", "sum = ep_sum", source)
    sys.modules["tests_registry_under_test"] = type(sys)("tests_registry_under_test")
    sys.modules["tests_registry_under_test"].registry = registry
    try:
        assert "ep_sum" not in sys.modules  # nothing loads before the registry is used
        assert registry.names() == ["sum"] and registry["sum"].build is sum
    finally:
        del sys.modules["tests_registry_under_test"]


def test_an_entry_point_that_registers_nothing_or_raises_is_named_and_keeps_failing(site):
    _distribution(site, "ep_quiet", "thermorl.advantages", "rank = ep_quiet", "x = 1\n")
    registry = Registry("algorithm.advantage", lambda: None)
    with pytest.raises(PluginError, match=r"plug-in 'rank' \(entry point rank = ep_quiet in thermorl.advantages, "
                                          r"package ep_quiet\) loaded but did not register algorithm.advantage 'rank'"):
        registry.names()
    with pytest.raises(PluginError, match="plug-in 'rank'"):  # the same error on every later use
        "rank" in registry  # noqa: B015
    _distribution(site, "ep_bad", "thermorl.engines", "fast = ep_bad", "raise ValueError('no engine today')\n")
    with pytest.raises(PluginError, match=r"plug-in 'fast' .* failed to load: ValueError: no engine today"):
        Registry("rollout.engine", lambda: None).names()


def test_plugin_files_are_recorded_by_absolute_path_and_loaded_once(tmp_path, monkeypatch):
    plugin = tmp_path / "counting_plugin.py"
    plugin.write_text("import builtins\nbuiltins.thermorl_test_loads = getattr(builtins, 'thermorl_test_loads', 0) + 1\n")
    monkeypatch.chdir(tmp_path)
    import builtins

    try:
        config = load_config(None, ["plugins=[counting_plugin.py]"])
        assert config.plugins == [str(plugin.resolve())]
        load_plugins([str(plugin)])
        assert builtins.thermorl_test_loads == 1
    finally:
        del builtins.thermorl_test_loads
    with pytest.raises(PluginError, match="plug-in 'missing.py' .*failed to load: FileNotFoundError"):
        load_plugins(["missing.py"])
    with pytest.raises(PluginError, match="plug-in 'no_such_plugin_module' .*ModuleNotFoundError"):
        load_plugins(["no_such_plugin_module"])
