"""Form parts shared by the settings panels: a setting bound to a config field, a combo box of
(text, value) choices, a spin box that edits once per value, and a guard that mutes signals
while a panel mirrors the config back into its widgets."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from PySide6.QtCore import QObject
from PySide6.QtWidgets import QComboBox, QSpinBox, QWidget


@contextmanager
def signals_blocked(widgets: list[QObject]) -> Iterator[None]:
    previous = [widget.blockSignals(True) for widget in widgets]
    try:
        yield
    finally:
        for widget, was in zip(widgets, previous, strict=True):
            widget.blockSignals(was)


@dataclass(frozen=True, slots=True)
class Field:
    """One setting: its widget, where it lives in the config, and how to read/write it."""

    label: str
    widget: QWidget
    section: str
    name: str
    read: Callable[[], Any]
    write: Callable[[Any], None]


def make_combo(choices: tuple[tuple[str, str], ...], tooltip: str) -> QComboBox:
    combo = QComboBox()
    for text, value in choices:
        combo.addItem(text, value)
    combo.setToolTip(tooltip)
    return combo


def make_spin(low: int, high: int, tooltip: str, step: int = 1, special: str = "",
          suffix: str = "") -> QSpinBox:
    spin = QSpinBox()
    spin.setRange(low, high)
    spin.setSingleStep(step)
    spin.setKeyboardTracking(False)  # one edit when typing is done, not one per digit
    spin.setGroupSeparatorShown(True)
    spin.setAccelerated(True)
    if special:
        spin.setSpecialValueText(special)
    if suffix:
        spin.setSuffix(suffix)
    spin.setToolTip(tooltip)
    return spin
