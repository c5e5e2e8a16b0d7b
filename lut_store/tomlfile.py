"""TOML files: one reader whose errors name the file, and typed config records built from them
(unknown keys are errors that name the nearest valid key)."""

from __future__ import annotations

import dataclasses
import difflib
import enum
import sys
import types
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib


class ConfigError(ValueError):
    """A config file or flag that cannot be used; the message names the key."""


def read_toml(path: Path, what: str, error: type[Exception] = ValueError) -> dict[str, Any]:
    """Parse `path`; raise `error` naming `what` and the file when unreadable or invalid."""
    try:
        return tomllib.loads(Path(path).read_text())
    except OSError as exc:
        raise error(f"cannot read {what} {path}: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise error(f"{what} {path} is not valid TOML: {exc}") from None


def _coerce(tp: Any, value: Any, where: str) -> Any:
    """Check a TOML value against a dataclass field type; build nested dataclasses."""
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, Mapping):
            raise ConfigError(f"{where} must be a table")
        return from_mapping(tp, value, where)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return None if value is None else _coerce(args[0], value, where)
    if origin is list:
        if not isinstance(value, list):
            raise ConfigError(f"{where} must be a list")
        return [_coerce(typing.get_args(tp)[0], v, f"{where}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, Mapping):
            raise ConfigError(f"{where} must be a table")
        if typing.get_args(tp)[1] is Any:  # passed on as written (e.g. a model factory's arguments)
            return {str(k): v for k, v in value.items()}
        return {str(k): str(v) for k, v in value.items()}
    return _scalar(tp, value, where)


def _scalar(tp: Any, value: Any, where: str) -> Any:
    """A TOML scalar as field type `tp`: an Enum member by its value, a Path, a float from an
    integer, else exactly the type."""
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        try:
            return tp(value)
        except ValueError as exc:
            raise ConfigError(f"{where}: {exc}") from None
    if tp is Path:
        if not isinstance(value, (str, Path)):
            raise ConfigError(f"{where} must be a path string")
        return Path(value)
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if tp in (int, float, str, bool) and (type(value) is not tp):
        raise ConfigError(f"{where} = {value!r} must be of type {tp.__name__}")
    return value


def from_mapping(cls: Any, data: Mapping[str, Any], where: str = "") -> Any:
    """Build dataclass `cls` from a mapping; unknown keys are errors naming the nearest key."""
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for key, value in data.items():
        path = f"{where}.{key}" if where else key
        if key not in names:
            near = difflib.get_close_matches(key, names, n=1)
            hint = f"; did you mean {near[0]!r}?" if near else f"; valid keys: {', '.join(names)}"
            raise ConfigError(f"unknown config key {path!r}{hint}")
        kwargs[key] = _coerce(hints[key], value, path)
    try:
        return cls(**kwargs)
    except ValueError as exc:  # ConfigError, or a config dataclass's own check
        raise ConfigError(f"{where}: {exc}" if where else str(exc)) from None
