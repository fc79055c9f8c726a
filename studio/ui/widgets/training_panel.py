"""TrainingPanel: the run's loop settings, Train / Pause / Stop, progress, and the result.

The panel edits ``project.config`` (sections ``train``, ``optim`` and ``data.image_size``) and
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
    QDoubleSpinBox,
    QFormLayout,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QPushButton,
    QSpinBox,
    QStyle,
    QVBoxLayout,
    QWidget,
)

from studio.engine.config import RunConfig
from studio.engine.errors import StudioError
from studio.ui.devices import (
    DeviceInfo,
    processes_hint,
    processes_limit,
    request_device_info,
)
from studio.ui.project import ProjectModel
from studio.ui.widgets.form import Field, make_combo, make_spin, signals_blocked
from studio.ui.widgets.training_progress import MUTED_COLOR, RunProgress, as_sentence

ERROR_COLOR = "#b00020"

OPTIMIZER_CHOICES = (("SGD", "sgd"), ("Adam", "adam"), ("AdamW", "adamw"))
SCHEDULE_CHOICES = (("constant", "none"), ("step decay", "step"), ("cosine", "cosine"),
                    ("one-cycle", "onecycle"))
PRECISION_CHOICES = (("auto", "auto"), ("fp32", "fp32"), ("bf16", "bf16"), ("fp16", "fp16"))
DEVICE_CHOICES = (("auto", "auto"), ("CPU", "cpu"), ("CUDA GPU", "cuda"), ("Apple GPU", "mps"))
FEATURE_CACHE_CHOICES = (("auto: when frozen layers come first", "auto"), ("off", "off"))
IMAGE_CACHE_CHOICES = (("auto: when the images fit in memory", "auto"), ("off", "off"))



# -- small helpers ----------------------------------------------------------------------------


# -- the panel --------------------------------------------------------------------------------


class TrainingPanel(RunProgress, QWidget):
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
        self._settings_box = QGroupBox("Training settings", self)
        form = QFormLayout()
        form.setFieldGrowthPolicy(QFormLayout.FieldGrowthPolicy.AllNonFixedFieldsGrow)
        form.setLabelAlignment(Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter)
        form.setHorizontalSpacing(10)

        self.epochs_spin = make_spin(1, 100_000, "How many passes over the training images.")
        self.batch_size_spin = make_spin(1, 65_536, "Images per optimizer step; lower it if memory "
                                          "runs out.", step=8)
        self.image_size_spin = make_spin(0, 2048, "Side of the square the images are resized to; "
                                          "auto uses the backbone weights' own size.", step=32,
                                          special="auto", suffix=" px")
        self.optimizer_combo = make_combo(OPTIMIZER_CHOICES, "The optimizer: AdamW is a good "
                                           "default for fine-tuning, SGD with momentum a classic.")
        self.schedule_combo = make_combo(SCHEDULE_CHOICES, "How the learning rate changes over "
                                          "the run (warm-up first, if set).")
        self.warmup_spin = QDoubleSpinBox()
        self.warmup_spin.setRange(0.0, 1000.0)
        self.warmup_spin.setDecimals(1)
        self.warmup_spin.setSingleStep(0.5)
        self.warmup_spin.setKeyboardTracking(False)
        self.warmup_spin.setSpecialValueText("none")
        self.warmup_spin.setSuffix(" epochs")
        self.warmup_spin.setToolTip("Epochs over which the learning rate ramps up from near "
                                    "zero (one-cycle has its own warm-up).")
        self.precision_combo = make_combo(PRECISION_CHOICES, "Number format: bf16/fp16 are faster "
                                           "on GPUs; auto picks the best this device supports.")
        self.device_combo = make_combo(DEVICE_CHOICES, "Where training runs; auto prefers a GPU.")
        self.device_hint = QLabel("checking…")
        self.device_hint.setToolTip("What auto picks on this machine.")
        self.device_hint.setStyleSheet(f"color: {MUTED_COLOR};")
        self.device_hint.setWordWrap(True)
        self.processes_spin = make_spin(1, processes_limit("auto", None), "Processes training "
                                         "together on this machine: one per GPU on CUDA, or CPU "
                                         "processes. Each takes its own batch of the batch size.")
        self.processes_hint = QLabel("one process")
        self.processes_hint.setToolTip("How the processes share the work.")
        self.processes_hint.setStyleSheet(f"color: {MUTED_COLOR};")
        self.processes_hint.setWordWrap(True)
        self.early_stopping_spin = make_spin(0, 1000, "Stop when the monitored metric has not "
                                              "improved for this many epochs; off trains them all.",
                                              special="off", suffix=" epochs")
        self.seed_spin = make_spin(0, 2**31 - 1, "Seed of the random split, shuffling and "
                                    "augmentation; the same seed repeats a run.")
        self.feature_cache_combo = make_combo(
            FEATURE_CACHE_CHOICES, "Run the frozen layers once per image and train the rest on "
            "their saved output: many times faster when only the last layers train. Used when "
            "the frozen layers come first and images are not randomly augmented (or augmented "
            "views are cached).")
        self.cache_views_spin = make_spin(
            0, 64, "With augmentation on: how many augmented views of every image to pass "
            "through the frozen layers and cache; none trains on images as usual.",
            special="none", suffix=" views")
        self.image_cache_combo = make_combo(
            IMAGE_CACHE_CHOICES, "Decode and resize every image once and keep it in memory, so "
            "epochs after the first skip reading the files.")
        self.tensorboard_check = QCheckBox("Write TensorBoard event files")
        self.tensorboard_check.setToolTip(
            "Write the run's curves, settings and confusion matrix into its tensorboard/ "
            "folder; tensorboard --logdir on the runs folder shows every run.")
        if importlib.util.find_spec("tensorboard") is None:  # finding it imports nothing
            self.tensorboard_check.setText("Write TensorBoard event files (the tensorboard "
                                           "package is not installed)")

        form.addRow("Epochs", self.epochs_spin)
        form.addRow("Batch size", self.batch_size_spin)
        form.addRow("Image size", self.image_size_spin)
        form.addRow("Optimizer", self.optimizer_combo)
        form.addRow("LR schedule", self.schedule_combo)
        form.addRow("Warm-up", self.warmup_spin)
        form.addRow("Precision", self.precision_combo)
        form.addRow("Device", self.device_combo)
        form.addRow("", self.device_hint)
        form.addRow("Processes", self.processes_spin)
        form.addRow("", self.processes_hint)
        form.addRow("Early stopping", self.early_stopping_spin)
        form.addRow("Seed", self.seed_spin)
        form.addRow("Feature cache", self.feature_cache_combo)
        form.addRow("Augmented views", self.cache_views_spin)
        form.addRow("Image cache", self.image_cache_combo)
        form.addRow("TensorBoard", self.tensorboard_check)

        self.error_label = QLabel()
        self.error_label.setWordWrap(True)
        self.error_label.setStyleSheet(f"color: {ERROR_COLOR};")
        self.error_label.setToolTip("Why the last edit was not accepted.")
        self.error_label.setVisible(False)

        box_layout = QVBoxLayout(self._settings_box)
        box_layout.addLayout(form)
        box_layout.addWidget(self.error_label)

        def spin(label: str, widget: QSpinBox | QDoubleSpinBox, section: str,
                 name: str) -> Field:
            return Field(label, widget, section, name, widget.value, widget.setValue)

        def combo(label: str, widget: QComboBox, section: str, name: str) -> Field:
            return Field(label, widget, section, name, widget.currentData,
                          partial(self._select, widget))

        def show_image_size(value: int | None) -> None:
            self.image_size_spin.setValue(value or 0)

        self._fields = [
            spin("Epochs", self.epochs_spin, "train", "epochs"),
            spin("Batch size", self.batch_size_spin, "train", "batch_size"),
            Field("Image size", self.image_size_spin, "data", "image_size",
                   lambda: self.image_size_spin.value() or None, show_image_size),
            combo("Optimizer", self.optimizer_combo, "optim", "optimizer"),
            combo("LR schedule", self.schedule_combo, "optim", "schedule"),
            spin("Warm-up", self.warmup_spin, "optim", "warmup_epochs"),
            combo("Precision", self.precision_combo, "train", "precision"),
            combo("Device", self.device_combo, "train", "device"),
            spin("Processes", self.processes_spin, "train", "processes"),
            spin("Early stopping", self.early_stopping_spin, "train", "early_stopping"),
            spin("Seed", self.seed_spin, "train", "seed"),
            combo("Feature cache", self.feature_cache_combo, "train", "feature_cache"),
            spin("Augmented views", self.cache_views_spin, "train", "cache_views"),
            combo("Image cache", self.image_cache_combo, "train", "image_cache"),
            Field("TensorBoard", self.tensorboard_check, "train", "tensorboard",
                  self.tensorboard_check.isChecked, self.tensorboard_check.setChecked),
        ]
        for field in self._fields:
            widget = field.widget
            signal = (widget.currentIndexChanged if isinstance(widget, QComboBox)
                      else widget.toggled if isinstance(widget, QCheckBox)
                      else widget.valueChanged)
            signal.connect(partial(self._on_field_edited, field))

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

    @staticmethod
    def _select(combo: QComboBox, value: Any) -> None:
        index = combo.findData(value)
        if index >= 0:
            combo.setCurrentIndex(index)

    def _show_config(self, config: RunConfig) -> None:
        """Put the config's values in the widgets without echoing them back as edits."""
        with signals_blocked([field.widget for field in self._fields]):
            # a project from a bigger machine shows its own count, not this machine's limit
            self.processes_spin.setMaximum(max(config.train.processes, processes_limit(
                config.train.device, self._device_info)))
            for field in self._fields:
                field.write(getattr(getattr(config, field.section), field.name))
        self.warmup_spin.setEnabled(config.optim.schedule != "onecycle")
        self.processes_hint.setText(processes_hint(config.train.processes, config.train.device,
                                                   self._device_info))

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
        model = self.device_combo.model()
        for value, present, why in (("cuda", info.cuda, "no CUDA GPU on this machine"),
                                    ("mps", info.mps, "no Apple GPU on this machine")):
            index = self.device_combo.findData(value)
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
