"""LayersPanel: which parameters train. A filterable tree of the model (checked = trainable),
presets, a context menu, and a live count of what will train. While a run trains, two more
columns show how each layer learns (gradient norm, update / weight), from the engine's
LayerStats; they are hidden and empty when no run is live.

Everything goes through the project: the tree is a ParamTreeModel mirror, presets set a
FreezeSpec, and the summary is recomputed from the model's prefix sums, so a click stays cheap
on models with a thousand parameter tensors.
"""

from __future__ import annotations

import math

from PySide6.QtCore import (
    QModelIndex,
    QPersistentModelIndex,
    QPoint,
    QSortFilterProxyModel,
    Qt,
    QTimer,
)
from PySide6.QtGui import QPalette
from PySide6.QtWidgets import (
    QAbstractItemView,
    QCheckBox,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QLineEdit,
    QMenu,
    QPushButton,
    QStackedWidget,
    QTreeView,
    QVBoxLayout,
    QWidget,
)

from studio.engine.backbones import ModelDescription
from studio.engine.config import FreezeSpec, RunConfig
from studio.engine.events import FitEnded, FitStarted, LayerStats
from studio.engine.lora import lora_line
from studio.ui.models.learning import LOW_RATIO
from studio.ui.models.param_tree import (
    FULL_NAME_ROLE,
    HEADERS,
    LEARNING_COLUMNS,
    LORA_COLUMN,
    NAME_COLUMN,
    PARAMS_COLUMN,
    SHAPE_COLUMN,
    ParamTreeModel,
    format_shape,
)
from studio.ui.project import ProjectModel
from studio.ui.widgets.lora_bar import LoraBar

PLACEHOLDER = "Pick a dataset and a backbone to see its layers"
ERROR_STYLE = "color: #c62828;"
FILTER_DELAY_MS = 150


def format_share(share: float) -> str:
    """A percentage that never reads 0.0 % when something does train."""
    percent = 100 * share
    if percent == 0 or percent >= 0.1:
        return f"{percent:.1f} %"
    return f"{percent:.3f} %" if percent >= 0.001 else "< 0.001 %"


def summary_text(trainable: int, total: int) -> str:
    share = trainable / total if total else 0.0
    return f"Trainable {trainable:,} of {total:,} parameters ({format_share(share)})"


class LayersPanel(QWidget):
    """The layer tree with its presets; edits the project's freeze spec."""

    def __init__(self, project: ProjectModel, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self._project = project
        self.model = ParamTreeModel(project, self)
        self.proxy = QSortFilterProxyModel(self)
        self.proxy.setSourceModel(self.model)
        self.proxy.setRecursiveFilteringEnabled(True)
        self.proxy.setAutoAcceptChildRows(True)  # a matching module keeps its parameters
        self.proxy.setFilterCaseSensitivity(Qt.CaseSensitivity.CaseInsensitive)
        self.proxy.setFilterRole(FULL_NAME_ROLE)
        self.proxy.setFilterKeyColumn(NAME_COLUMN)

        self.filter_edit = QLineEdit()
        self.filter_edit.setPlaceholderText("Filter by name, e.g. layer4.1 or bn")
        self.filter_edit.setClearButtonEnabled(True)
        self._filter_timer = QTimer(self)
        self._filter_timer.setSingleShot(True)
        self._filter_timer.setInterval(FILTER_DELAY_MS)
        self.filter_edit.setToolTip("Show only modules and parameters whose full name contains "
                                    "this text")
        self.head_only_button = QPushButton("Train head only")
        self.head_only_button.setToolTip("Freeze the whole backbone and train only the new "
                                         "classifier head")
        self.train_all_button = QPushButton("Train all")
        self.train_all_button.setToolTip("Train every parameter of the model")
        self.bn_check = QCheckBox("Frozen BatchNorm layers keep their statistics")
        self.bn_check.setToolTip("BatchNorm layers whose parameters are all frozen stay in eval "
                                 "mode, so their running statistics are not updated")

        self.tree = QTreeView()
        self.tree.setModel(self.proxy)
        self.tree.setUniformRowHeights(True)
        self.tree.setAlternatingRowColors(True)
        self.tree.setSelectionMode(QAbstractItemView.SelectionMode.ExtendedSelection)
        self.tree.setContextMenuPolicy(Qt.ContextMenuPolicy.CustomContextMenu)
        self.tree.setToolTip("Tick a row to train it, untick it to freeze it; right-click for "
                             "more")
        self.tree.setAnimated(False)
        header = self.tree.header()
        header.setStretchLastSection(False)
        header.setSectionResizeMode(NAME_COLUMN, QHeaderView.ResizeMode.Stretch)
        header.setSectionResizeMode(SHAPE_COLUMN, QHeaderView.ResizeMode.Interactive)
        header.setSectionResizeMode(PARAMS_COLUMN, QHeaderView.ResizeMode.Interactive)
        header.setSectionResizeMode(LORA_COLUMN, QHeaderView.ResizeMode.Interactive)
        for column in LEARNING_COLUMNS:
            header.setSectionResizeMode(column, QHeaderView.ResizeMode.Interactive)
            self.tree.setColumnHidden(column, True)  # shown while a run is live
        header.setDefaultAlignment(Qt.AlignmentFlag.AlignLeft | Qt.AlignmentFlag.AlignVCenter)

        self.summary_label = QLabel()
        self.summary_label.setToolTip("How many parameters the optimizer will update")
        font = self.summary_label.font()
        font.setBold(True)
        self.summary_label.setFont(font)
        self.error_label = QLabel()
        self.error_label.setWordWrap(True)
        self.error_label.setStyleSheet(ERROR_STYLE)
        self.error_label.setToolTip("Why the saved freeze setting does not fit this model")
        self.error_label.hide()
        self.learning_label = QLabel()
        self.learning_label.setToolTip(
            "The Grad norm and Update / weight columns show the last sampled optimizer step of "
            "the run in progress (refreshed up to twice a second); frozen rows stay empty. An "
            "update / weight ratio in amber is so small that the layer hardly changes")
        self.learning_label.hide()
        self.lora_bar = LoraBar(project)
        self._run_description: ModelDescription | None = None  # the live run's, from its start

        self.placeholder = QLabel(PLACEHOLDER)
        self.placeholder.setAlignment(Qt.AlignmentFlag.AlignCenter)
        self.placeholder.setWordWrap(True)
        self.placeholder.setForegroundRole(QPalette.ColorRole.PlaceholderText)
        big = self.placeholder.font()
        big.setPointSizeF(big.pointSizeF() * 1.3)
        self.placeholder.setFont(big)
        self.placeholder.setToolTip("The layer tree appears once a backbone is chosen")

        self._build_layout()
        self._connect()
        self._on_model_counts_changed(*self.model.counts())
        self._on_model_freeze_error_changed(self.model.freeze_error)
        self._on_project_description_changed(project.description)
        self._on_project_config_changed(project.config)
        self._on_model_model_reset()

    # -- layout -------------------------------------------------------------------------

    def _build_layout(self) -> None:
        presets = QHBoxLayout()
        presets.addWidget(self.filter_edit, 1)
        presets.addSpacing(8)
        presets.addWidget(self.head_only_button)
        presets.addWidget(self.train_all_button)

        footer = QHBoxLayout()
        footer.addWidget(self.summary_label, 1)
        footer.addSpacing(16)
        footer.addWidget(self.learning_label)
        footer.addSpacing(12)
        footer.addWidget(self.bn_check)

        content = QWidget()
        column = QVBoxLayout(content)
        column.setContentsMargins(0, 0, 0, 0)
        column.addLayout(presets)
        column.addWidget(self.tree, 1)
        column.addWidget(self.error_label)
        column.addWidget(self.lora_bar)
        column.addLayout(footer)

        self.stack = QStackedWidget()
        self.stack.addWidget(self.placeholder)
        self.stack.addWidget(content)
        outer = QVBoxLayout(self)
        outer.addWidget(self.stack)

    def _connect(self) -> None:
        self.filter_edit.textChanged.connect(self._on_filter_edit_text_changed)
        self._filter_timer.timeout.connect(self._on_filter_timer_timeout)
        self.head_only_button.clicked.connect(self._on_head_only_button_clicked)
        self.train_all_button.clicked.connect(self._on_train_all_button_clicked)
        self.bn_check.toggled.connect(self._on_bn_check_toggled)
        self.tree.customContextMenuRequested.connect(self._on_tree_custom_context_menu_requested)
        self.model.counts_changed.connect(self._on_model_counts_changed)
        self.model.freeze_error_changed.connect(self._on_model_freeze_error_changed)
        self.model.modelReset.connect(self._on_model_model_reset)
        self._project.description_changed.connect(self._on_project_description_changed)
        self._project.config_changed.connect(self._on_project_config_changed)

    # -- project and model signals ------------------------------------------------------

    def _on_project_description_changed(self, description: ModelDescription | None) -> None:
        self.stack.setCurrentIndex(0 if description is None else 1)

    def _on_project_config_changed(self, config: RunConfig) -> None:
        self.bn_check.blockSignals(True)
        self.bn_check.setChecked(config.freeze.bn_frozen)
        self.bn_check.blockSignals(False)

    def _on_model_counts_changed(self, trainable: int, total: int) -> None:
        adapters = self.model.adapter_params()
        if adapters:
            self.summary_label.setText(lora_line(trainable, total, adapters,
                                                 len(self.model.lora_layers)))
        else:
            self.summary_label.setText(summary_text(trainable, total))

    def _on_model_model_reset(self) -> None:
        self._size_columns()
        self._apply_filter_expansion()

    # -- the run in progress (the window connects the session's signals) -----------------

    def on_fit_started(self, _event: FitStarted) -> None:
        """A new run: empty learning columns, shown until it ends."""
        self._run_description = self.model.description  # what the run was started with
        self.model.clear_layer_stats()
        self._show_learning(True)
        self.learning_label.setText("Live learning: waiting for the first step")

    def on_layer_stats(self, event: LayerStats) -> None:
        self._show_learning(True)
        same = self._run_description is None or self.model.description is self._run_description
        if not same or not self.model.set_layer_stats(event):
            self.model.clear_layer_stats()
            self.learning_label.setText("Live: the run trains another model than this tree")
            return
        self.learning_label.setText(
            f"Live at step {event.global_step:,} · amber: hardly learning "
            f"(< 1e{round(math.log10(LOW_RATIO))})")

    def on_fit_ended(self, _event: FitEnded) -> None:
        """No run is live: the learning columns go (their figures were of that run)."""
        self.model.clear_layer_stats()
        self._run_description = None
        self._show_learning(False)

    # -- user actions -------------------------------------------------------------------

    def _on_filter_edit_text_changed(self, _text: str) -> None:
        self._filter_timer.start()  # typing "weight" filters once, not six times

    def _on_filter_timer_timeout(self) -> None:
        self.proxy.setFilterFixedString(self.filter_edit.text().strip())
        self._apply_filter_expansion()

    def _on_head_only_button_clicked(self) -> None:
        self._project.set_freeze(FreezeSpec(preset="head_only", bn_frozen=self._bn_frozen()))

    def _on_train_all_button_clicked(self) -> None:
        self._project.set_freeze(FreezeSpec(bn_frozen=self._bn_frozen()))

    def _on_bn_check_toggled(self, checked: bool) -> None:
        self._project.update("freeze", bn_frozen=checked)

    def _on_tree_custom_context_menu_requested(self, point: QPoint) -> None:
        menu = self.context_menu(self.tree.indexAt(point))
        if menu is not None:
            menu.popup(self.tree.viewport().mapToGlobal(point))

    # -- public actions (the context menu's; tests and the window may call them) --------

    def context_menu(self, clicked: QModelIndex) -> QMenu | None:
        """The menu for a row of the view (a proxy index), acting on the selection if the row
        is part of it."""
        if not clicked.isValid() or self.model.description is None:
            return None
        rows = self._rows_for(clicked)
        name = self.model.full_name(self.proxy.mapToSource(clicked))
        many = len(rows) > 1
        menu = QMenu(self)
        menu.setAttribute(Qt.WidgetAttribute.WA_DeleteOnClose)
        menu.setToolTipsVisible(True)
        up_to = menu.addAction(f"Freeze up to here ({name})")
        up_to.setToolTip("Freeze this module and every parameter before it; train the rest")
        up_to.triggered.connect(lambda: self.freeze_up_to(name))
        freeze = menu.addAction("Freeze selected" if many else "Freeze this")
        freeze.setToolTip("Freeze every parameter in this row (or the selected rows)")
        freeze.triggered.connect(lambda: self.model.set_trainable(rows, False))
        train = menu.addAction("Train selected" if many else "Train this")
        train.setToolTip("Train every parameter in this row (or the selected rows)")
        train.triggered.connect(lambda: self.model.set_trainable(rows, True))
        adaptable = sum(self.model.adaptable_under(row) for row in rows)
        if adaptable:
            rank = self._project.config.lora.rank
            lora = menu.addAction(f"LoRA on {'selected' if many else 'this'} (rank {rank})")
            lora.setToolTip(f"Put LoRA adapters on the {adaptable} Linear, Conv2d and "
                            f"attention layers here: their weights stay frozen, the adapters "
                            f"train")
            lora.triggered.connect(lambda: self.model.set_lora(rows, True))
            if any(self.model.lora_under(row) for row in rows):
                off = menu.addAction("Remove LoRA here")
                off.setToolTip("Take the LoRA adapters off the layers here (they stay frozen)")
                off.triggered.connect(lambda: self.model.set_lora(rows, False))
        menu.addSeparator()
        expand = menu.addAction("Expand all")
        expand.setToolTip("Open every module in the tree")
        expand.triggered.connect(self.tree.expandAll)
        collapse = menu.addAction("Collapse all")
        collapse.setToolTip("Close every module in the tree")
        collapse.triggered.connect(self.tree.collapseAll)
        return menu

    def freeze_up_to(self, name: str) -> None:
        """Freeze module (or parameter) ``name`` and everything registered before it."""
        self._project.set_freeze(FreezeSpec(preset="up_to", up_to=name,
                                            bn_frozen=self._bn_frozen()))

    def set_filter(self, text: str) -> None:
        """Filter now (no typing delay)."""
        self.filter_edit.setText(text)
        self._filter_timer.stop()
        self._on_filter_timer_timeout()

    # -- helpers ------------------------------------------------------------------------

    def _bn_frozen(self) -> bool:
        return self._project.config.freeze.bn_frozen

    def _rows_for(self, clicked: QModelIndex) -> list[QPersistentModelIndex]:
        """The selected rows if the clicked one is among them, else just the clicked row
        (persistent: the menu stays open while the model may change)."""
        selected = self.tree.selectionModel().selectedRows(NAME_COLUMN)
        clicked = clicked.siblingAtColumn(NAME_COLUMN)
        chosen = selected if clicked in selected else [clicked]
        return [QPersistentModelIndex(self.proxy.mapToSource(index)) for index in chosen]

    def _apply_filter_expansion(self) -> None:
        """Filtering opens everything that matched; no filter shows the top level opened."""
        self.tree.setUpdatesEnabled(False)
        if self.proxy.filterRegularExpression().pattern():
            self.tree.expandAll()
        else:
            self.tree.collapseAll()
            for row in range(self.proxy.rowCount()):
                self.tree.expand(self.proxy.index(row, 0))
        self.tree.setUpdatesEnabled(True)

    def _show_learning(self, shown: bool) -> None:
        if self.tree.isColumnHidden(LEARNING_COLUMNS[0]) != shown:
            return  # already so: twice a second, do nothing
        for column in LEARNING_COLUMNS:
            self.tree.setColumnHidden(column, not shown)
        self.learning_label.setVisible(shown)
        if not shown:
            self.learning_label.clear()

    def _size_columns(self) -> None:
        """Widths from the longest shape and count (one pass; no ResizeToContents on big
        models)."""
        metrics = self.tree.fontMetrics()
        shape_width = metrics.horizontalAdvance(HEADERS[SHAPE_COLUMN])
        count_width = metrics.horizontalAdvance(HEADERS[PARAMS_COLUMN])
        description = self.model.description
        if description is not None:
            shapes = {format_shape(leaf.shape or ()) for leaf in description.tree.leaves()}
            shape_width = max([shape_width, *(metrics.horizontalAdvance(s) for s in shapes)])
            count_width = max(count_width, metrics.horizontalAdvance(f"{description.total:,}"))
        padding = 4 * metrics.horizontalAdvance("M")
        self.tree.setColumnWidth(SHAPE_COLUMN, shape_width + padding)
        self.tree.setColumnWidth(PARAMS_COLUMN, count_width + padding)
        self.tree.setColumnWidth(LORA_COLUMN, metrics.horizontalAdvance("12 layers") + padding)
        for column in LEARNING_COLUMNS:  # "1.2e-3" is narrower than its header
            self.tree.setColumnWidth(column, metrics.horizontalAdvance(HEADERS[column]) + padding)

    def _on_model_freeze_error_changed(self, error: str) -> None:
        """A freeze spec from a file may not fit this model: say why, in one sentence."""
        description = self.model.description
        message = ""
        if error and description is not None:
            message = (f"The saved freeze setting does not fit {description.backbone}: {error}. "
                       f"Pick a preset or tick the layers to train.")
        self.error_label.setText(message)
        self.error_label.setVisible(bool(message))
