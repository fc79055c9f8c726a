"""Form parts shared by the settings panels: a setting bound to a config field (made from the
field's declared label, help, choices and limits: studio.engine.fields), a combo box of
(text, value) choices, a spin box that edits once per value, and a guard that mutes signals
while a panel mirrors the config back into its widgets."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from PySide6.QtCore import QObject, SignalInstance
from PySide6.QtWidgets import QCheckBox, QComboBox, QDoubleSpinBox, QSpinBox, QWidget

from studio.engine.fields import Described


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

    @property
    def key(self) -> str:
        return f"{self.section}.{self.name}"

    @property
    def edited(self) -> SignalInstance:
        """The widget's signal for a new value from the user."""
        widget = self.widget
        if isinstance(widget, QComboBox):
            return widget.currentIndexChanged
        if isinstance(widget, QCheckBox):
            return widget.toggled
        assert isinstance(widget, QSpinBox | QDoubleSpinBox)
        return widget.valueChanged


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


def select_data(combo: QComboBox, value: Any) -> None:
    index = combo.findData(value)
    if index >= 0:
        combo.setCurrentIndex(index)


def setting_field(item: Described) -> Field:
    """The widget a config field's setting asks for: a combo box for choices, a check box for a
    switch, a spin box within the limits (its lowest value showing ``off`` when it has one; an
    optional field's None shows as 0 with that text)."""
    found = item.setting
    if item.kind is bool:
        check = QCheckBox(found.label)
        check.setToolTip(found.help)
        return Field("", check, item.section, item.name, check.isChecked, check.setChecked)
    if found.choices:
        combo = make_combo(tuple((text, value) for value, text in found.choices), found.help)
        return Field(found.label, combo, item.section, item.name, combo.currentData,
                     lambda value: select_data(combo, value))
    low = 0 if item.optional else found.low
    assert low is not None and found.high is not None, f"{item.key} needs limits for a form"
    if item.kind is int:
        spin: QSpinBox | QDoubleSpinBox = make_spin(int(low), int(found.high), found.help,
                                                    step=int(found.step), special=found.off,
                                                    suffix=found.suffix)
    else:
        spin = QDoubleSpinBox()
        spin.setRange(low, found.high)
        spin.setDecimals(found.decimals)
        spin.setSingleStep(found.step)
        spin.setKeyboardTracking(False)
        spin.setSpecialValueText(found.off)
        spin.setSuffix(found.suffix)
        spin.setToolTip(found.help)
    if item.optional:
        return Field(found.label, spin, item.section, item.name,
                     lambda: spin.value() or None, lambda value: spin.setValue(value or 0))
    return Field(found.label, spin, item.section, item.name, spin.value, spin.setValue)
