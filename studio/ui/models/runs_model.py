"""RunsModel: the run history (``engine.history.list_runs``) as a sortable, filterable table.

It mirrors a list of RunSummary rows and owns nothing else. Cells are shown formatted but sort
by their real value (SORT_ROLE: seconds, bytes, the metric itself), FILTER_ROLE is the text a
search matches (name, backbone, dataset, status), and RUN_ROLE hands back the RunSummary, so a
plain QSortFilterProxyModel does the rest.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from PySide6.QtCore import QAbstractTableModel, QModelIndex, QPersistentModelIndex, Qt
from PySide6.QtGui import QColor, QFont

from studio.engine.history import RunSummary
from studio.format import format_duration, format_size

SORT_ROLE = Qt.ItemDataRole.UserRole  # a number (or lower-case text) to sort by
FILTER_ROLE = Qt.ItemDataRole.UserRole + 1  # "name backbone dataset status"
RUN_ROLE = Qt.ItemDataRole.UserRole + 2  # the RunSummary, whatever the column

_Index = QModelIndex | QPersistentModelIndex
_NO_PARENT = QModelIndex()

COLUMNS = ("Name", "Started", "Dataset", "Backbone", "Freeze", "Epochs", "Best", "Status",
           "Duration", "Device", "Size")
(NAME, STARTED, DATASET, BACKBONE, FREEZE, EPOCHS, BEST, STATUS, DURATION, DEVICE,
 SIZE) = range(len(COLUMNS))
_HEADER_TIPS = (
    "The run folder's name",
    "When the run first started",
    "The dataset folder (hover a cell for its full path)",
    "The torchvision model fine-tuned",
    "What was frozen, and how many later stages unfroze more",
    "Epochs completed of those planned",
    "The best value of the monitored metric, and the epoch it came at",
    "completed, stopped, failed, running, or interrupted (its process ended mid-run)",
    "Training time over every session of the run",
    "Where it trained",
    "The run folder's size on disk (checkpoints included)",
)
_NUMERIC = frozenset({EPOCHS, BEST, DURATION, SIZE})
_RIGHT = Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter
_LEFT = Qt.AlignmentFlag.AlignLeft | Qt.AlignmentFlag.AlignVCenter

STATUS_COLORS = {
    "running": QColor(21, 101, 192),  # blue
    "completed": QColor(46, 125, 50),  # green
    "failed": QColor(198, 40, 40),  # red
    "stopped": QColor(160, 90, 0),  # amber
    "interrupted": QColor(160, 90, 0),
}
PERCENT_METRICS = frozenset({"val_acc", "macro_f1"})  # fractions, shown as percent


class RunsModel(QAbstractTableModel):
    """One row per run; read-only (renaming and deleting go through the engine, then a
    fresh listing replaces the rows)."""

    def __init__(self, runs: Sequence[RunSummary] = (), parent: Any = None) -> None:
        super().__init__(parent)
        self._runs: tuple[RunSummary, ...] = tuple(runs)
        self._bold = QFont()
        self._bold.setBold(True)

    # -- lookups ----------------------------------------------------------------------------

    def set_runs(self, runs: Sequence[RunSummary]) -> None:
        self.beginResetModel()
        self._runs = tuple(runs)
        self.endResetModel()

    @property
    def runs(self) -> tuple[RunSummary, ...]:
        return self._runs

    def run(self, row: int) -> RunSummary:
        return self._runs[row]

    def row_of(self, path: str | Path) -> int:
        """The row of the run in folder ``path``, or -1."""
        wanted = Path(path)
        return next((row for row, run in enumerate(self._runs) if run.path == wanted), -1)

    # -- Qt model interface ---------------------------------------------------------------

    def rowCount(self, parent: _Index = _NO_PARENT) -> int:
        return 0 if parent.isValid() else len(self._runs)

    def columnCount(self, parent: _Index = _NO_PARENT) -> int:
        return 0 if parent.isValid() else len(COLUMNS)

    def headerData(self, section: int, orientation: Qt.Orientation,
                   role: int = Qt.ItemDataRole.DisplayRole) -> Any:
        if orientation != Qt.Orientation.Horizontal or not 0 <= section < len(COLUMNS):
            return None
        if role == Qt.ItemDataRole.DisplayRole:
            return COLUMNS[section]
        if role == Qt.ItemDataRole.ToolTipRole:
            return _HEADER_TIPS[section]
        if role == Qt.ItemDataRole.TextAlignmentRole:
            return _RIGHT if section in _NUMERIC else _LEFT
        return None

    def data(self, index: _Index, role: int = Qt.ItemDataRole.DisplayRole) -> Any:
        if not index.isValid() or index.row() >= len(self._runs):
            return None
        run = self._runs[index.row()]
        column = index.column()
        if role == Qt.ItemDataRole.DisplayRole:
            return display_text(run, column)
        if role == SORT_ROLE:
            return sort_key(run, column)
        if role == Qt.ItemDataRole.TextAlignmentRole:
            return _RIGHT if column in _NUMERIC else _LEFT
        if role == Qt.ItemDataRole.ForegroundRole and column == STATUS:
            return STATUS_COLORS.get(run.status)
        if role == Qt.ItemDataRole.FontRole and column == STATUS:
            return self._bold
        if role == Qt.ItemDataRole.ToolTipRole:
            return tooltip(run, column)
        if role == FILTER_ROLE:
            return f"{run.name} {run.backbone} {run.dataset} {run.status}"
        if role == RUN_ROLE:
            return run
        return None

    def flags(self, index: _Index) -> Qt.ItemFlag:
        if not index.isValid():
            return Qt.ItemFlag.NoItemFlags
        return Qt.ItemFlag.ItemIsEnabled | Qt.ItemFlag.ItemIsSelectable | \
            Qt.ItemFlag.ItemNeverHasChildren


# -- cells ------------------------------------------------------------------------------------


def display_text(run: RunSummary, column: int) -> str:
    if column == NAME:
        return run.name
    if column == STARTED:
        return time.strftime("%Y-%m-%d %H:%M", time.localtime(run.started)) \
            if run.started else "—"
    if column == DATASET:
        return Path(run.dataset).name or run.dataset or "—"
    if column == BACKBONE:
        return run.backbone
    if column == FREEZE:
        return run.freeze
    if column == EPOCHS:
        return f"{run.epochs}/{run.planned}"
    if column == BEST:
        return best_text(run)
    if column == STATUS:
        return run.status
    if column == DURATION:
        return format_duration(run.seconds)
    if column == DEVICE:
        return run.device or "—"
    return format_size(run.size_bytes)


def sort_key(run: RunSummary, column: int) -> float | str:
    """Numbers sort as numbers; a missing figure sorts below every real one."""
    if column in (NAME, BACKBONE, FREEZE, STATUS, DEVICE):
        return display_text(run, column).lower()
    if column == DATASET:
        return f"{display_text(run, column).lower()} {run.dataset.lower()}"
    if column == STARTED:
        return float(run.started or 0.0)
    if column == EPOCHS:
        return run.epochs + run.planned / 1e6  # done first, then planned
    if column == BEST:
        value = run.best_metric
        return float(value) if value is not None and math.isfinite(value) else -math.inf
    if column == DURATION:
        return float(run.seconds)
    return float(run.size_bytes)


def tooltip(run: RunSummary, column: int) -> str:
    if column == DATASET:
        return run.dataset
    if column == STATUS and run.message:
        return f"{run.status}: {run.message}"
    if column == BEST and run.best_metric is not None:
        return f"best {run.monitor} {run.best_metric:.4f} at epoch {run.best_epoch}"
    return str(run.path)


def best_text(run: RunSummary) -> str:
    """``93.3 % @3`` for accuracies (``val_loss 0.2100 @2`` for a loss), or a dash."""
    if run.best_metric is None:
        return "—"
    value = metric_text(run.monitor, run.best_metric)
    epoch = f" @{run.best_epoch}" if run.best_epoch is not None else ""
    return f"{value}{epoch}"


def metric_text(monitor: str, value: float) -> str:
    if monitor in PERCENT_METRICS:
        return f"{'acc' if monitor == 'val_acc' else 'F1'} {value * 100:.1f} %"
    return f"{monitor.removeprefix('val_')} {value:.4f}"
