"""Plain dicts ↔ config dataclasses (what TOML reads and writes), and atomic text files.

Generic over any dataclass: ``from_dict`` names the dotted path of a bad field
(``optim.groups[1].lr``), so a user can find the line in their file.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import tempfile
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

from studio.engine.errors import ConfigError

FILE_MODE = 0o644


def atomic_write_text(path: Path, text: str) -> None:
    """Write through a temporary file in the same folder and ``os.replace`` it into place."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, FILE_MODE)  # mkstemp makes 0600; a run folder is ordinary user data
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


# ---------------------------------------------------------------------------------------------
# Generic dataclass <-> plain dict conversion (TOML has no None: None fields are left out)

T = TypeVar("T")


def to_dict(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        out = {}
        for f in dataclasses.fields(value):
            item = getattr(value, f.name)
            if item is not None:
                out[f.name] = to_dict(item)
        return out
    if isinstance(value, tuple | list):
        return [to_dict(item) for item in value]
    if isinstance(value, dict):
        return {str(key): to_dict(item) for key, item in value.items()}
    return value


@functools.cache
def _type_hints(cls: type) -> dict[str, Any]:
    """Resolved once per class: resolving them is most of loading a config (listing 500 runs
    loads 500)."""
    return typing.get_type_hints(cls)


def from_dict(cls: type[T], raw: Any, path: str = "") -> T:
    """Build dataclass ``cls`` from ``raw``, naming the dotted path of any bad field."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{path or 'config'} must be a table; got {type(raw).__name__}")
    hints = _type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(raw) - names)
    if unknown:
        where = f" in {path}" if path else ""
        raise ConfigError(f"unknown field {_join(path, unknown[0])!r}{where}; "
                          f"known fields are {', '.join(sorted(names))}")
    required = [f.name for f in dataclasses.fields(cls)  # type: ignore[arg-type]
                if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
    absent = [name for name in required if name not in raw]
    if absent:
        raise ConfigError(f"{_join(path, absent[0])} is required")
    kwargs = {key: _convert(hints[key], value, _join(path, key)) for key, value in raw.items()}
    try:
        return cls(**kwargs)
    except ConfigError as error:
        message = str(error)
        field_name = message.split(" ", 1)[0].split("[", 1)[0]
        if path and field_name in names:  # "lr must be …" → "optim.groups[1].lr must be …"
            raise ConfigError(f"{path}.{message}") from error
        raise ConfigError(f"{path + ': ' if path else ''}{message}") from error


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def _convert(hint: Any, value: Any, path: str) -> Any:
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        options = [arg for arg in args if arg is not type(None)]
        return _convert(options[0], value, path)
    if dataclasses.is_dataclass(hint):
        return from_dict(hint, value, path)
    if origin is tuple:
        if not isinstance(value, list | tuple):
            raise ConfigError(f"{path} must be a list; got {value!r}")
        return tuple(_convert(args[0], item, f"{path}[{i}]") for i, item in enumerate(value))
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{path} must be a table; got {value!r}")
        return {str(k): _convert(args[1], v, f"{path}.{k}") for k, v in value.items()}
    if hint is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{path} must be true or false; got {value!r}")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{path} must be a whole number; got {value!r}")
        return value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(f"{path} must be a number; got {value!r}")
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            raise ConfigError(f"{path} must be text; got {value!r}")
        return value
    raise ConfigError(f"{path}: unsupported field type {hint!r}")  # a bug, not a user error
