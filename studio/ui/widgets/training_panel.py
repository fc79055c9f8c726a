"""TrainingPanel: the run's loop settings, Train / Pause / Stop, progress, and the result.

The panel edits ``project.config`` (the fields of ``train``, ``optim`` and ``data`` that declare a
Train-page tab, see studio.engine.fields) and
mirrors it back without feedback loops. It does not own the TrainingSession: the window connects
``train_requested`` & co. to the session and the session's events to the ``on_…`` slots.
"""

from __future__ import annotations

import importlib.util
from functools import partial
from typing import Any

from PySide6.QtCore import Qt, Signal, Slot
from PySide6.QtGui import QKeySequence, QShortcut
from PySide6.QtWidgets import (
    QCheckBox,
    QComboBox,
    QFormLayout,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QPushButton,
    QSpinBox,
    QStyle,
    QTabWidget,
    QVBoxLayout,
    QWidget,
)

from studio.engine.config import RunConfig, all_described
from studio.engine.errors import StudioError
from studio.engine.fields import TABS
from studio.ui.devices import (
    DeviceInfo,
    processes_hint,
    processes_limit,
    request_device_info,
)
from studio.ui.project import ProjectModel
from studio.ui.widgets.batch_finder import BatchSizeFinder
from studio.ui.widgets.form import Field, setting_field, signals_blocked
from studio.ui.widgets.training_progress import MUTED_COLOR, RunProgress, as_sentence

ERROR_COLOR = "#b00020"

# -- small helpers ----------------------------------------------------------------------------


def _hint(text: str, tooltip: str) -> QLabel:
    """A muted line under a setting: what it means on this machine."""
    label = QLabel(text)
    label.setToolTip(tooltip)
    label.setStyleSheet(f"color: {MUTED_COLOR};")
    label.setWordWrap(True)
    return label


# -- the panel --------------------------------------------------------------------------------


class TrainingPanel(RunProgress, BatchSizeFinder, QWidget):
    """Loop settings, run controls, live progress and the outcome of the last run."""

    train_requested = Signal()
    pause_requested = Signal()
    resume_requested = Signal()
    stop_requested = Signal()

    def __init__(self, project: ProjectModel, parent: QWidget | None = None,
                 with_shortcuts: bool = True) -> None:
        super().__init__(parent)
        self._project = project
        self._running = False
        self._paused = False
        self._epochs = 0
        self._start_epoch = 1
        self._steps = 0
        self._best_val_acc: tuple[float, int] | None = None  # (accuracy 0–1, epoch)
        self._run_dir = ""
        self._device_info: DeviceInfo | None = None

        self._build_settings()
        self._build_controls(with_shortcuts)
        self._build_progress()
        self._build_result()

        layout = QVBoxLayout(self)
        layout.setContentsMargins(6, 6, 6, 6)
        layout.setSpacing(8)
        layout.addWidget(self._settings_box)
        layout.addLayout(self._buttons)
        layout.addWidget(self._progress_box)
        layout.addWidget(self._result_box)
        layout.addStretch(1)

        project.config_changed.connect(self._on_project_config_changed)
        self._show_config(project.config)
        info = request_device_info(self._on_device_probe_succeeded)
        if info is not None:
            self._show_device_info(info)
        self.set_running(False)

    # -- construction ---------------------------------------------------------------------

    def _build_settings(self) -> None:
        """One tab per group of the loop's settings; every row is made from its config field's
        declared label, help, choices and limits (studio.engine.fields), so a new field shows
        up here by being declared."""
        self._settings_box = QGroupBox("Training settings", self)
        self.settings_tabs = QTabWidget(self._settings_box)
        self.settings_tabs.setDocumentMode(True)
        forms: dict[str, QFormLayout] = {}
        for tab in TABS:
            page = QWidget()
            form = forms[tab] = QFormLayout(page)
            form.setFieldGrowthPolicy(QFormLayout.FieldGrowthPolicy.AllNonFixedFieldsGrow)
            form.setLabelAlignment(Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter)
            form.setHorizontalSpacing(10)
            self.settings_tabs.addTab(page, tab.replace("&", "&&"))  # not a mnemonic

        self.device_hint = _hint("checking…", "What auto picks on this machine.")
        self.processes_hint = _hint("one process", "How the processes share the work.")
        self._build_batch_finder()
        self.batch_hint.setStyleSheet(f"color: {MUTED_COLOR};")
        below = {"train.device": self.device_hint, "train.processes": self.processes_hint,
                 "train.batch_size": self.batch_hint}
        self._fields: list[Field] = []
        self.widgets: dict[str, QWidget] = {}  # "train.epochs" → its spin box
        for item in all_described():
            if item.setting.tab not in forms or item.section not in ("train", "data", "optim"):
                continue
            field = setting_field(item)
            self._fields.append(field)
            self.widgets[field.key] = field.widget
            if field.key == "train.batch_size":  # the spin box, then Find
                row = QHBoxLayout()
                row.addWidget(field.widget, 1)
                row.addWidget(self.find_batch_button)
                forms[item.setting.tab].addRow(field.label, row)
            else:
                forms[item.setting.tab].addRow(field.label, field.widget)
            if field.key in below:
                forms[item.setting.tab].addRow("", below[field.key])
            field.edited.connect(partial(self._on_field_edited, field))
        if importlib.util.find_spec("tensorboard") is None:  # finding it imports nothing
            tensorboard = self.widgets["train.tensorboard"]
            assert isinstance(tensorboard, QCheckBox)
            tensorboard.setText(f"{tensorboard.text()} (the tensorboard package is not "
                                f"installed)")

        self.error_label = QLabel()
        self.error_label.setWordWrap(True)
        self.error_label.setStyleSheet(f"color: {ERROR_COLOR};")
        self.error_label.setToolTip("Why the last edit was not accepted.")
        self.error_label.setVisible(False)

        box_layout = QVBoxLayout(self._settings_box)
        box_layout.addWidget(self.settings_tabs)
        box_layout.addWidget(self.error_label)

    def _build_controls(self, with_shortcuts: bool) -> None:
        style = self.style()
        self.train_button = QPushButton(style.standardIcon(QStyle.StandardPixmap.SP_MediaPlay),
                                        "Train")
        self.train_button.setObjectName("trainButton")
        self.train_button.setToolTip("Start training with these settings (Ctrl+Return).")
        self.pause_button = QPushButton(style.standardIcon(QStyle.StandardPixmap.SP_MediaPause),
                                        "Pause")
        self.pause_button.setToolTip("Pause after the current batch; press again to resume.")
        self.stop_button = QPushButton(style.standardIcon(QStyle.StandardPixmap.SP_MediaStop),
                                       "Stop")
        self.stop_button.setToolTip("Stop after the current batch; the last finished epoch is "
                                    "kept and can be resumed (Esc).")
        for button in (self.train_button, self.pause_button, self.stop_button):
            button.setMinimumHeight(30)
        self.train_button.clicked.connect(self._on_train_button_clicked)
        self.pause_button.clicked.connect(self._on_pause_button_clicked)
        self.stop_button.clicked.connect(self._on_stop_button_clicked)
        self._buttons = QHBoxLayout()
        self._buttons.addWidget(self.train_button, 2)
        self._buttons.addWidget(self.pause_button, 1)
        self._buttons.addWidget(self.stop_button, 1)

        # Ctrl+Return and Ctrl+. work anywhere in the window; Esc only with the focus in this
        # panel, so that Esc in another panel's search box never stops a run.
        window = Qt.ShortcutContext.WindowShortcut
        panel = Qt.ShortcutContext.WidgetWithChildrenShortcut
        self._shortcuts: list[QShortcut] = []
        if with_shortcuts:
            for keys, button, context in (("Ctrl+Return", self.train_button, window),
                                          ("Ctrl+Enter", self.train_button, window),
                                          ("Esc", self.stop_button, panel),
                                          ("Ctrl+.", self.stop_button, window)):
                shortcut = QShortcut(QKeySequence(keys), self)
                shortcut.setContext(context)
                shortcut.activated.connect(partial(self._on_shortcut_activated, button))
                self._shortcuts.append(shortcut)

    # -- settings <-> config --------------------------------------------------------------

    def _show_config(self, config: RunConfig) -> None:
        """Put the config's values in the widgets without echoing them back as edits."""
        with signals_blocked([field.widget for field in self._fields]):
            # a project from a bigger machine shows its own count, not this machine's limit
            processes = self.widgets["train.processes"]
            assert isinstance(processes, QSpinBox)
            processes.setMaximum(max(config.train.processes, processes_limit(
                config.train.device, self._device_info)))
            for field in self._fields:
                field.write(getattr(getattr(config, field.section), field.name))
        self.widgets["optim.warmup_epochs"].setEnabled(config.optim.schedule != "onecycle")
        self.processes_hint.setText(processes_hint(config.train.processes, config.train.device,
                                                   self._device_info))
        self._show_finder_device()

    @Slot(object)
    def _on_project_config_changed(self, config: RunConfig) -> None:
        self._show_config(config)

    def _on_field_edited(self, field: Field, *_: Any) -> None:
        try:
            self._project.update(field.section, **{field.name: field.read()})
        except StudioError as error:
            reason = str(error).removeprefix(f"{field.name} ")
            if reason != str(error):  # "image_size must be …" → "Image size must be …"
                reason = f"{field.label} {reason}"
            self._show_error(f"{as_sentence(reason)} The previous value is kept.")
            self._show_config(self._project.config)  # the config is unchanged: so is the form
        else:
            self._show_error("")

    def show_problem(self, message: str) -> None:
        """Say why a run cannot start yet (for example: no dataset chosen)."""
        self._show_error(message)

    def _show_error(self, message: str) -> None:
        self.error_label.setText(message)
        self.error_label.setVisible(bool(message))

    @Slot(object)
    def _on_device_probe_succeeded(self, info: DeviceInfo) -> None:
        self._show_device_info(info)

    def _show_device_info(self, info: DeviceInfo) -> None:
        self._device_info = info
        self._show_config(self._project.config)  # the processes' limit and hint depend on it
        self.device_hint.setText(f"auto → {info.auto_device} · {info.auto_precision}")
        self.device_hint.setToolTip(f"On this machine auto trains on {info.auto_device} "
                                    f"with {info.auto_precision} precision.")
        devices = self.widgets["train.device"]
        assert isinstance(devices, QComboBox)
        model = devices.model()
        for value, present, why in (("cuda", info.cuda, "no CUDA GPU on this machine"),
                                    ("mps", info.mps, "no Apple GPU on this machine")):
            index = devices.findData(value)
            item = model.item(index) if hasattr(model, "item") else None
            if item is not None and not present:
                item.setEnabled(False)
                item.setToolTip(why)
                item.setText(f"{item.text()} (none here)")

    # -- controls -------------------------------------------------------------------------

    def set_running(self, running: bool, pausable: bool = True) -> None:
        """Lock the settings and offer Pause/Stop while a run is going (Stop only, when the
        run cannot pause: several processes)."""
        self._running = running
        self._settings_box.setEnabled(not running)
        self.train_button.setEnabled(not running)
        self.pause_button.setEnabled(running and pausable)
        self.stop_button.setEnabled(running)
        self.set_paused(False)  # also puts back the tooltip of a pausable run
        if running and not pausable:
            self.pause_button.setToolTip("Several processes cannot pause; Stop keeps the last "
                                         "finished epoch, and the run can be resumed.")

    def set_paused(self, paused: bool) -> None:
        self._paused = paused
        style = self.style()
        if paused:
            self.pause_button.setText("Resume")
            self.pause_button.setIcon(style.standardIcon(QStyle.StandardPixmap.SP_MediaPlay))
            self.pause_button.setToolTip("Continue training from where it paused.")
        else:
            self.pause_button.setText("Pause")
            self.pause_button.setIcon(style.standardIcon(QStyle.StandardPixmap.SP_MediaPause))
            self.pause_button.setToolTip("Pause after the current batch; press again to resume.")
        if paused and self._running:
            self.progress_label.setText(f"Paused. {self.progress_label.text()}")
        elif self.progress_label.text().startswith("Paused. "):
            self.progress_label.setText(self.progress_label.text().removeprefix("Paused. "))

    @Slot()
    def _on_train_button_clicked(self) -> None:
        self.train_requested.emit()

    @Slot()
    def _on_pause_button_clicked(self) -> None:
        if self._paused:
            self.resume_requested.emit()
        else:
            self.pause_requested.emit()

    @Slot()
    def _on_stop_button_clicked(self) -> None:
        self.stop_requested.emit()

    def _on_shortcut_activated(self, button: QPushButton) -> None:
        if button.isEnabled():
            button.click()

    # -- progress -------------------------------------------------------------------------
