"""MatrixPane: the Evaluate page's left side, the confusion matrix (click a cell to see its
images) over the per-class metrics, sortable by any column, with their macro and weighted
averages. EvaluatePanel (evaluate_panel.py) shows a cell's images when one is chosen."""

from __future__ import annotations

from PySide6.QtCore import QModelIndex, QSortFilterProxyModel, Qt, Signal, Slot
from PySide6.QtGui import QPalette
from PySide6.QtWidgets import (
    QAbstractItemView,
    QAbstractScrollArea,
    QCheckBox,
    QGridLayout,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QSizePolicy,
    QTableView,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)

from studio.engine.evaluate import Evaluation
from studio.ui.models.confusion import (
    METRIC_COLUMNS,
    SORT_ROLE,
    ClassMetricsModel,
    ConfusionModel,
    metric_cells,
)
from studio.ui.widgets.evaluate_views import (
    HeatmapDelegate,
    RotatedHeader,
    VerticalLabel,
    bold_label,
)

MAX_METRIC_ROWS = 6  # the per-class table scrolls past this many classes: the matrix
#                      gets the room


class MatrixPane(QWidget):
    """The confusion matrix and the per-class metrics of one evaluation."""

    cell_chosen = Signal(int, int)  # (true, predicted): clicked, or reached with the arrow keys

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self._make_widgets()
        self._build_layout()
        self.normalised_check.toggled.connect(self._on_normalised_check_toggled)
        self.matrix_view.clicked.connect(self._on_matrix_view_clicked)
        self.matrix_view.selectionModel().currentChanged.connect(
            self._on_matrix_selection_current_changed)
        self.metrics_view.horizontalHeader().sectionResized.connect(
            self._on_metrics_header_section_resized)
        self.normalised_check.setEnabled(False)

    def _make_widgets(self) -> None:
        self.confusion_model = ConfusionModel(self)
        self.matrix_view = QTableView()
        self.matrix_view.setObjectName("confusionMatrix")
        self.matrix_view.setHorizontalHeader(RotatedHeader(self.matrix_view))
        self.matrix_view.setModel(self.confusion_model)
        self.matrix_view.setItemDelegate(HeatmapDelegate(self.matrix_view))
        self.matrix_view.setSelectionMode(QAbstractItemView.SelectionMode.SingleSelection)
        self.matrix_view.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectItems)
        self.matrix_view.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.matrix_view.setShowGrid(True)
        self.matrix_view.setGridStyle(Qt.PenStyle.SolidLine)
        self.matrix_view.setStyleSheet("QTableView#confusionMatrix { gridline-color: white; }")
        self.matrix_view.setCornerButtonEnabled(False)
        self.matrix_view.setWordWrap(False)
        self.matrix_view.setTextElideMode(Qt.TextElideMode.ElideRight)
        self.matrix_view.setToolTip("Rows: the true class; columns: the predicted class. "
                                    "Click a cell to see its images.")
        self.matrix_view.setAccessibleName("Confusion matrix")
        self.matrix_view.setSizeAdjustPolicy(
            QAbstractScrollArea.SizeAdjustPolicy.AdjustToContents)
        self.matrix_view.setSizePolicy(QSizePolicy.Policy.Maximum, QSizePolicy.Policy.Maximum)
        self.normalised_check = QCheckBox("Normalised")
        self.normalised_check.setToolTip("Show each row as percentages of the true class's "
                                         "images (recall on the diagonal)")
        self.predicted_title = QLabel("predicted class →")
        self.predicted_title.setAlignment(Qt.AlignmentFlag.AlignCenter)
        self.predicted_title.setForegroundRole(QPalette.ColorRole.PlaceholderText)
        self.true_title = VerticalLabel("true class →")
        self.true_title.setForegroundRole(QPalette.ColorRole.PlaceholderText)

        self.metrics_model = ClassMetricsModel(self)
        self.metrics_proxy = QSortFilterProxyModel(self)
        self.metrics_proxy.setSourceModel(self.metrics_model)
        self.metrics_proxy.setSortRole(SORT_ROLE)
        self.metrics_view = QTableView()
        self.metrics_view.setModel(self.metrics_proxy)
        self.metrics_view.setSortingEnabled(True)
        self.metrics_view.sortByColumn(0, Qt.SortOrder.AscendingOrder)
        self.metrics_view.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.metrics_view.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        self.metrics_view.setAlternatingRowColors(True)
        self.metrics_view.verticalHeader().hide()
        self.metrics_view.setWordWrap(False)
        self.metrics_view.setToolTip("Per-class precision, recall and F1; click a header to "
                                     "sort by it")
        row_height = self.metrics_view.fontMetrics().height() + 8
        self.metrics_view.verticalHeader().setDefaultSectionSize(row_height)
        header = self.metrics_view.horizontalHeader()
        header.setSectionResizeMode(0, QHeaderView.ResizeMode.Stretch)
        number_width = max(78, self.metrics_view.fontMetrics().horizontalAdvance("Precision ▼")
                           + 16)
        for column in range(1, len(METRIC_COLUMNS)):
            header.setSectionResizeMode(column, QHeaderView.ResizeMode.Fixed)
            header.resizeSection(column, number_width)
        self.averages_table = QTableWidget(2, len(METRIC_COLUMNS))
        self.averages_table.setToolTip("Macro: every class counts alike; weighted: by its "
                                       "number of images")
        self.averages_table.horizontalHeader().hide()
        self.averages_table.verticalHeader().hide()
        self.averages_table.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.averages_table.setSelectionMode(QAbstractItemView.SelectionMode.NoSelection)
        self.averages_table.setFocusPolicy(Qt.FocusPolicy.NoFocus)
        self.averages_table.setVerticalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        self.averages_table.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        self.averages_table.verticalHeader().setDefaultSectionSize(row_height)
        self.averages_table.setFixedHeight(2 * row_height + 2 * self.averages_table.frameWidth())
        for column in range(len(METRIC_COLUMNS)):
            self.averages_table.setColumnWidth(column, header.sectionSize(column))


    def _build_layout(self) -> None:
        matrix_title = bold_label("Confusion matrix")
        matrix_head = QHBoxLayout()
        matrix_head.addWidget(matrix_title)
        matrix_head.addStretch(1)
        matrix_head.addWidget(self.normalised_check)
        matrix_grid = QGridLayout()
        matrix_grid.setSpacing(2)
        matrix_grid.addWidget(self.predicted_title, 0, 1)
        matrix_grid.addWidget(self.true_title, 1, 0)
        matrix_grid.addWidget(self.matrix_view, 1, 1)
        matrix_grid.setColumnStretch(2, 1)  # a few classes make a compact matrix, top left
        matrix_box = QWidget()
        # as tall as the matrix and no taller: the metrics sit right below it; a big matrix
        # shrinks (and scrolls) to leave them room
        matrix_box.setSizePolicy(QSizePolicy.Policy.Preferred, QSizePolicy.Policy.Maximum)
        matrix_layout = QVBoxLayout(matrix_box)
        matrix_layout.setContentsMargins(0, 0, 0, 0)
        matrix_layout.addLayout(matrix_head)
        matrix_layout.addLayout(matrix_grid, 1)

        metrics_box = QWidget()
        metrics_layout = QVBoxLayout(metrics_box)
        metrics_layout.setContentsMargins(0, 0, 0, 0)
        metrics_layout.setSpacing(0)
        metrics_title = bold_label("Per-class metrics")
        metrics_layout.addWidget(metrics_title)
        metrics_layout.addSpacing(4)
        metrics_layout.addWidget(self.metrics_view, 1)
        metrics_layout.addWidget(self.averages_table)

        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(matrix_box, 1)
        layout.addSpacing(8)
        layout.addWidget(metrics_box)
        layout.addStretch(0)


    def set_evaluation(self, evaluation: Evaluation) -> None:
        self.confusion_model.set_evaluation(evaluation)
        self.metrics_model.set_evaluation(evaluation)
        self._fill_averages(evaluation)
        self._size_matrix(evaluation.labels)
        self._fit_metrics(len(evaluation.labels))
        self.normalised_check.setEnabled(True)

    def clear_selection(self) -> None:
        selection = self.matrix_view.selectionModel()
        selection.blockSignals(True)  # no currentChanged: it would show a cell again
        selection.clear()
        selection.blockSignals(False)
        for widget in (self.matrix_view, self.matrix_view.horizontalHeader(),
                       self.matrix_view.verticalHeader()):
            widget.viewport().update()

    def _size_matrix(self, labels: list[str]) -> None:
        """Cells just wide enough for "100%" (the column titles are upright) and the row
        titles for the class names, long ones elided."""
        metrics = self.matrix_view.fontMetrics()
        width = max(metrics.horizontalAdvance("100%") + 20, metrics.height() + 16, 44)
        height = max(metrics.height() + 14, 30)
        self.matrix_view.horizontalHeader().setDefaultSectionSize(width)
        self.matrix_view.horizontalHeader().setMinimumSectionSize(min(width, 36))
        self.matrix_view.verticalHeader().setDefaultSectionSize(height)
        self.matrix_view.verticalHeader().setMaximumWidth(180)

    def _fit_metrics(self, rows: int) -> None:
        """The metrics table as tall as its rows, up to MAX_METRIC_ROWS (then it scrolls)."""
        view = self.metrics_view
        shown = min(max(rows, 3), MAX_METRIC_ROWS)
        height = (view.horizontalHeader().sizeHint().height()
                  + shown * view.verticalHeader().defaultSectionSize() + 2 * view.frameWidth())
        view.setFixedHeight(height + 2)

    def _fill_averages(self, evaluation: Evaluation) -> None:
        rows = (("macro avg", evaluation.macro), ("weighted avg", evaluation.weighted))
        for row, (name, metrics) in enumerate(rows):
            for column, text in enumerate(metric_cells(name, metrics)):
                item = QTableWidgetItem(text)
                font = item.font()
                font.setItalic(column == 0)
                item.setFont(font)
                alignment = Qt.AlignmentFlag.AlignLeft if column == 0 else \
                    Qt.AlignmentFlag.AlignRight
                item.setTextAlignment(alignment | Qt.AlignmentFlag.AlignVCenter)
                self.averages_table.setItem(row, column, item)

    # -- slots --------------------------------------------------------------------------

    @Slot(bool)
    def _on_normalised_check_toggled(self, checked: bool) -> None:
        self.confusion_model.set_normalised(checked)

    @Slot(QModelIndex)
    def _on_matrix_view_clicked(self, index: QModelIndex) -> None:
        if index.isValid():
            self.cell_chosen.emit(index.row(), index.column())

    @Slot(QModelIndex, QModelIndex)
    def _on_matrix_selection_current_changed(self, current: QModelIndex,
                                             previous: QModelIndex) -> None:
        if current.isValid():  # the arrow keys walk the matrix too
            self.cell_chosen.emit(current.row(), current.column())

    @Slot(int, int, int)
    def _on_metrics_header_section_resized(self, column: int, old: int, new: int) -> None:
        self.averages_table.setColumnWidth(column, new)
