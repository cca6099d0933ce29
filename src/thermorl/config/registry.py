"""Plug-ins by name: a controller (or engine) registers itself together with its config dataclass.

The config tree, the list of names, ``--help``, ``thermorl config`` and ``thermorl compare``'s arms
all read these registries, so adding a plug-in is one file with a ``register`` decorator::

    @CONTROLLERS.register("mine", MineConfig)
    class MineController(TemperatureController): ...

after which ``--controller mine --set temperature.mine.x=...`` works. The built-in plug-ins register
when their package is first imported; a registry imports it on first use.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, MutableMapping
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Plugin:
    name: str
    config: type | None  # its config dataclass (the section ``<kind>.<name>``), or None when it has none
    build: Any  # the class (or factory) the runtime builds from that section


class Registry(MutableMapping[str, Plugin]):
    """Named plug-ins of one kind, in registration order (a mapping name -> :class:`Plugin`)."""

    def __init__(self, key: str, load_builtins: Callable[[], None]) -> None:
        self.key = key  # the config field that names a plug-in of this kind, e.g. temperature.controller
        self._plugins: dict[str, Plugin] = {}
        self._load_builtins = load_builtins
        self._loaded = False

    def register(self, name: str, config: type | None = None) -> Callable[[Any], Any]:
        """Decorator registering ``build`` (a class or factory) under ``name`` with its ``config`` dataclass."""

        def decorate(build: Any) -> Any:
            if name in self._plugins and self._plugins[name].build is not build:
                raise ValueError(f"{self.key} {name!r} is already registered by {self._plugins[name].build!r}")
            self._plugins[name] = Plugin(name, config, build)
            return build

        return decorate

    def _ensure_builtins(self) -> None:
        if not self._loaded:
            self._loaded = True
            self._load_builtins()

    def __getitem__(self, name: str) -> Plugin:
        self._ensure_builtins()
        return self._plugins[name]

    def __setitem__(self, name: str, plugin: Plugin) -> None:
        self._ensure_builtins()
        self._plugins[name] = plugin

    def __delitem__(self, name: str) -> None:
        self._ensure_builtins()
        del self._plugins[name]

    def __iter__(self) -> Iterator[str]:
        self._ensure_builtins()
        return iter(list(self._plugins))

    def __len__(self) -> int:
        self._ensure_builtins()
        return len(self._plugins)

    def names(self) -> list[str]:
        return list(self)

    def default_sections(self) -> dict[str, Any]:
        """A default-valued config section per plug-in that has one (the config tree's defaults)."""
        return {name: plugin.config() for name, plugin in self.items() if plugin.config is not None}


def _builtin_controllers() -> None:
    import thermorl.temperature  # noqa: F401  (each controller module registers itself on import)


CONTROLLERS = Registry("temperature.controller", _builtin_controllers)


def _builtin_tasks() -> None:
    import thermorl.tasks  # noqa: F401  (each task module registers itself on import)


TASKS = Registry("task.name", _builtin_tasks)


def _builtin_objective_parts() -> None:
    import thermorl.algorithms.objective  # noqa: F401  (registers the advantage estimators and aggregations)


ADVANTAGES = Registry("algorithm.advantage", _builtin_objective_parts)
AGGREGATIONS = Registry("algorithm.loss_aggregation", _builtin_objective_parts)


def _builtin_policy_losses() -> None:
    import thermorl.algorithms.policy_loss  # noqa: F401  (registers clip, gspo, cispo)


POLICY_LOSSES = Registry("algorithm.policy_loss", _builtin_policy_losses)


def _builtin_engines() -> None:
    import thermorl.engines  # noqa: F401  (each engine module registers itself on import; vllm is imported lazily)


ENGINES = Registry("rollout.engine", _builtin_engines)

REGISTRIES = (CONTROLLERS, TASKS, ENGINES, ADVANTAGES, POLICY_LOSSES, AGGREGATIONS)  # every kind of plug-in
