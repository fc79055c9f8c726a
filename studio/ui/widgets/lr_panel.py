"""LearningRatePanel: base learning rate and weight decay, parameter groups with their own rates,
the discriminative and layer-decay presets, and progressive unfreezing.

Everything here edits ``config.optim`` (and, for progressive unfreezing, ``config.freeze`` and
``config.stages``) through the project; the engine's ``default_groups``, ``discriminative``,
``description_layer_decay`` and ``gradual_unfreezing`` do the arithmetic. A refused value
never raises a dialog: the reason appears in red next to what was refused, and the config is
left as it was. "Find learning rate…" opens the learning-rate finder (``lr_finder_dialog``),
whose suggestion comes back through the project like any other edit.
"""

from __future__ import annotations

from PySide6.QtCore import QItemSelectionModel, Qt, QTimer, Slot
from PySide6.QtGui import QPalette
from PySide6.QtWidgets import (
    QAbstractItemView,
    QDoubleSpinBox,
    QFrame,
    QGridLayout,
    QGroupBox,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QLineEdit,
    QPushButton,
    QSpinBox,
    QTableView,
    QTableWidget,
    QVBoxLayout,
    QWidget,
)

from studio.engine.backbones import ModelDescription
from studio.engine.config import MAX_LR, MAX_WEIGHT_DECAY, ParamGroupSpec, RunConfig
from studio.engine.errors import ConfigError
from studio.engine.layer_decay import DEFAULT_RATE, description_layer_decay
from studio.engine.params import (
    default_groups,
    discriminative,
)
from studio.ui.models.groups import (
    DECAY_COLUMN,
    LR_COLUMN,
    NAME_COLUMN,
    PARAMS_COLUMN,
    PATTERNS_COLUMN,
    GroupTableModel,
    format_number,
    parse_number,
)
from studio.ui.project import ProjectModel
from studio.ui.text import sentence
from studio.ui.widgets.lr_finder_dialog import LRFinderDialog
from studio.ui.widgets.lr_stages import ProgressiveStages, fit_height

ERROR_STYLE = "color: #c62828;"
STAGE_HEADERS = ("From epoch", "Unfreezes", "Trainable", "LR scale")
DEFAULT_FACTOR = 2.6


class LearningRatePanel(ProgressiveStages, QWidget):
    """Edits the optimizer's rates and groups and the unfreezing schedule."""

    def __init__(self, project: ProjectModel, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self._project = project
        self._shown_lr: float | None = None
        self._shown_decay: float | None = None
        self._previous: RunConfig | None = None
        self._grouping_cache: tuple[ModelDescription, float, tuple[ParamGroupSpec, ...]] | None \
            = None
        self.model = GroupTableModel(project, self)
        self.finder_dialog: LRFinderDialog | None = None  # made when first opened
        self._make_widgets()
        self._build_layout()
        self._connect()
        self._on_project_description_changed(project.description)
        self._on_project_config_changed(project.config)
        self._on_model_model_reset()

    # -- construction -------------------------------------------------------------------

    def _make_widgets(self) -> None:
        self.lr_edit = QLineEdit()
        self.lr_edit.setToolTip("The learning rate of every parameter not in a group with its "
                                "own rate, e.g. 1e-3 or 0.001")
        self.decay_edit = QLineEdit()
        self.decay_edit.setToolTip("Weight decay for groups that do not set their own, "
                                   "between 0 and 1 (e.g. 1e-4)")
        for edit in (self.lr_edit, self.decay_edit):
            edit.setMaximumWidth(140)
            edit.setPlaceholderText("e.g. 1e-4")
        self.lr_error = self._error_label("Why the base learning rate was not changed")
        self.find_button = QPushButton("Find learning rate…")
        self.find_button.setObjectName("findLearningRateButton")
        self.decay_error = self._error_label("Why the weight decay was not changed")

        self.one_group_button = QPushButton("One group")
        self.one_group_button.setToolTip("Train every parameter at the base learning rate")
        self.stage_button = QPushButton("Group by stage")
        self.stage_button.setToolTip("One group per stage of the backbone (stem, blocks, head), "
                                     "all at the base learning rate")
        self.discriminative_button = QPushButton("Discriminative")
        self.discriminative_button.setToolTip("Head at the base rate; each earlier group's rate "
                                              "divided by the factor once more")
        self.factor_spin = QDoubleSpinBox()
        self.factor_spin.setRange(1.0, 10.0)
        self.factor_spin.setSingleStep(0.1)
        self.factor_spin.setDecimals(1)
        self.factor_spin.setValue(DEFAULT_FACTOR)
        self.factor_spin.setPrefix("÷ ")
        self.factor_spin.setToolTip("How much smaller each earlier group's learning rate is "
                                    "(fastai uses 2.6)")
        self.layer_decay_button = QPushButton("Layer decay")
        self.layer_decay_button.setToolTip("One group per layer (block): the head at the base "
                                           "rate, each layer below it × the rate once more")
        self.layer_decay_spin = QDoubleSpinBox()
        self.layer_decay_spin.setRange(0.05, 1.0)
        self.layer_decay_spin.setSingleStep(0.05)
        self.layer_decay_spin.setDecimals(2)
        self.layer_decay_spin.setValue(DEFAULT_RATE)
        self.layer_decay_spin.setPrefix("× ")
        self.layer_decay_spin.setToolTip("How much smaller each deeper layer's learning rate is "
                                         "(timm's fine-tuning recipes use 0.65–0.75)")
        self.add_button = QPushButton("Add group")
        self.add_button.setToolTip("Add a group for modules no group claims yet; edit its "
                                   "patterns and rate in the table")
        self.remove_button = QPushButton("Remove group")
        self.remove_button.setToolTip("Remove the selected groups; their parameters fall back to "
                                      "the default group")

        self.table = QTableView()
        self.table.setModel(self.model)
        self.table.setToolTip("Double-click a cell to edit it; the default row takes every "
                              "parameter no group claims")
        self.table.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        self.table.setEditTriggers(QAbstractItemView.EditTrigger.DoubleClicked
                                   | QAbstractItemView.EditTrigger.EditKeyPressed
                                   | QAbstractItemView.EditTrigger.AnyKeyPressed)
        self.table.setAlternatingRowColors(True)
        self.table.verticalHeader().hide()
        self.table.setWordWrap(False)
        self.table.setStyleSheet("QTableView::item { padding: 0 6px; }")
        header = self.table.horizontalHeader()
        header.setSectionResizeMode(PATTERNS_COLUMN, QHeaderView.ResizeMode.Stretch)
        for column in (NAME_COLUMN, LR_COLUMN, DECAY_COLUMN, PARAMS_COLUMN):
            header.setSectionResizeMode(column, QHeaderView.ResizeMode.ResizeToContents)
        header.setMinimumSectionSize(70)
        self.table.verticalHeader().setDefaultSectionSize(
            self.table.fontMetrics().height() + 10)
        self.refusal_label = self._error_label("Why the last change to the groups was refused")
        self.groups_hint = QLabel("Every parameter trains at the base rate. “Group by stage” "
                                  "gives each block of the backbone its own row and rate; "
                                  "“Discriminative” then slows the early layers down.")
        self.groups_hint.setWordWrap(True)
        self.groups_hint.setForegroundRole(QPalette.ColorRole.PlaceholderText)
        self.groups_hint.setToolTip("How parameter groups work")

        self.progressive_box = QGroupBox("Progressive unfreezing")
        self.progressive_box.setCheckable(True)
        self.progressive_box.setChecked(False)
        self.progressive_box.setToolTip("Start by training the head only, then unfreeze one more "
                                        "group, from the top, every few epochs")
        self.every_spin = QSpinBox()
        self.every_spin.setRange(1, 1000)
        self.every_spin.setValue(1)
        self.every_spin.setToolTip("Epochs between two unfreezing steps")
        self.first_spin = QSpinBox()
        self.first_spin.setRange(2, 100_000)
        self.first_spin.setValue(2)
        self.first_spin.setToolTip("The epoch at which the first group below the head unfreezes")
        self.stage_table = QTableWidget(0, len(STAGE_HEADERS))
        self.stage_table.setHorizontalHeaderLabels(list(STAGE_HEADERS))
        self.stage_table.setToolTip("What the run trains from each epoch on")
        self.stage_table.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.stage_table.setSelectionMode(QAbstractItemView.SelectionMode.NoSelection)
        self.stage_table.setFocusPolicy(Qt.FocusPolicy.NoFocus)
        self.stage_table.verticalHeader().hide()
        self.stage_table.setAlternatingRowColors(True)
        self.stage_table.setWordWrap(False)
        self.stage_table.setStyleSheet("QTableView::item { padding: 0 6px; }")
        stage_header = self.stage_table.horizontalHeader()
        stage_header.setSectionResizeMode(QHeaderView.ResizeMode.ResizeToContents)
        stage_header.setSectionResizeMode(1, QHeaderView.ResizeMode.Stretch)
        self.stage_table.verticalHeader().setDefaultSectionSize(
            self.stage_table.fontMetrics().height() + 8)
        self.stage_hint = QLabel()
        self.stage_hint.setWordWrap(True)
        self.stage_hint.setEnabled(False)  # muted text
        self.stage_hint.setToolTip("A note about the unfreezing schedule")
        self.stage_error = self._error_label("Why progressive unfreezing could not be set up")

    def _error_label(self, tooltip: str) -> QLabel:
        label = QLabel()
        label.setWordWrap(True)
        label.setStyleSheet(ERROR_STYLE)
        label.setToolTip(tooltip)
        label.hide()
        return label

    def _build_layout(self) -> None:
        rates = QGridLayout()
        rates.setColumnStretch(3, 1)
        rates.setHorizontalSpacing(10)
        lr_label = QLabel("Base learning rate")
        lr_label.setBuddy(self.lr_edit)
        decay_label = QLabel("Weight decay")
        decay_label.setBuddy(self.decay_edit)
        rates.addWidget(lr_label, 0, 0)
        rates.addWidget(self.lr_edit, 0, 1)
        rates.addWidget(self.find_button, 0, 2)
        rates.addWidget(self.lr_error, 0, 3)
        rates.addWidget(decay_label, 1, 0)
        rates.addWidget(self.decay_edit, 1, 1)
        rates.addWidget(self.decay_error, 1, 3)

        buttons = QHBoxLayout()
        buttons.addWidget(self.one_group_button)
        buttons.addWidget(self.stage_button)
        buttons.addSpacing(12)
        buttons.addWidget(self.discriminative_button)
        buttons.addWidget(self.factor_spin)
        buttons.addSpacing(12)
        buttons.addWidget(self.layer_decay_button)
        buttons.addWidget(self.layer_decay_spin)
        buttons.addStretch(1)
        buttons.addWidget(self.add_button)
        buttons.addWidget(self.remove_button)

        groups_title = QLabel("Parameter groups")
        font = groups_title.font()
        font.setBold(True)
        groups_title.setFont(font)
        groups_title.setToolTip("Groups of parameters that train at their own learning rate")

        schedule = QHBoxLayout()
        schedule.addWidget(QLabel("Unfreeze one more group every"))
        schedule.addWidget(self.every_spin)
        schedule.addWidget(QLabel("epochs, starting at epoch"))
        schedule.addWidget(self.first_spin)
        schedule.addStretch(1)
        box = QVBoxLayout(self.progressive_box)
        box.addLayout(schedule)
        box.addWidget(self.stage_table)
        box.addWidget(self.stage_hint)

        line = QFrame()
        line.setFrameShape(QFrame.Shape.HLine)
        line.setFrameShadow(QFrame.Shadow.Sunken)

        outer = QVBoxLayout(self)
        outer.addLayout(rates)
        outer.addWidget(line)
        outer.addWidget(groups_title)
        outer.addLayout(buttons)
        outer.addWidget(self.table)
        outer.addWidget(self.groups_hint)
        outer.addWidget(self.refusal_label)
        outer.addSpacing(6)
        outer.addWidget(self.progressive_box)
        outer.addWidget(self.stage_error)  # outside the box: readable while it is unticked
        outer.addStretch(1)

    def _connect(self) -> None:
        self.lr_edit.editingFinished.connect(self._on_lr_edit_editing_finished)
        self.find_button.clicked.connect(self._on_find_button_clicked)
        self.decay_edit.editingFinished.connect(self._on_decay_edit_editing_finished)
        self.one_group_button.clicked.connect(self._on_one_group_button_clicked)
        self.stage_button.clicked.connect(self._on_stage_button_clicked)
        self.discriminative_button.clicked.connect(self._on_discriminative_button_clicked)
        self.layer_decay_button.clicked.connect(self._on_layer_decay_button_clicked)
        self.add_button.clicked.connect(self._on_add_button_clicked)
        self.remove_button.clicked.connect(self._on_remove_button_clicked)
        self.model.edit_refused.connect(self._on_model_edit_refused)
        self.model.modelReset.connect(self._on_model_model_reset)
        self.progressive_box.toggled.connect(self._on_progressive_box_toggled)
        self.every_spin.valueChanged.connect(self._on_every_spin_value_changed)
        self.first_spin.valueChanged.connect(self._on_first_spin_value_changed)
        self._project.config_changed.connect(self._on_project_config_changed)
        self._project.description_changed.connect(self._on_project_description_changed)
        self._project.scan_changed.connect(self._on_project_scan_changed)
        self._on_project_scan_changed(self._project.scan)

    # -- project signals ----------------------------------------------------------------

    def _on_project_config_changed(self, config: RunConfig) -> None:
        optim = config.optim
        if optim.lr != self._shown_lr:
            self._shown_lr = optim.lr
            self.lr_edit.setText(format_number(optim.lr))
            self._show(self.lr_error, "")
        if optim.weight_decay != self._shown_decay:
            self._shown_decay = optim.weight_decay
            self.decay_edit.setText(format_number(optim.weight_decay))
            self._show(self.decay_error, "")
        previous, self._previous = self._previous, config
        if previous is not None and previous.optim.groups != optim.groups:
            self._show(self.refusal_label, "")
            if config.stages and config.stages == previous.stages:
                # the groups moved under an unfreezing schedule: let it follow them, once
                # every listener has seen this change
                QTimer.singleShot(0, self, self._regenerate_stages)
        self._sync_progressive(config)

    def _on_project_description_changed(self, description: ModelDescription | None) -> None:
        known = description is not None
        for button in (self.stage_button, self.discriminative_button, self.layer_decay_button,
                       self.add_button):
            button.setEnabled(known)
        self.factor_spin.setEnabled(known)
        self.layer_decay_spin.setEnabled(known)
        self._sync_progressive(self._project.config)

    @Slot(object)
    def _on_project_scan_changed(self, scan: object) -> None:
        self.find_button.setEnabled(scan is not None)
        self.find_button.setToolTip(
            "Sweep the learning rate over a few hundred training batches and suggest a base "
            "rate" if scan is not None else
            "Choose a dataset folder first (step 1): the finder trains on its images")

    # -- learning-rate finder -----------------------------------------------------------

    def open_finder(self) -> LRFinderDialog:
        """Show the finder (one per panel, kept with its last curve)."""
        if self.finder_dialog is None:
            self.finder_dialog = LRFinderDialog(self._project, self)
        self.finder_dialog.show()
        self.finder_dialog.raise_()
        self.finder_dialog.activateWindow()
        return self.finder_dialog

    @Slot()
    def _on_find_button_clicked(self) -> None:
        self.open_finder()

    # -- rates --------------------------------------------------------------------------

    def _on_lr_edit_editing_finished(self) -> None:
        value, reason = parse_number(self.lr_edit.text(), "the learning rate", 0.0, MAX_LR,
                                     allow_low=False)
        if value is not None and format_number(value) == format_number(self._shown_lr or 0):
            value = self._shown_lr  # the shown rounding, committed unchanged
        self._commit_rate(self.lr_error, reason, lr=value)

    def _on_decay_edit_editing_finished(self) -> None:
        value, reason = parse_number(self.decay_edit.text(), "weight decay", 0.0, MAX_WEIGHT_DECAY)
        if value is not None and format_number(value) == format_number(self._shown_decay or 0):
            value = self._shown_decay
        self._commit_rate(self.decay_error, reason, weight_decay=value)

    def _commit_rate(self, error_label: QLabel, reason: str, **fields: float | None) -> None:
        if reason:
            self._show(error_label, reason)
            return
        try:
            self._project.update("optim", **fields)
        except ConfigError as error:
            self._show(error_label, sentence(str(error)))
            return
        self._show(error_label, "")

    # -- groups -------------------------------------------------------------------------

    def _on_one_group_button_clicked(self) -> None:
        self.model.apply(())

    def _on_stage_button_clicked(self) -> None:
        groups = self._stage_grouping()
        if groups is not None:
            self.model.apply(groups)

    def _on_discriminative_button_clicked(self) -> None:
        groups = self._project.config.optim.groups or self._stage_grouping()
        if not groups:
            return
        try:
            spread = discriminative(groups, self._project.config.optim.lr,
                                    self.factor_spin.value())
        except ConfigError as error:
            self._show(self.refusal_label, sentence(str(error)))
            return
        self.model.apply(spread)

    def _on_layer_decay_button_clicked(self) -> None:
        """Replace the groups with one per layer: the table then shows (and edits) each rate."""
        description = self._project.description
        if description is None:
            self._show(self.refusal_label, "Choose a backbone first: the layers follow its "
                                           "blocks.")
            return
        try:
            groups = description_layer_decay(description, self._project.config.optim.lr,
                                             self.layer_decay_spin.value())
        except ConfigError as error:
            self._show(self.refusal_label, sentence(str(error)))
            return
        self.model.apply(groups)

    def _on_add_button_clicked(self) -> None:
        group = self.model.new_group()
        if group is None or not self.model.apply([*self.model.groups, group]):
            return
        row = len(self.model.groups) - 1
        index = self.model.index(row, PATTERNS_COLUMN)
        self.table.selectionModel().setCurrentIndex(
            index, QItemSelectionModel.SelectionFlag.ClearAndSelect
            | QItemSelectionModel.SelectionFlag.Rows)
        self.table.scrollTo(index)

    def _on_remove_button_clicked(self) -> None:
        rows = {index.row() for index in self.table.selectionModel().selectedRows()}
        rows.discard(len(self.model.groups))  # the default row stays
        if not rows:
            self._show(self.refusal_label, "Select a group to remove; the default row always "
                                           "stays.")
            return
        self.model.apply([g for i, g in enumerate(self.model.groups) if i not in rows])

    def _on_model_model_reset(self) -> None:
        fit_height(self.table, self.model.rowCount(), 3, 9)
        grouped = bool(self.model.groups)
        self.groups_hint.setVisible(not grouped)
        self.one_group_button.setEnabled(grouped)
        self.remove_button.setEnabled(grouped)

    def _on_model_edit_refused(self, reason: str) -> None:
        self._show(self.refusal_label, reason)

    def _stage_grouping(self, quiet: bool = False) -> tuple[ParamGroupSpec, ...] | None:
        """The engine's grouping by stage at the base rate; remembered per model and rate
        because working it out takes a while on big models."""
        description = self._project.description
        if description is None:
            if not quiet:
                self._show(self.refusal_label, "Choose a backbone first: the groups follow "
                                               "its stages.")
            return None
        lr = self._project.config.optim.lr
        cached = self._grouping_cache
        if cached is not None and cached[0] is description and cached[1] == lr:
            return cached[2]
        try:
            groups = default_groups(description.model, description.head, lr)
        except ConfigError as error:
            if not quiet:
                self._show(self.refusal_label, sentence(str(error)))
            return None
        self._grouping_cache = (description, lr, groups)
        return groups

    # -- helpers ------------------------------------------------------------------------

    @staticmethod
    def _show(label: QLabel, text: str) -> None:
        label.setText(text)
        label.setVisible(bool(text))
