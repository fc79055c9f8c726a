"""BackbonePanel: pick a torchvision or timm backbone, its weights, its head and the image size.

Everything the panel shows comes from the project's RunConfig and the engine's zoo listing;
everything the user changes goes back through ``ProjectModel.update``. Widgets are set from the
config with their signals blocked, so showing a config never writes one.

Counting a timm model's parameters needs a (meta-device) build, so it happens in the
background, for the few rows a search leaves and for the chosen backbone.
"""

from __future__ import annotations

from typing import Any

from PySide6.QtCore import (
    QItemSelectionModel,
    QModelIndex,
    QSignalBlocker,
    QSortFilterProxyModel,
    Qt,
    Slot,
)
from PySide6.QtWidgets import (
    QAbstractItemView,
    QComboBox,
    QDoubleSpinBox,
    QFormLayout,
    QGroupBox,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QLineEdit,
    QSpinBox,
    QTableView,
    QVBoxLayout,
    QWidget,
)

from studio.engine.backbones import BackboneInfo, is_weights_file, resolve_weights
from studio.engine.config import ConfigError, HeadConfig
from studio.engine.errors import StudioError
from studio.ui.downloads import WeightsDownload
from studio.ui.models.zoo import FILTER_ROLE, NAME_ROLE, SORT_ROLE, ZooTableModel
from studio.ui.project import ProjectModel
from studio.ui.tasks import BackgroundTask
from studio.ui.text import sentence
from studio.ui.widgets.weights_box import ERROR_COLOR, WeightsBox

MIN_IMAGE_SIZE = 16  # DataConfig's bounds
MAX_IMAGE_SIZE = 2048
COUNT_AT_ONCE = 40  # uncounted timm rows a search counts in the background (0.1-0.5 s each)
HEAD_CHOICES = (("linear", "Linear", "One linear layer from the backbone's features to classes"),
                ("mlp", "Small MLP", "Linear → ReLU → dropout → linear; a little more capacity"))


class ImageSizeSpinBox(QSpinBox):
    """0 shows as "from weights" (None in the config); stepping up from it jumps straight to
    the backbone's natural size, stepping below the smallest size goes back to it."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setRange(0, MAX_IMAGE_SIZE)
        self.setSingleStep(16)
        self.setSpecialValueText("from weights")
        self.setSuffix(" px")
        self.setKeyboardTracking(False)
        self.natural_size = 224

    def stepBy(self, steps: int) -> None:
        value = self.value()
        if value == 0 and steps > 0:
            self.setValue(self.natural_size)
        elif steps < 0 and value + steps * self.singleStep() < MIN_IMAGE_SIZE:
            self.setValue(0)
        else:
            super().stepBy(steps)


class BackbonePanel(QWidget):
    """A searchable zoo table, the weights choice with its availability, the head, the size."""

    def __init__(self, project: ProjectModel, parent: QWidget | None = None,
                 downloads: WeightsDownload | None = None) -> None:
        super().__init__(parent)
        self._project = project
        self._syncing = False  # selection signals caused by showing the config
        self._refusal = ""  # why the last edit was refused, until the next edit

        self._model = ZooTableModel(parent=self)
        self._proxy = QSortFilterProxyModel(self)
        self._proxy.setSourceModel(self._model)
        self._proxy.setSortRole(SORT_ROLE)
        self._proxy.setFilterRole(FILTER_ROLE)
        self._proxy.setFilterKeyColumn(0)
        self._proxy.setFilterCaseSensitivity(Qt.CaseSensitivity.CaseInsensitive)
        self._counter = BackgroundTask(self)  # timm parameter counts, a few rows at a time
        self._counter.succeeded.connect(self._on_counter_succeeded)
        self._counter.failed.connect(self._on_counter_failed)

        self._build_zoo()
        self.weights_box = WeightsBox(project, downloads)
        self.weights_box.refused.connect(self._on_weights_box_refused)
        head_box = self._build_head()
        boxes = QHBoxLayout()
        boxes.addWidget(self.weights_box, 3)
        boxes.addWidget(head_box, 2)

        self._error = QLabel()
        self._error.setWordWrap(True)
        self._error.setStyleSheet(f"color: {ERROR_COLOR};")
        self._error.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self._error.hide()

        layout = QVBoxLayout(self)
        layout.addLayout(self._search_row)
        layout.addWidget(self._table, 1)
        layout.addLayout(boxes)
        layout.addWidget(self._error)

        for name, widget in (("search_edit", self._search_edit),
                             ("zoo_table", self._table),
                             ("current_backbone", self._current_label),
                             ("head_combo", self._head_combo),
                             ("hidden_spin", self._hidden_spin),
                             ("dropout_spin", self._dropout_spin),
                             ("image_size_spin", self._size_spin),
                             ("backbone_error", self._error)):
            widget.setObjectName(name)  # stable handles for tests and the main window

        project.config_changed.connect(self._on_project_config_changed)
        self._sync_from_config()

    # -- building ---------------------------------------------------------------------------

    def _build_zoo(self) -> None:
        self._search_edit = QLineEdit()
        self._search_edit.setPlaceholderText("Search by name or family, e.g. resnet, mobilenet, "
                                             "timm/convnext")
        self._search_edit.setToolTip("Show only backbones whose name or family contains this "
                                     "text; Enter picks the first one")
        self._search_edit.setClearButtonEnabled(True)
        self._search_edit.textChanged.connect(self._on_search_edit_text_changed)
        self._search_edit.returnPressed.connect(self._on_search_edit_return_pressed)
        self._count_label = QLabel()
        self._current_label = QLabel()
        self._current_label.setTextInteractionFlags(
            Qt.TextInteractionFlag.TextSelectableByMouse)
        self._current_label.setToolTip("The backbone this project trains")
        self._search_row = QHBoxLayout()
        search_label = QLabel("&Search:")
        search_label.setBuddy(self._search_edit)
        self._search_row.addWidget(search_label)
        self._search_row.addWidget(self._search_edit, 1)
        self._search_row.addWidget(self._count_label)
        self._search_row.addSpacing(16)
        self._search_row.addWidget(self._current_label)

        table = QTableView()
        table.setModel(self._proxy)
        table.setSortingEnabled(True)
        table.sortByColumn(0, Qt.SortOrder.AscendingOrder)
        table.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        table.setSelectionMode(QAbstractItemView.SelectionMode.SingleSelection)
        table.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        table.setAlternatingRowColors(True)
        table.setWordWrap(False)
        table.verticalHeader().hide()
        table.verticalHeader().setDefaultSectionSize(table.fontMetrics().height() + 8)
        header = table.horizontalHeader()
        header.setSectionResizeMode(QHeaderView.ResizeMode.ResizeToContents)
        header.setResizeContentsPrecision(200)  # not all ~1500 rows (timm's too) each layout
        header.setSectionResizeMode(0, QHeaderView.ResizeMode.Stretch)
        header.setHighlightSections(False)
        table.setToolTip("The torchvision classification zoo (and timm's, as timm/<name>, "
                         "when timm is installed); click a row to train that backbone, a "
                         "header to sort")
        table.selectionModel().currentRowChanged.connect(self._on_table_current_row_changed)
        self._table = table
        self._update_count()

    def _build_head(self) -> QGroupBox:
        box = QGroupBox("Head and input")
        self._head_combo = QComboBox()
        for value, text, tip in HEAD_CHOICES:
            self._head_combo.addItem(text, value)
            self._head_combo.setItemData(self._head_combo.count() - 1, tip,
                                         Qt.ItemDataRole.ToolTipRole)
        self._head_combo.setToolTip("The new classifier layer(s) that replace ImageNet's head")
        self._head_combo.currentIndexChanged.connect(self._on_head_combo_index_changed)
        self._hidden_spin = QSpinBox()
        self._hidden_spin.setRange(8, 8192)
        self._hidden_spin.setSingleStep(64)
        self._hidden_spin.setKeyboardTracking(False)
        self._hidden_spin.setToolTip("Units in the MLP head's hidden layer")
        self._hidden_spin.valueChanged.connect(self._on_hidden_spin_value_changed)
        self._dropout_spin = QDoubleSpinBox()
        self._dropout_spin.setRange(0.0, 0.95)
        self._dropout_spin.setSingleStep(0.05)
        self._dropout_spin.setDecimals(2)
        self._dropout_spin.setKeyboardTracking(False)
        self._dropout_spin.setToolTip("Share of hidden units dropped at random while training "
                                      "(MLP head only)")
        self._dropout_spin.valueChanged.connect(self._on_dropout_spin_value_changed)
        self._size_spin = ImageSizeSpinBox()
        self._size_spin.setToolTip("Side of the square images the model sees; 'from weights' "
                                   "uses the pretrained weights' size")
        self._size_spin.valueChanged.connect(self._on_size_spin_value_changed)

        form = QFormLayout(box)
        form.setFieldGrowthPolicy(QFormLayout.FieldGrowthPolicy.ExpandingFieldsGrow)
        form.addRow("&Head:", self._head_combo)
        form.addRow("Hidden &units:", self._hidden_spin)
        form.addRow("&Dropout:", self._dropout_spin)
        form.addRow("&Image size:", self._size_spin)
        return box

    # -- user edits -------------------------------------------------------------------------

    def _on_search_edit_text_changed(self, text: str) -> None:
        self._syncing = True  # a hidden current row moves the cursor; that is not a choice
        try:
            self._proxy.setFilterFixedString(text.strip())
        finally:
            self._syncing = False
        self._update_count()
        self._select_current(scroll=True)
        self._count_shown()

    def _count_shown(self) -> None:
        """Count the parameters of the shown timm rows when a search leaves only a few."""
        if self._proxy.rowCount() > COUNT_AT_ONCE:
            return
        rows = [self._proxy.mapToSource(self._proxy.index(r, 0)).row()
                for r in range(self._proxy.rowCount())]
        self._count(self._model.uncounted(rows))

    def _count(self, names: list[str]) -> None:
        if not names or self._counter.running:
            return
        from studio.engine import timm_zoo

        self._counter.start(lambda: timm_zoo.count_params(names))

    def _on_counter_succeeded(self, counts: object) -> None:
        if isinstance(counts, dict):
            self._model.set_params(counts)
        self._select_current(scroll=False)  # the current label shows the count
        self._count_shown()  # the search may have changed meanwhile

    def _on_counter_failed(self, message: str) -> None:
        self._count_label.setToolTip(f"Parameter counts: {message}")

    def _on_search_edit_return_pressed(self) -> None:
        if self._proxy.rowCount() > 0:
            self._table.setCurrentIndex(self._proxy.index(0, 0))

    def _on_table_current_row_changed(self, current: QModelIndex, _previous: QModelIndex) -> None:
        if self._syncing or not current.isValid():
            return
        name = current.data(NAME_ROLE)
        model = self._project.config.model
        if not name or name == model.backbone:
            return
        fields: dict[str, Any] = {"backbone": name}
        if _is_weights_name(model.weights):  # e.g. IMAGENET1K_V2: keep it only where it exists
            try:
                resolve_weights(name, model.weights)
            except StudioError:
                fields["weights"] = "default"
        self._update("model", **fields)

    @Slot(str)
    def _on_weights_box_refused(self, reason: str) -> None:
        self._refusal = reason
        self._show_error()

    def _on_head_combo_index_changed(self, _index: int) -> None:
        self._write_head()

    def _on_hidden_spin_value_changed(self, _value: int) -> None:
        self._write_head()

    def _on_dropout_spin_value_changed(self, _value: float) -> None:
        self._write_head()

    def _write_head(self) -> None:
        kind = self._head_combo.currentData()
        self._enable_head_fields(kind)
        try:
            head = HeadConfig(kind=kind, hidden=self._hidden_spin.value(),
                              dropout=round(self._dropout_spin.value(), 2))
        except ConfigError as error:  # the spin boxes' ranges should make this impossible
            self._refusal = sentence(str(error))
            self._sync_from_config()
            return
        if head != self._project.config.model.head:
            self._update("model", head=head)

    def _on_size_spin_value_changed(self, value: int) -> None:
        self._update("data", image_size=value or None)

    def _update(self, section: str, **fields: Any) -> None:
        """Write to the project; a refused value shows its reason and the widgets go back."""
        self._refusal = ""
        try:
            self._project.update(section, **fields)
        except ConfigError as error:
            self._refusal = sentence(str(error))
            self._sync_from_config()
        self._show_error()

    # -- following the project --------------------------------------------------------------

    def _on_project_config_changed(self, _config: object) -> None:
        self._sync_from_config()

    def _sync_from_config(self) -> None:
        config = self._project.config
        model = config.model
        self._syncing = True
        try:
            with QSignalBlocker(self._head_combo):
                self._head_combo.setCurrentIndex(max(0, self._head_combo.findData(model.head.kind)))
            with QSignalBlocker(self._hidden_spin):
                self._hidden_spin.setValue(model.head.hidden)
            with QSignalBlocker(self._dropout_spin):
                self._dropout_spin.setValue(model.head.dropout)
            self._enable_head_fields(model.head.kind)
            with QSignalBlocker(self._size_spin):
                self._size_spin.setValue(config.data.image_size or 0)
            self._select_current(scroll=True)
        finally:
            self._syncing = False
        self._show_error()

    def _select_current(self, scroll: bool) -> None:
        """Select the config's backbone in the table (when the filter shows it)."""
        name = self._project.config.model.backbone
        row = self._model.row_of(name)
        info = self._model.info(row) if row >= 0 else None
        self._current_label.setText(_current_text(name, info))
        if info is not None:
            self._size_spin.natural_size = info.input_size
            if info.params is None:
                self._count([info.name])
        index = self._proxy.mapFromSource(self._model.index(row, 0)) if row >= 0 \
            else QModelIndex()
        current = self._table.currentIndex()
        if index.isValid() and current.isValid() and current.row() == index.row() and \
                self._table.selectionModel().isRowSelected(index.row(), QModelIndex()):
            return
        was_syncing, self._syncing = self._syncing, True
        try:
            if index.isValid():
                self._table.selectionModel().setCurrentIndex(
                    index, QItemSelectionModel.SelectionFlag.ClearAndSelect
                    | QItemSelectionModel.SelectionFlag.Rows)
                if scroll:
                    self._table.scrollTo(index, QAbstractItemView.ScrollHint.PositionAtCenter)
            else:  # hidden by the search: no row may look chosen, or a click on it is lost
                self._table.selectionModel().clear()
        finally:
            self._syncing = was_syncing

    def _enable_head_fields(self, kind: str) -> None:
        self._hidden_spin.setEnabled(kind == "mlp")
        self._dropout_spin.setEnabled(kind == "mlp")

    def _update_count(self) -> None:
        shown, total = self._proxy.rowCount(), self._model.rowCount()
        self._count_label.setText(f"{total} models" if shown == total
                                  else f"{shown} of {total} models")

    def _show_error(self) -> None:
        """The last refusal, or else a size the chosen backbone cannot take."""
        text = self._refusal
        config = self._project.config
        size = config.data.image_size
        row = self._model.row_of(config.model.backbone)
        if not text and size is not None and row >= 0:
            info = self._model.info(row)
            if size < info.min_size:
                text = (f"{info.name} needs images of at least {info.min_size} pixels; choose "
                        f"a larger image size or 'from weights'.")
        self._error.setText(text)
        self._error.setVisible(bool(text))

def _is_weights_name(spec: str) -> bool:
    return spec not in ("default", "none") and not is_weights_file(spec)


def _current_text(name: str, info: BackboneInfo | None) -> str:
    if info is None:
        return f"Backbone: <b>{name}</b> <span style='color:{ERROR_COLOR}'>(not in the zoo)</span>"
    acc = f", {info.acc1:.1f} % acc@1" if info.acc1 is not None else ""
    params = "parameters not counted yet" if info.params is None \
        else f"{info.params / 1e6:.1f} M parameters"
    return f"Backbone: <b>{name}</b> ({params}{acc})"

