"""ConfusionModel and ClassMetricsModel: an Evaluation's confusion matrix and per-class metrics
as Qt tables.

The matrix is a heatmap made of cells: every cell writes its count (or, normalised, its share
of the true class's images), its background follows a white-to-blue scale, and its text is black
or white by the background's brightness so it stays readable. Rows are true classes, columns
predicted classes; both headers name the classes. The metrics table carries the raw numbers in
``SORT_ROLE`` so a QSortFilterProxyModel sorts 0.9 above 0.10 and supports as numbers.

Both mirror an engine ``Evaluation``; they never compute metrics themselves.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from PySide6.QtCore import QAbstractTableModel, QModelIndex, QObject, QPersistentModelIndex, Qt
from PySide6.QtGui import QColor

from studio.engine.evaluate import Evaluation

Index = QModelIndex | QPersistentModelIndex
ROOT = QModelIndex()

COUNT_ROLE = Qt.ItemDataRole.UserRole + 1  # int: images in the cell
FRACTION_ROLE = Qt.ItemDataRole.UserRole + 2  # float: share of the true class's images
SORT_ROLE = Qt.ItemDataRole.UserRole + 3  # str | float | int: what the metrics table sorts by

# matplotlib's "Blues": light for few images, dark for many; readable in print and for the
# colour-blind, and the diagonal of a good model stands out at a glance.
BLUES = ((247, 251, 255), (222, 235, 247), (198, 219, 239), (158, 202, 225), (107, 174, 214),
         (66, 146, 198), (33, 113, 181), (8, 81, 156), (8, 48, 107))
DARK_TEXT = QColor(33, 33, 33)
LIGHT_TEXT = QColor(255, 255, 255)
MUTED_TEXT = QColor(160, 160, 160)


def heat_colour(value: float) -> QColor:
    """The colour of ``value`` in [0, 1] on the blue scale."""
    value = min(1.0, max(0.0, float(value)))
    position = value * (len(BLUES) - 1)
    low = int(position)
    high = min(low + 1, len(BLUES) - 1)
    t = position - low
    rgb = [round(a + (b - a) * t) for a, b in zip(BLUES[low], BLUES[high], strict=True)]
    return QColor(*rgb)


def text_colour_on(background: QColor) -> QColor:
    """Black on light cells, white on dark ones (relative luminance, as WCAG computes it)."""

    def linear(channel: int) -> float:
        c = channel / 255
        return c / 12.92 if c <= 0.03928 else ((c + 0.055) / 1.055) ** 2.4

    luminance = (0.2126 * linear(background.red()) + 0.7152 * linear(background.green())
                 + 0.0722 * linear(background.blue()))
    # the luminance where black and white text have equal contrast
    return DARK_TEXT if luminance > 0.179 else LIGHT_TEXT


def percent_text(fraction: float) -> str:
    if fraction <= 0:
        return "0%"
    if fraction < 0.005:
        return "<1%"
    return f"{100 * fraction:.0f}%"


class ConfusionModel(QAbstractTableModel):
    """The confusion matrix of an Evaluation: counts, or row-normalised percentages."""

    def __init__(self, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self._evaluation: Evaluation | None = None
        self._labels: list[str] = []
        self._matrix = np.zeros((0, 0), dtype=np.int64)
        self._fractions = np.zeros((0, 0), dtype=np.float64)
        self._largest = 1
        self._normalised = False

    # -- state ----------------------------------------------------------------------------

    @property
    def evaluation(self) -> Evaluation | None:
        return self._evaluation

    @property
    def normalised(self) -> bool:
        return self._normalised

    def set_evaluation(self, evaluation: Evaluation | None) -> None:
        self.beginResetModel()
        self._evaluation = evaluation
        if evaluation is None:
            self._labels = []
            self._matrix = np.zeros((0, 0), dtype=np.int64)
        else:
            self._labels = list(evaluation.labels)
            self._matrix = np.asarray(evaluation.matrix, dtype=np.int64)
        totals = self._matrix.sum(axis=1, keepdims=True)
        with np.errstate(invalid="ignore", divide="ignore"):
            self._fractions = np.where(totals > 0, self._matrix / np.maximum(totals, 1), 0.0)
        self._largest = int(self._matrix.max()) if self._matrix.size else 1
        self.endResetModel()

    def set_normalised(self, normalised: bool) -> None:
        """Show each row as percentages of the true class's images (colours follow)."""
        if normalised == self._normalised:
            return
        self._normalised = normalised
        if self._labels:
            last = len(self._labels) - 1
            self.dataChanged.emit(self.index(0, 0), self.index(last, last))

    # -- Qt model -------------------------------------------------------------------------

    def rowCount(self, parent: Index = ROOT) -> int:  # noqa: N802 - Qt override
        return 0 if parent.isValid() else len(self._labels)

    def columnCount(self, parent: Index = ROOT) -> int:  # noqa: N802 - Qt override
        return 0 if parent.isValid() else len(self._labels)

    def flags(self, index: Index) -> Qt.ItemFlag:
        if not index.isValid():
            return Qt.ItemFlag.NoItemFlags
        return Qt.ItemFlag.ItemIsEnabled | Qt.ItemFlag.ItemIsSelectable

    def data(self, index: Index, role: int = Qt.ItemDataRole.DisplayRole) -> Any:
        if not index.isValid():
            return None
        row, column = index.row(), index.column()
        count = int(self._matrix[row, column])
        fraction = float(self._fractions[row, column])
        if role == Qt.ItemDataRole.DisplayRole:
            return percent_text(fraction) if self._normalised else str(count)
        if role == COUNT_ROLE:
            return count
        if role == FRACTION_ROLE:
            return fraction
        if role == Qt.ItemDataRole.BackgroundRole:
            return self._background(count, fraction)
        if role == Qt.ItemDataRole.ForegroundRole:
            if count == 0:
                return MUTED_TEXT
            return text_colour_on(self._background(count, fraction))
        if role == Qt.ItemDataRole.TextAlignmentRole:
            return int(Qt.AlignmentFlag.AlignCenter)
        if role in (Qt.ItemDataRole.ToolTipRole, Qt.ItemDataRole.AccessibleTextRole):
            return self._tooltip(row, column, count, fraction)
        return None

    def headerData(self, section: int, orientation: Qt.Orientation,  # noqa: N802 - Qt override
                   role: int = Qt.ItemDataRole.DisplayRole) -> Any:
        if not 0 <= section < len(self._labels):
            return None
        name = self._labels[section]
        if role == Qt.ItemDataRole.DisplayRole:
            return name
        if role == Qt.ItemDataRole.ToolTipRole:
            if orientation == Qt.Orientation.Horizontal:
                return f"Predicted as {name}"
            return f"True class {name}: {int(self._matrix[section].sum())} images"
        return None

    # -- helpers --------------------------------------------------------------------------

    def _background(self, count: int, fraction: float) -> QColor:
        if self._normalised:
            return heat_colour(fraction)
        return heat_colour(count / max(1, self._largest))

    def _tooltip(self, row: int, column: int, count: int, fraction: float) -> str:
        true, predicted = self._labels[row], self._labels[column]
        images = "image" if count == 1 else "images"
        share = f" ({percent_text(fraction)} of {true})" if self._matrix[row].sum() else ""
        verb = "predicted correctly" if row == column else f"predicted as {predicted}"
        text = f"true {true} {verb}: {count} {images}{share}"
        return text + (" — click to see them" if count else "")


METRIC_COLUMNS = ("Class", "Precision", "Recall", "F1", "Support")
METRIC_TIPS = (
    "The class (click a header to sort)",
    "Of the images predicted as this class, the share that are this class",
    "Of this class's images, the share the model found",
    "The harmonic mean of precision and recall",
    "Images of this class that were evaluated",
)


def metric_cells(name: str, metrics: Any) -> tuple[str, str, str, str, str]:
    """What a metrics row shows: three decimals, as scikit-learn's report does."""
    return (name, f"{metrics.precision:.3f}", f"{metrics.recall:.3f}", f"{metrics.f1:.3f}",
            str(metrics.support))


class ClassMetricsModel(QAbstractTableModel):
    """Precision, recall, F1 and support of every class; the averages live elsewhere so sorting
    never mixes them in."""

    def __init__(self, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self._labels: list[str] = []
        self._metrics: list[Any] = []

    def set_evaluation(self, evaluation: Evaluation | None) -> None:
        self.beginResetModel()
        self._labels = list(evaluation.labels) if evaluation is not None else []
        self._metrics = list(evaluation.per_class) if evaluation is not None else []
        self.endResetModel()

    def rowCount(self, parent: Index = ROOT) -> int:  # noqa: N802 - Qt override
        return 0 if parent.isValid() else len(self._labels)

    def columnCount(self, parent: Index = ROOT) -> int:  # noqa: N802 - Qt override
        return 0 if parent.isValid() else len(METRIC_COLUMNS)

    def data(self, index: Index, role: int = Qt.ItemDataRole.DisplayRole) -> Any:
        if not index.isValid():
            return None
        row, column = index.row(), index.column()
        name, metrics = self._labels[row], self._metrics[row]
        if role == Qt.ItemDataRole.DisplayRole:
            return metric_cells(name, metrics)[column]
        if role == SORT_ROLE:
            values = (name.casefold(), metrics.precision, metrics.recall, metrics.f1,
                      metrics.support)
            return values[column]
        if role == Qt.ItemDataRole.TextAlignmentRole:
            if column == 0:
                return int(Qt.AlignmentFlag.AlignLeft | Qt.AlignmentFlag.AlignVCenter)
            return int(Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter)
        if role == Qt.ItemDataRole.ForegroundRole and metrics.support == 0:
            return MUTED_TEXT
        if role == Qt.ItemDataRole.ToolTipRole:
            if metrics.support == 0:
                return f"No image of {name} was evaluated, so its recall is 0 by convention"
            return (f"{name}: precision {metrics.precision:.3f}, recall {metrics.recall:.3f}, "
                    f"F1 {metrics.f1:.3f} over {metrics.support} images")
        return None

    def headerData(self, section: int, orientation: Qt.Orientation,  # noqa: N802 - Qt override
                   role: int = Qt.ItemDataRole.DisplayRole) -> Any:
        if orientation != Qt.Orientation.Horizontal or not 0 <= section < len(METRIC_COLUMNS):
            return None
        if role == Qt.ItemDataRole.DisplayRole:
            return METRIC_COLUMNS[section]
        if role == Qt.ItemDataRole.ToolTipRole:
            return METRIC_TIPS[section]
        if role == Qt.ItemDataRole.TextAlignmentRole:
            if section == 0:
                return int(Qt.AlignmentFlag.AlignLeft | Qt.AlignmentFlag.AlignVCenter)
            return int(Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter)
        return None
