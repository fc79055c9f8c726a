"""What a config field is to a person: its label, help, choices and limits, declared once.

A field of a config dataclass is declared with :func:`setting` instead of a bare default::

    epochs: int = setting(10, "Epochs", "How many passes over the training images.",
                          low=1, high=100_000, tab="Loop")

and from that one declaration the dataclass validates itself (:func:`check`), ``studio train``
gets its flag (``studio.cli.flags``) and the Train page its widget (``studio.ui.widgets.form``).
Everything here is plain Python: the engine's config module imports it before torch.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import typing
from dataclasses import dataclass
from typing import Any

from studio.engine.errors import ConfigError

# The Train page's tabs, in order; a field with another tab (or none) is not on that page.
TABS = ("Loop", "Recipe", "Device", "Speed & records")


@dataclass(frozen=True, slots=True)
class Setting:
    """How one field is shown, asked for and checked."""

    label: str  # the form's label ("Batch size"); a check box's text for a bool
    help: str  # one or two sentences: the CLI's --help and the form's tooltip
    choices: tuple[tuple[str, str], ...] = ()  # (value, text shown in the window)
    low: float | None = None  # inclusive limits (numbers)
    high: float | None = None
    step: float = 1  # the spin box's step
    decimals: int = 2  # a float spin box's decimals
    off: str = ""  # the text shown at the lowest value ("off", "auto", "none")
    suffix: str = ""  # " px", " epochs"
    flag: str | None = ""  # the CLI flag without dashes; "" = the field's name; None = no flag
    metavar: str = ""
    tab: str = ""  # the Train page's tab (TABS); "" = shown elsewhere or only in files
    hint: str = ""  # what a too-low number means, in the error ("0 (off) or a patience")
    unit: str = ""  # the limits' unit in an error ("pixels")

    @property
    def values(self) -> tuple[str, ...]:
        return tuple(value for value, _ in self.choices)


def setting(default: Any, label: str, help: str, **options: Any) -> Any:
    """A dataclass field with ``default`` and its :class:`Setting`."""
    return dataclasses.field(default=default,
                             metadata={"setting": Setting(label, help, **options)})


@dataclass(frozen=True, slots=True)
class Described:
    """A field with a setting, as the faces see it: which section, which field, which type."""

    section: str  # "train", "optim", "data", "head", …
    name: str
    kind: type  # int, float, str or bool
    optional: bool  # None is allowed (shown as the setting's ``off``)
    default: Any
    setting: Setting

    @property
    def key(self) -> str:
        return f"{self.section}.{self.name}"

    @property
    def flag(self) -> str | None:
        if self.setting.flag is None:
            return None
        return self.setting.flag or self.name.replace("_", "-")


@functools.cache
def described(cls: type, section: str) -> tuple[Described, ...]:
    """The fields of dataclass ``cls`` that have a setting, in declaration order."""
    hints = typing.get_type_hints(cls)
    out = []
    for f in dataclasses.fields(cls):
        found = f.metadata.get("setting")
        if found is None:
            continue
        kind, optional = _plain_type(hints[f.name])
        out.append(Described(section, f.name, kind, optional, f.default, found))
    return tuple(out)


def setting_for(cls: type, name: str) -> Setting:
    return next(item.setting for item in described(cls, "") if item.name == name)


def limits(cls: type, name: str) -> tuple[float, float]:
    """A numeric field's (low, high): for widgets that edit it outside a generated form."""
    found = setting_for(cls, name)
    assert found.low is not None and found.high is not None, f"{name} has no limits"
    return found.low, found.high


def check(instance: Any) -> None:
    """Raise ConfigError naming the first field of ``instance`` outside its choices or limits."""
    for item in described(type(instance), ""):
        value = getattr(instance, item.name)
        if value is None and item.optional:
            continue
        found = item.setting
        if found.choices:
            if value not in found.values:
                raise ConfigError(f"{item.name} must be one of {', '.join(found.values)}; "
                                  f"got {value!r}")
        elif item.kind is float:
            _check_float(item.name, value, found.low, found.high)
        elif item.kind is int:
            _check_int(item.name, value, found)


def _check_float(name: str, value: float, low: float | None, high: float | None) -> None:
    if not math.isfinite(value):
        raise ConfigError(f"{name} must be a finite number; got {value!r}")
    if low is not None and high is not None and not low <= value <= high:
        raise ConfigError(f"{name} must be between {_number(low)} and {_number(high)}; "
                          f"got {value}")
    if low is not None and value < low:
        raise ConfigError(f"{name} must be at least {low}; got {value}")
    if high is not None and value > high:
        raise ConfigError(f"{name} must be at most {high}; got {value}")


def _check_int(name: str, value: int, found: Setting) -> None:
    low, high = found.low, found.high
    unit = f" {found.unit}" if found.unit else ""
    if low is not None and high is not None and not low <= value <= high:
        raise ConfigError(f"{name} must be between {_number(low)} and {_number(high)}{unit}; "
                          f"got {value}")
    if low is not None and value < low:
        lowest = found.hint or _number(low)
        raise ConfigError(f"{name} must be at least {lowest}; got {value}")


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else str(value)


def _plain_type(hint: Any) -> tuple[type, bool]:
    args = typing.get_args(hint)
    if type(None) in args:
        return next(arg for arg in args if arg is not type(None)), True
    return hint, False
