"""GroupTableModel: the optimizer's parameter groups as an editable table.

One row per ``config.optim.groups`` entry, plus a read-only "default" row for every parameter
no group claims (trained at the base learning rate). The table mirrors the config: an accepted
edit becomes one ``project.set_groups`` call; a refused one returns False and says why through
``edit_refused``, so the panel can show the sentence instead of raising a dialog.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

from PySide6.QtCore import (
    QAbstractTableModel,
    QModelIndex,
    QObject,
    QPersistentModelIndex,
    Qt,
    Signal,
)
from PySide6.QtGui import QFont, QGuiApplication, QPalette

from studio.engine.config import MAX_LR, MAX_WEIGHT_DECAY, ParamGroupSpec, RunConfig
from studio.engine.errors import ConfigError
from studio.engine.params import DEFAULT_GROUP, assign_groups, is_under, matches
from studio.ui.project import ProjectModel
from studio.ui.text import sentence

NAME_COLUMN, PATTERNS_COLUMN, LR_COLUMN, DECAY_COLUMN, PARAMS_COLUMN = range(5)
HEADERS = ("Name", "Patterns", "Learning rate", "Weight decay", "Parameters")
HEADER_TIPS = (
    "The group's name, shown in the learning-rate curves",
    "Comma-separated module names or globs (layer4, features.1*); the first matching group wins",
    "The group's learning rate, e.g. 1e-4 or 0.001",
    "The group's weight decay; leave it empty to use the optimizer's",
    "Parameters in the group (how many of them train, when some are frozen)",
)
NUMEL_ROLE = Qt.ItemDataRole.UserRole + 1  # int: parameters in the row's group
TRAINABLE_ROLE = Qt.ItemDataRole.UserRole + 2  # int: of those, the trainable ones

Index = QModelIndex | QPersistentModelIndex
ROOT = QModelIndex()


def format_number(value: float) -> str:
    """1e-04, 3.85e-04, 0.001, 0.0026, 0.1, 2.5 — short, and exact for the usual values."""
    if value == 0:
        return "0"
    if 1e-3 <= abs(value) < 1e4:
        return f"{value:.3g}"
    mantissa, exponent = f"{value:.2e}".split("e")
    return f"{mantissa.rstrip('0').rstrip('.')}e{exponent}"


def edit_text(value: float) -> str:
    """What an editor starts with: enough digits that committing it unchanged changes nothing
    a user would notice."""
    return f"{value:.6g}"


def parse_number(text: str, what: str, low: float, high: float,
                 allow_low: bool = True) -> tuple[float | None, str]:
    """``(value, "")`` or ``(None, reason)`` — the reason is one sentence about ``what``."""
    text = text.strip()
    if not text:
        return None, f"{what.capitalize()} needs a value, such as 1e-4 or 0.001."
    try:
        value = float(text.replace("−", "-"))
    except ValueError:
        return None, f"“{text}” is not a number; type {what} like 1e-4 or 0.001."
    if not math.isfinite(value):
        return None, f"{what.capitalize()} must be a finite number, not “{text}”."
    if value < 0:
        return None, f"{what.capitalize()} cannot be negative (got {text})."
    if value == low and not allow_low:
        return None, f"{what.capitalize()} must be greater than {format_number(low)}."
    if value > high:
        return None, f"{what.capitalize()} must be at most {format_number(high)} (got {text})."
    return value, ""


class GroupTableModel(QAbstractTableModel):
    """Rows: the config's groups, then "default"; columns: see HEADERS."""

    edit_refused = Signal(str)  # one sentence: why the last edit was not applied

    def __init__(self, project: ProjectModel, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self._project = project
        self._groups: tuple[ParamGroupSpec, ...] = ()
        self._counts: dict[str, tuple[int, int]] = {}  # group → (parameters, trainable)
        self._empty: frozenset[str] = frozenset()
        self._counted_description: object = None
        self._counted_key: tuple[Any, ...] | None = None
        self._italic = QFont()
        self._italic.setItalic(True)
        project.config_changed.connect(self._on_project_config_changed)
        project.description_changed.connect(self._on_project_description_changed)
        self._refresh(reset=True)

    # -- what the panel asks ------------------------------------------------------------

    @property
    def groups(self) -> tuple[ParamGroupSpec, ...]:
        return self._groups

    def is_default_row(self, row: int) -> bool:
        return row == len(self._groups)

    def group_count(self, name: str) -> tuple[int, int] | None:
        """(parameters, trainable) of group ``name`` (None before a model is described)."""
        return self._counts.get(name)

    # -- Qt model interface -------------------------------------------------------------

    def rowCount(self, parent: Index = ROOT) -> int:
        return 0 if parent.isValid() else len(self._groups) + 1

    def columnCount(self, parent: Index = ROOT) -> int:
        return 0 if parent.isValid() else len(HEADERS)

    def flags(self, index: Index) -> Qt.ItemFlag:
        if not index.isValid():
            return Qt.ItemFlag.NoItemFlags
        flags = Qt.ItemFlag.ItemIsEnabled | Qt.ItemFlag.ItemIsSelectable \
            | Qt.ItemFlag.ItemNeverHasChildren
        if not self.is_default_row(index.row()) and index.column() != PARAMS_COLUMN:
            flags |= Qt.ItemFlag.ItemIsEditable
        return flags

    def data(self, index: Index, role: int = Qt.ItemDataRole.DisplayRole) -> Any:
        if not index.isValid():
            return None
        row, column = index.row(), index.column()
        default = self.is_default_row(row)
        optim = self._project.config.optim
        group = None if default else self._groups[row]
        name = DEFAULT_GROUP if group is None else group.name
        counts = self._counts.get(name)
        if role == Qt.ItemDataRole.DisplayRole:
            if column == NAME_COLUMN:
                return name
            if column == PATTERNS_COLUMN:
                return "everything else" if group is None else ", ".join(group.patterns)
            if column == LR_COLUMN:
                return f"{format_number(optim.lr)} (base)" if group is None \
                    else format_number(group.lr)
            if column == DECAY_COLUMN:
                if group is None or group.weight_decay is None:
                    return f"{format_number(optim.weight_decay)} (base)"
                return format_number(group.weight_decay)
            return self._count_text(counts)
        if role == Qt.ItemDataRole.EditRole:
            if group is None:
                return None
            return (group.name, ", ".join(group.patterns), edit_text(group.lr),
                    "" if group.weight_decay is None else edit_text(group.weight_decay),
                    counts[0] if counts else 0)[column]
        if role == Qt.ItemDataRole.TextAlignmentRole:
            if column in (LR_COLUMN, DECAY_COLUMN, PARAMS_COLUMN):
                return Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter
            return None
        if role == Qt.ItemDataRole.ForegroundRole:
            muted = QGuiApplication.palette().brush(QPalette.ColorGroup.Disabled,
                                                    QPalette.ColorRole.Text)
            inherited = (column == LR_COLUMN and group is None) or (
                column == DECAY_COLUMN and (group is None or group.weight_decay is None))
            frozen = column == PARAMS_COLUMN and counts is not None and counts[1] == 0
            return muted if inherited or frozen or (group is None and column == PATTERNS_COLUMN) \
                else None
        if role == Qt.ItemDataRole.FontRole:
            return self._italic if group is None else None
        if role == Qt.ItemDataRole.ToolTipRole:
            return self._tooltip(group, column, counts)
        if role == NUMEL_ROLE:
            return counts[0] if counts else 0
        if role == TRAINABLE_ROLE:
            return counts[1] if counts else 0
        return None

    def setData(self, index: Index, value: Any, role: int = Qt.ItemDataRole.EditRole) -> bool:
        if role != Qt.ItemDataRole.EditRole or not index.isValid() \
                or not self.flags(index) & Qt.ItemFlag.ItemIsEditable:
            return False
        row, column = index.row(), index.column()
        group = self._groups[row]
        text = str(value)
        if text.strip() == str(self.data(index, Qt.ItemDataRole.EditRole)).strip():
            return True  # committed unchanged: keep full precision
        changed, reason = self._edited(group, column, text)
        if changed is None:
            self.edit_refused.emit(reason)
            return False
        groups = list(self._groups)
        groups[row] = changed
        return self.apply(groups)

    def headerData(self, section: int, orientation: Qt.Orientation,
                   role: int = Qt.ItemDataRole.DisplayRole) -> Any:
        if orientation != Qt.Orientation.Horizontal or not 0 <= section < len(HEADERS):
            return None
        if role == Qt.ItemDataRole.DisplayRole:
            return HEADERS[section]
        if role == Qt.ItemDataRole.ToolTipRole:
            return HEADER_TIPS[section]
        return None

    # -- edits --------------------------------------------------------------------------

    def apply(self, groups: list[ParamGroupSpec] | tuple[ParamGroupSpec, ...]) -> bool:
        """Set the project's groups; a ConfigError becomes a refusal, never an exception."""
        try:
            self._project.set_groups(groups)
        except ConfigError as error:
            self.edit_refused.emit(sentence(str(error)))
            return False
        return True

    def new_group(self) -> ParamGroupSpec | None:
        """A group to add: the first top-level module no group claims yet (else the head),
        at the base learning rate, under an unused name."""
        description = self._project.description
        if description is None:
            self.edit_refused.emit("Choose a backbone first: a group names its modules.")
            return None
        assignment = assign_groups(description.names, self._groups)
        top: list[str] = []
        for name in description.names:
            module = name.split(".")[0]
            if module not in top:
                top.append(module)
        unclaimed = [m for m in top if all(assignment.group_of[n] == DEFAULT_GROUP
                                           for n in description.names if is_under(n, m))]
        pattern = unclaimed[0] if unclaimed else description.head
        taken = {g.name for g in self._groups} | {DEFAULT_GROUP}
        number = len(self._groups) + 1
        while f"group{number}" in taken:
            number += 1
        return ParamGroupSpec(f"group{number}", (pattern,), self._project.config.optim.lr)

    def _edited(self, group: ParamGroupSpec, column: int,
                text: str) -> tuple[ParamGroupSpec | None, str]:
        if column == NAME_COLUMN:
            name = text.strip()
            if not name:
                return None, "A group needs a name."
            if name == DEFAULT_GROUP:
                return None, (f"“{DEFAULT_GROUP}” is the name of the group of everything else; "
                              f"choose another name.")
            if any(g.name == name for g in self._groups if g is not group):
                return None, f"There is already a group called “{name}”; names must be unique."
            return dataclasses.replace(group, name=name), ""
        if column == PATTERNS_COLUMN:
            patterns = tuple(p.strip() for p in text.split(",") if p.strip())
            if not patterns:
                return None, "A group needs at least one pattern, such as layer4 or features.1*."
            description = self._project.description
            if description is not None:
                for pattern in patterns:
                    if not any(matches(n, pattern) for n in description.names):
                        return None, (f"“{pattern}” matches no parameter of "
                                      f"{description.backbone}; use a module name from the "
                                      f"layer tree, such as {_example(description.names)}.")
            return dataclasses.replace(group, patterns=patterns), ""
        if column == LR_COLUMN:
            value, reason = parse_number(text, "the learning rate", 0.0, MAX_LR)
            return (None, reason) if value is None else (dataclasses.replace(group, lr=value), "")
        if not text.strip():  # weight decay: empty means the optimizer's
            return dataclasses.replace(group, weight_decay=None), ""
        value, reason = parse_number(text, "weight decay", 0.0, MAX_WEIGHT_DECAY)
        return (None, reason) if value is None \
            else (dataclasses.replace(group, weight_decay=value), "")

    # -- project signals ----------------------------------------------------------------

    def _on_project_config_changed(self, _config: RunConfig) -> None:
        self._refresh(reset=False)

    def _on_project_description_changed(self, _description: object) -> None:
        self._refresh(reset=False)

    def _refresh(self, reset: bool) -> None:
        """Same number of rows: dataChanged (editing and selection survive); else a reset."""
        groups = self._project.config.optim.groups
        if reset or len(groups) != len(self._groups):
            self.beginResetModel()
            self._groups = groups
            self._recount()
            self.endResetModel()
            return
        self._groups = groups
        self._recount()
        self.dataChanged.emit(self.index(0, 0), self.index(len(groups), len(HEADERS) - 1))

    def _recount(self) -> None:
        description = self._project.description
        key = (self._groups, self._project.config.freeze)
        if description is self._counted_description and key == self._counted_key:
            return  # e.g. the epochs changed: nothing to count again
        self._counted_description, self._counted_key = description, key
        self._counts, self._empty = {}, frozenset()
        if description is None:
            return
        assignment = assign_groups(description.names, self._groups)
        frozen = self._project.frozen()
        counts = {g.name: [0, 0] for g in self._groups}
        counts[DEFAULT_GROUP] = [0, 0]
        for name, group in assignment.group_of.items():
            size = description.numel[name]
            counts[group][0] += size
            if name not in frozen:
                counts[group][1] += size
        self._counts = {g: (total, trainable) for g, (total, trainable) in counts.items()}
        self._empty = frozenset(assignment.empty)

    # -- display helpers ----------------------------------------------------------------

    @staticmethod
    def _count_text(counts: tuple[int, int] | None) -> str:
        if counts is None:
            return "—"
        total, trainable = counts
        if total == 0 or trainable == total:
            return f"{total:,}"
        if trainable == 0:
            return f"{total:,} (frozen)"
        return f"{total:,} ({trainable:,} train)"

    def _tooltip(self, group: ParamGroupSpec | None, column: int,
                 counts: tuple[int, int] | None) -> str:
        if group is None:
            return ("Every parameter no group above claims; trained at the base learning rate "
                    "and weight decay")
        if column == PARAMS_COLUMN:
            if group.name in self._empty:
                return ("Earlier groups already take every parameter these patterns match; "
                        "this group is empty")
            if counts is None:
                return "Counted once a backbone is chosen"
            return f"{counts[0]:,} parameters, {counts[1]:,} of them trainable"
        if column == PATTERNS_COLUMN:
            return f"{group.name}: {', '.join(group.patterns)} (the first matching group wins)"
        if column == DECAY_COLUMN and group.weight_decay is None:
            return "Uses the optimizer's weight decay; type a value to override it"
        return HEADER_TIPS[column]


def _example(names: tuple[str, ...]) -> str:
    return names[len(names) // 2].rsplit(".", 1)[0] if names else "layer4"
