"""The YAML / type engine behind the config: read a file and dotted overrides, build typed dataclasses.

Generic over dataclasses: it knows nothing of thermorl's sections (those live in ``schema.py``).
Unknown keys and wrong types raise :class:`ConfigError` whose message names the offending field.
"""

from __future__ import annotations

import copy
import dataclasses
import types
import typing
from pathlib import Path
from typing import Any, Literal

import yaml

from thermorl.config.rollout_correction import MOVED
from thermorl.errors import ConfigError


def read_raw(path: str | Path | None, overrides: list[str] | tuple[str, ...]) -> dict[str, Any]:
    """The nested dict of an optional YAML file with ``a.b=value`` overrides applied (not yet typed)."""
    raw: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            raise ConfigError(f"config file not found: {path}") from None
        except (OSError, UnicodeDecodeError) as err:
            raise ConfigError(f"cannot read config file {path}: {err}") from None
        try:
            raw = yaml.safe_load(text) or {}
        except yaml.YAMLError as err:
            raise ConfigError(f"config file {path} is not valid YAML: {str(err).splitlines()[0]}") from None
        if not isinstance(raw, dict):
            raise ConfigError(f"config file {path} must hold a mapping of sections, got {type(raw).__name__}")
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"override {item!r} must look like section.field=value")
        try:
            parsed = yaml.safe_load(value) if value else ""
        except yaml.YAMLError:
            parsed = value
        _set_dotted(raw, key.strip(), parsed)
    return raw


def from_dict(cls: type, data: dict[str, Any], prefix: str = "") -> Any:
    """Instantiate dataclass ``cls`` from a nested dict, type-checking every field.

    A field made with ``plugin_sections(registry)`` takes the keys that name a registered plug-in,
    each typed with that plug-in's config dataclass (unnamed ones keep their defaults).
    """
    if not isinstance(data, dict):
        raise ConfigError(f"{prefix.rstrip('.') or 'config'} must be a mapping, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    plugins = next((f for f in fields.values() if "plugins" in f.metadata), None)
    known = [name for name in fields if plugins is None or name != plugins.name]
    registry = plugins.metadata["plugins"] if plugins is not None else None
    kwargs: dict[str, Any] = {}
    sections: dict[str, Any] = {}
    for key, value in data.items():
        if key in known:
            kwargs[key] = _coerce(hints[key], value, f"{prefix}{key}")
        elif registry is not None and key in registry and registry[key].config is not None:
            sections[key] = from_dict(registry[key].config, value if value is not None else {}, f"{prefix}{key}.")
        elif f"{prefix}{key}" in MOVED:
            raise ConfigError(f"{prefix}{key} was replaced by {MOVED[f'{prefix}{key}']}")
        else:
            names = sorted(known) + (sorted(n for n, p in registry.items() if p.config is not None) if registry else [])
            shown = key if str(key).isprintable() else repr(key)  # the message stays one line
            raise ConfigError(f"unknown config key {prefix}{shown} (known: {', '.join(names)})")
    if registry is not None:
        kwargs[plugins.name] = {**registry.default_sections(), **sections}
    return cls(**kwargs)


def to_dict(config: Any) -> dict[str, Any]:
    """The nested dict of a config (plug-in sections inline, as in YAML)."""
    out: dict[str, Any] = {}
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        if "plugins" in f.metadata:
            out.update({name: to_dict(section) for name, section in value.items()})
        elif dataclasses.is_dataclass(value):
            out[f.name] = to_dict(value)
        else:
            out[f.name] = copy.deepcopy(value)
    return out


def dump_config(config: Any, path: str | Path) -> None:
    Path(path).write_text(yaml.safe_dump(to_dict(config), sort_keys=False), encoding="utf-8")


def field_help(cls: type, prefix: str = "") -> list[tuple[str, str, Any]]:
    """(dotted name, help, default) for every leaf field: the source of ``thermorl config``."""
    rows = []
    instance = cls()
    for f in dataclasses.fields(cls):
        value = getattr(instance, f.name)
        if "plugins" in f.metadata:
            for name, section in value.items():
                rows.extend(field_help(type(section), f"{prefix}{name}."))
        elif dataclasses.is_dataclass(value):
            rows.extend(field_help(type(value), f"{prefix}{f.name}."))
        else:
            rows.append((f"{prefix}{f.name}", f.metadata.get("help", ""), value))
    return rows


def _coerce(hint: Any, value: Any, name: str) -> Any:
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if dataclasses.is_dataclass(hint):
        return from_dict(hint, value if value is not None else {}, f"{name}.")
    if origin is typing.Union or origin is types.UnionType:
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _coerce(inner[0], value, name)
    if origin is Literal:
        if value not in args:
            raise ConfigError(f"{name} must be one of {', '.join(map(repr, args))}, got {value!r}")
        return value
    if origin is dict:  # a mapping of names to YAML scalars (e.g. model.chat_template_kwargs)
        if not isinstance(value, dict) or not all(isinstance(k, str) for k in value):
            raise ConfigError(f"{name} must be a mapping of names to values, got {value!r}")
        for key, item in value.items():
            if item is not None and not isinstance(item, (bool, int, float, str)):
                raise ConfigError(f"{name}.{key} must be a number, string, true/false or null, got {item!r}")
        return dict(value)
    if origin is list:
        if not isinstance(value, list):
            raise ConfigError(f"{name} must be a list, got {value!r}")
        return [_coerce(args[0], v, f"{name}[{i}]") for i, v in enumerate(value)]
    if hint is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{name} must be true or false, got {value!r}")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{name} must be an integer, got {value!r}")
        return value
    if hint is float:
        if isinstance(value, str):  # PyYAML reads 3e-5 (no dot) as a string
            try:
                value = float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{name} must be a number, got {value!r}")
        if isinstance(value, int) and abs(value) > 2**1023:  # float() would overflow
            raise ConfigError(f"{name} must be finite, got an integer of {len(str(abs(value)))} digits")
        if value != value or value in (float("inf"), float("-inf")):
            raise ConfigError(f"{name} must be finite, got {value!r}")
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            raise ConfigError(f"{name} must be a string, got {value!r}")
        return value
    raise ConfigError(f"{name}: unsupported type {hint}")  # pragma: no cover - a bug in this module


def _set_dotted(tree: dict[str, Any], key: str, value: Any) -> None:
    parts = key.split(".")
    node = tree
    for part in parts[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"override {key}: {part} is not a section")
        node = child
    node[parts[-1]] = value


def walk_sections(obj: Any):
    """``obj`` and every dataclass nested in it (plug-in sections included), depth first."""
    yield obj
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if "plugins" in f.metadata:
            for section in value.values():
                yield from walk_sections(section)
        elif dataclasses.is_dataclass(value):
            yield from walk_sections(value)
