"""Building blocks of config sections: documented fields, plug-in sections and the range checks every
section uses (each error names the bad field, ``section.field``)."""

from __future__ import annotations

import dataclasses
from dataclasses import field
from typing import Any

from thermorl.config.registry import Registry
from thermorl.errors import ConfigError


def doc(help_text: str, default: Any = dataclasses.MISSING, **kwargs: Any) -> Any:
    """A dataclass field carrying its help text (shown by ``thermorl config --help``)."""
    if isinstance(default, (list, dict)):
        value = default
        return field(default_factory=lambda: type(value)(value), metadata={"help": help_text}, **kwargs)
    return field(default=default, metadata={"help": help_text}, **kwargs)


def plugin_sections(registry: Registry) -> Any:
    """A field holding one config section per plug-in of ``registry``, keyed by name.

    In YAML and ``--set`` the sections sit directly in the parent (``temperature.fixed.temperature``);
    the loader types each with the config dataclass its plug-in registered.
    """
    return field(default_factory=registry.default_sections, metadata={"plugins": registry})


def positive(obj: Any, *names: str, section: str) -> None:
    for name in names:
        value = getattr(obj, name)
        if value <= 0:
            raise ConfigError(f"{section}.{name} must be > 0, got {value}")


def temperatures(obj: Any, *names: str, section: str) -> None:
    for name in names:
        value = getattr(obj, name)
        if value <= 0:
            raise ConfigError(f"{section}.{name} must be a temperature > 0, got {value}")


def unit_interval(obj: Any, *names: str, section: str) -> None:
    for name in names:
        value = getattr(obj, name)
        if not 0 < value <= 1:
            raise ConfigError(f"{section}.{name} must be in (0, 1], got {value}")
