"""Code from outside thermorl: plug-ins named in the config or installed as packages, and user reward modules.

The one place thermorl imports code it was not shipped with, and only code a user named:

- ``plugins: [my_pkg.module, path/to/file.py]`` in the config (``--plugin`` on the command line) imports
  each module before the config is typed, so the plug-ins it registers (``@CONTROLLERS.register(...)``)
  and their config sections are known to the config, ``--help`` and validation;
- an installed package's entry points, in the groups of :data:`ENTRY_POINT_GROUPS`
  (``thermorl.controllers``, ``thermorl.tasks``, ...), are loaded on a registry's first use: the entry
  point's name is the plug-in's name, and loading it (``module`` or ``module:object``) must register it;
- ``task.reward=module:function`` / ``file.py:function`` imports the module of a reward function.

A plug-in that fails to import raises :class:`PluginError`: one line naming it, exit 2 from the CLI.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.metadata
import importlib.util
import sys
from collections.abc import Iterable
from pathlib import Path
from types import ModuleType
from typing import Any

from thermorl.errors import ConfigError


class PluginError(ConfigError):
    """A plug-in (``--plugin`` / ``plugins`` / an installed entry point) that cannot be loaded; names it."""


def _one_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0]}" if text else type(err).__name__


def import_user_module(name_or_path: str) -> ModuleType:
    """Import the module ``name_or_path`` names: a dotted module name, or a ``.py`` file (loaded once per path,
    as module ``thermorl_user_<stem>_<hash of the path>``). Import errors propagate unchanged."""
    if not name_or_path.endswith(".py"):
        return importlib.import_module(name_or_path)
    path = Path(name_or_path).expanduser().resolve()
    if not path.is_file():
        raise FileNotFoundError(f"file {name_or_path} not found")
    module_name = f"thermorl_user_{path.stem}_{hashlib.sha1(str(path).encode()).hexdigest()[:8]}"
    if module_name in sys.modules:
        return sys.modules[module_name]
    module_spec = importlib.util.spec_from_file_location(module_name, path)
    module = importlib.util.module_from_spec(module_spec)
    sys.modules[module_name] = module  # dataclasses resolve their annotations through sys.modules
    try:
        module_spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[module_name]
        raise
    return module


def load_plugins(specs: Iterable[str]) -> None:
    """Import each plug-in module (``plugins`` / ``--plugin``: a module name or a ``.py`` file); importing it
    registers its controllers, tasks, engines or losses. A module already imported is not imported again."""
    for spec in specs:
        if not isinstance(spec, str) or not spec:
            raise ConfigError(f"plugins must be a list of module names or .py files, got {spec!r}")
        try:
            import_user_module(spec)
        except Exception as err:  # noqa: BLE001 - any failure of user code is the plug-in's, named here
            raise PluginError(f"plug-in {spec!r} (--plugin / plugins) failed to load: {_one_line(err)}") from None


ENTRY_POINT_GROUPS = {  # the registry's config field -> the entry-point group an installed package declares
    "temperature.controller": "thermorl.controllers",
    "task.name": "thermorl.tasks",
    "rollout.engine": "thermorl.engines",
    "algorithm.policy_loss": "thermorl.policy_losses",
    "algorithm.advantage": "thermorl.advantages",
    "algorithm.loss_aggregation": "thermorl.loss_aggregations",
    "task.reward": "thermorl.rewards",
}


def load_entry_points(registry: Any) -> None:
    """Load the installed plug-ins of ``registry``'s entry-point group; each must register its own name."""
    group = ENTRY_POINT_GROUPS.get(registry.key)
    if group is None:
        return
    for entry_point in importlib.metadata.entry_points(group=group):
        source = f"entry point {entry_point.name} = {entry_point.value} in {group}"
        if entry_point.dist is not None:
            source += f", package {entry_point.dist.name}"
        try:
            entry_point.load()
        except Exception as err:  # noqa: BLE001 - any failure of an installed plug-in is named here
            raise PluginError(f"plug-in {entry_point.name!r} ({source}) failed to load: {_one_line(err)}") from None
        if not registry.has(entry_point.name):
            raise PluginError(
                f"plug-in {entry_point.name!r} ({source}) loaded but did not register {registry.key} "
                f"{entry_point.name!r} (its module registers it, e.g. with @CONTROLLERS.register(name, Config))"
            )
