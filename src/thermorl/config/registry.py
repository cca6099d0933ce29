"""Plug-ins by name: a controller (or engine) registers itself together with its config dataclass.

The config tree, the list of names, ``--help``, ``thermorl config`` and ``thermorl compare``'s arms
all read these registries, so adding a plug-in is one file with a ``register`` decorator::

    @CONTROLLERS.register("mine", MineConfig)
    class MineController(TemperatureController): ...

after which ``--controller mine --set temperature.mine.x=...`` works. The built-in plug-ins register
when their package is first imported; a registry imports it on first use, then loads the installed
packages' entry points of its group (``thermorl.controllers``, ...; see ``thermorl.config.plugins``).
A plug-in that fails to load raises ``PluginError`` on every use of its registry.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, MutableMapping
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Plugin:
    """A registered plug-in: its name, its config dataclass and what the runtime builds from it."""

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
        self._error: Exception | None = None  # a plug-in of this kind that failed to load

    def register(self, name: str, config: type | None = None) -> Callable[[Any], Any]:
        """Decorator registering ``build`` (a class or factory) under ``name`` with its ``config`` dataclass."""

        def decorate(build: Any) -> Any:
            if name in self._plugins and self._plugins[name].build is not build:
                raise ValueError(f"{self.key} {name!r} is already registered by {self._plugins[name].build!r}")
            self._plugins[name] = Plugin(name, config, build)
            return build

        return decorate

    def _ensure_builtins(self) -> None:
        if self._error is not None:
            raise self._error
        if not self._loaded:
            self._loaded = True
            self._load_builtins()
            from thermorl.config.plugins import PluginError, load_entry_points

            try:
                load_entry_points(self)
            except PluginError as err:
                self._error = err
                raise

    def has(self, name: str) -> bool:
        """Whether ``name`` is registered now (loads nothing)."""
        return name in self._plugins

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
        """The registered names, in registration order (built-ins first)."""
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

REWARDS = Registry("task.reward", lambda: None)  # reward functions by name (no built-ins: 'default' is the task's)

REGISTRIES = (CONTROLLERS, TASKS, ENGINES, ADVANTAGES, POLICY_LOSSES, AGGREGATIONS, REWARDS)  # every kind of plug-in


def register_controller(name: str, config: type | None = None) -> Callable[[Any], Any]:
    """Class decorator: a temperature controller (a ``TemperatureController`` subclass built as
    ``cls(config_section, env)``) selectable as ``temperature.controller=name``, its ``config`` dataclass the
    section ``temperature.<name>``. Installed packages declare it in the ``thermorl.controllers`` entry points."""
    return CONTROLLERS.register(name, config)


def register_task(name: str, config: type | None = None) -> Callable[[Any], Any]:
    """Class decorator: a task (a ``Task`` subclass built by its classmethod ``from_config(task_config)``; see
    the built-ins in ``thermorl.tasks``) selectable as ``task.name=name``. Entry-point group ``thermorl.tasks``."""
    return TASKS.register(name, config)


def register_engine(name: str, config: type | None = None) -> Callable[[Any], Any]:
    """Decorator: a rollout engine (built as ``build(policy, rollout_config, controller)``) selectable as
    ``rollout.engine=name``, its ``config`` dataclass the section ``rollout.<name>``. Group ``thermorl.engines``."""
    return ENGINES.register(name, config)


def register_policy_loss(name: str) -> Callable[[Any], Any]:
    """Decorator: a policy loss with the signature of ``thermorl.algorithms.policy_loss.PolicyLoss`` selectable as
    ``algorithm.policy_loss=name``. Group ``thermorl.policy_losses``."""
    return POLICY_LOSSES.register(name)


def register_reward(name: str) -> Callable[[Any], Any]:
    """Decorator: a reward function with TRL's signature ``fn(prompts, completions, **columns) -> list[float]``
    selectable as ``task.reward=name`` (or in ``task.rewards``). Reward workers (``task.reward_workers`` > 0)
    import its module again, so define it in an importable module or a plug-in file, not in ``__main__``.
    Group ``thermorl.rewards``."""
    return REWARDS.register(name)
