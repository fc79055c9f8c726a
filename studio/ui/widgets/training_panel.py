"""TrainingPanel: the run's loop settings, Train / Pause / Stop, progress, and the result.

The panel edits ``project.config`` (sections ``train``, ``optim`` and ``data.image_size``) and
mirrors it back without feedback loops. It does not own the TrainingSession: the window connects
``train_requested`` & co. to the session and the session's events to the ``on_…`` slots.
"""

from __future__ import annotations

import html
import importlib.util
from functools import partial
from pathlib import Path
from typing import Any

from PySide6.QtCore import Qt, QUrl, Signal, Slot
from PySide6.QtGui import QDesktopServices, QKeySequence, QShortcut
from PySide6.QtWidgets import (
    QCheckBox,
    QComboBox,
    QDoubleSpinBox,
    QFormLayout,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QProgressBar,
    QPushButton,
    QSpinBox,
    QStyle,
    QVBoxLayout,
    QWidget,
)

from studio.engine.config import RunConfig
from studio.engine.errors import StudioError
from studio.engine.events import (
    BatchEnded,
    CacheReport,
    EpochEnded,
    FitEnded,
    FitStarted,
    Outcome,
)
from studio.ui.devices import (
    DeviceInfo,
    processes_hint,
    processes_limit,
    request_device_info,
)
from studio.ui.project import ProjectModel
from studio.ui.text import plural
from studio.ui.widgets.form import Field, make_combo, make_spin, signals_blocked

ERROR_COLOR = "#b00020"
MUTED_COLOR = "#6b6b6b"

OPTIMIZER_CHOICES = (("SGD", "sgd"), ("Adam", "adam"), ("AdamW", "adamw"))
SCHEDULE_CHOICES = (("constant", "none"), ("step decay", "step"), ("cosine", "cosine"),
                    ("one-cycle", "onecycle"))
PRECISION_CHOICES = (("auto", "auto"), ("fp32", "fp32"), ("bf16", "bf16"), ("fp16", "fp16"))
DEVICE_CHOICES = (("auto", "auto"), ("CPU", "cpu"), ("CUDA GPU", "cuda"), ("Apple GPU", "mps"))
FEATURE_CACHE_CHOICES = (("auto: when frozen layers come first", "auto"), ("off", "off"))
IMAGE_CACHE_CHOICES = (("auto: when the images fit in memory", "auto"), ("off", "off"))

OUTCOME_ICONS = {
    Outcome.COMPLETED: QStyle.StandardPixmap.SP_DialogApplyButton,
    Outcome.EARLY_STOPPED: QStyle.StandardPixmap.SP_MessageBoxInformation,
    Outcome.CANCELLED: QStyle.StandardPixmap.SP_MediaStop,
    Outcome.FAILED: QStyle.StandardPixmap.SP_MessageBoxCritical,
}


# -- small helpers ----------------------------------------------------------------------------


def format_duration(seconds: float) -> str:
    """1:23, 12:03, 1:02:03."""
    total = max(0, round(seconds))
    hours, rest = divmod(total, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


def _sentence(text: str) -> str:
    text = text.strip().replace("val_acc", "val accuracy").replace("val_loss", "val loss")
    if not text:
        return text
    text = text[0].upper() + text[1:]
    return text if text[-1] in ".!?" else text + "."


# -- the panel --------------------------------------------------------------------------------


class TrainingPanel(QWidget):
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

    def _build_progress(self) -> None:
        self._progress_box = QGroupBox("Progress", self)
        self.progress_bar = QProgressBar()
        self.progress_bar.setRange(0, 1)
        self.progress_bar.setValue(0)
        self.progress_bar.setFormat("%p %")
        self.progress_bar.setToolTip("Progress over the whole run: every batch of every epoch.")
        self.progress_label = QLabel("Not started. Press Train (Ctrl+Return) to begin.")
        self.progress_label.setWordWrap(True)
        self.progress_label.setToolTip("Epoch, batch, training speed and time left.")
        self.run_info_label = QLabel()
        self.run_info_label.setWordWrap(True)
        self.run_info_label.setStyleSheet(f"color: {MUTED_COLOR};")
        self.run_info_label.setToolTip("What this run trains on.")
        self.run_info_label.setVisible(False)
        self.cache_label = QLabel()
        self.cache_label.setWordWrap(True)
        self.cache_label.setStyleSheet(f"color: {MUTED_COLOR};")
        self.cache_label.setToolTip("Whether the frozen layers' output and the decoded images "
                                    "are cached, and why not when they are not.")
        self.cache_label.setVisible(False)
        self._caches: dict[str, str] = {}
        box_layout = QVBoxLayout(self._progress_box)
        box_layout.addWidget(self.progress_bar)
        box_layout.addWidget(self.progress_label)
        box_layout.addWidget(self.run_info_label)
        box_layout.addWidget(self.cache_label)

    def _build_result(self) -> None:
        self._result_box = QGroupBox("Result", self)
        self.result_icon = QLabel()
        self.result_icon.setFixedSize(28, 28)
        self.result_icon.setAlignment(Qt.AlignmentFlag.AlignTop | Qt.AlignmentFlag.AlignHCenter)
        self.result_icon.setToolTip("How the last run ended.")
        self.result_label = QLabel()
        self.result_label.setWordWrap(True)
        self.result_label.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.result_label.setToolTip("What happened in the last run.")
        self.best_label = QLabel()
        self.best_label.setToolTip("The best validation accuracy of the last run.")
        self.folder_label = QLabel()
        self.folder_label.setWordWrap(True)
        self.folder_label.setTextFormat(Qt.TextFormat.RichText)
        self.folder_label.linkActivated.connect(self._on_folder_label_link_activated)
        self.hint_label = QLabel()
        self.hint_label.setWordWrap(True)
        self.hint_label.setTextFormat(Qt.TextFormat.RichText)
        self.hint_label.setStyleSheet(f"color: {MUTED_COLOR};")
        self.hint_label.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.hint_label.setToolTip("How to continue this run.")

        top = QHBoxLayout()
        top.setSpacing(8)
        top.addWidget(self.result_icon, 0, Qt.AlignmentFlag.AlignTop)
        top.addWidget(self.result_label, 1)
        box_layout = QVBoxLayout(self._result_box)
        box_layout.addLayout(top)
        box_layout.addWidget(self.best_label)
        box_layout.addWidget(self.folder_label)
        box_layout.addWidget(self.hint_label)
        self._result_box.setVisible(False)

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
            self._show_error(f"{_sentence(reason)} The previous value is kept.")
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

    @Slot(object)
    def on_fit_started(self, event: FitStarted) -> None:
        self._epochs, self._start_epoch = event.epochs, event.start_epoch
        self._steps = max(1, event.steps_per_epoch)
        self._best_val_acc = None
        self._run_dir = event.run_dir
        self.progress_bar.setRange(0, (event.epochs - event.start_epoch + 1) * self._steps)
        self.progress_bar.setValue(0)
        verb = "Resuming at" if event.start_epoch > 1 else "Starting"
        self.progress_label.setText(f"{verb} epoch {event.start_epoch}/{event.epochs}…")
        # exact counts, as on the Layers page: a head-only run trains a few thousand of millions
        trainable = (f"{event.trainable_params:,} of {event.total_params:,} parameters "
                     f"trainable")
        self.run_info_label.setText(
            f"{event.device} · {event.precision} · {event.train_images:,} train / "
            f"{event.val_images:,} val images · {plural(len(event.classes), 'class', 'classes')}"
            f" · {trainable}"
            f"{f' · {event.processes} processes' if event.processes > 1 else ''}")
        self.run_info_label.setVisible(True)
        self._caches = {}
        self.cache_label.setVisible(False)
        self._result_box.setVisible(False)

    @Slot(object)
    def on_cache_reported(self, event: CacheReport) -> None:
        """One line per cache: on (images, size), reused, or off with the reason."""
        if event.state == "building":
            what = ("Computing the frozen layers' output" if event.kind == "features"
                    else "Decoding the images")
            self.progress_label.setText(f"{what} for {event.images:,} images, once…")
        text = event.describe()
        self._caches[event.kind] = text[:1].upper() + text[1:]
        self.cache_label.setText("\n".join(self._caches[k] for k in ("features", "images")
                                           if k in self._caches))
        self.cache_label.setVisible(True)

    @Slot(object)
    def on_batch_ended(self, event: BatchEnded) -> None:
        steps = max(1, event.steps)
        if steps != self._steps:  # the loader's length is authoritative
            self._steps = steps
            self.progress_bar.setMaximum((self._epochs - self._start_epoch + 1) * steps)
        self.progress_bar.setValue((event.epoch - self._start_epoch) * steps + event.step)
        text = (f"Epoch {event.epoch}/{self._epochs} · batch {event.step}/{steps} · "
                f"{event.images_per_second:,.0f} img/s · ETA {format_duration(event.eta_seconds)}")
        if event.step >= steps:
            text += " · validating…"
        self.progress_label.setText(f"Paused. {text}" if self._paused else text)

    @Slot(object)
    def on_epoch_ended(self, event: EpochEnded) -> None:
        self.progress_bar.setValue((event.epoch - self._start_epoch + 1) * self._steps)
        if event.val_acc == event.val_acc and (self._best_val_acc is None
                                               or event.val_acc > self._best_val_acc[0]):
            self._best_val_acc = (event.val_acc, event.epoch)
        parts = [f"Epoch {event.epoch}/{self._epochs} done in {format_duration(event.seconds)}"]
        if event.val_acc == event.val_acc:  # not NaN: there is a validation split
            parts.append(f"val accuracy {event.val_acc * 100:.1f} %")
            parts.append(f"val loss {event.val_loss:.3f}")
        self.progress_label.setText(" · ".join(parts))

    # -- result ---------------------------------------------------------------------------

    @Slot(object)
    def on_fit_ended(self, event: FitEnded) -> None:
        done = event.epochs_completed
        if event.outcome is Outcome.COMPLETED:
            summary = (f"Training completed: {plural(done, 'epoch')} in "
                       f"{format_duration(event.seconds)}.")
        elif event.outcome is Outcome.EARLY_STOPPED:
            summary = _sentence(event.message)
        elif event.outcome is Outcome.CANCELLED:
            summary = (f"Stopped by you after {plural(done, 'complete epoch')}."
                       if done else "Stopped by you before the first epoch finished.")
        else:
            reason = _sentence(event.message)
            summary = f"Training failed: {reason[:1].lower()}{reason[1:]}"
        icon = self.style().standardIcon(OUTCOME_ICONS[event.outcome])
        self.result_icon.setPixmap(icon.pixmap(24, 24))
        self.result_icon.setToolTip(event.outcome.value.replace("_", " "))
        self.result_label.setText(summary)

        best = self._best_val_acc
        if event.monitor == "val_acc" and event.best_metric is not None and event.best_epoch:
            best = (event.best_metric, event.best_epoch)
        self.best_label.setText(f"Best val accuracy: <b>{best[0] * 100:.1f} %</b> (epoch "
                                f"{best[1]})" if best else "")
        self.best_label.setVisible(best is not None)

        run_dir = event.run_dir or self._run_dir
        self._run_dir = run_dir
        if run_dir and Path(run_dir).is_dir():
            url = QUrl.fromLocalFile(str(Path(run_dir).resolve())).toString()
            self.folder_label.setText(f"Run folder: <a href='{html.escape(url)}'>"
                                      f"{html.escape(_short_path(run_dir))}</a>")
            self.folder_label.setToolTip(f"Open {run_dir} in the file manager.")
        elif run_dir:
            self.folder_label.setText(f"Run folder: {html.escape(_short_path(run_dir))} "
                                      f"(not created)")
            self.folder_label.setToolTip(run_dir)
        self.folder_label.setVisible(bool(run_dir))

        hint = ""
        if event.outcome is Outcome.CANCELLED:
            hint = (f"Resume from epoch {done + 1} with:<br><code>studio train --resume "
                    f"{html.escape(run_dir)}</code>" if done
                    else "No epoch had finished, so there is nothing to resume.")
        self.hint_label.setText(hint)
        self.hint_label.setVisible(bool(hint))
        if event.outcome is Outcome.COMPLETED:
            self.progress_bar.setValue(self.progress_bar.maximum())
        self.progress_label.setText(_sentence(f"{event.outcome.value.replace('_', ' ')} after "
                                              f"{format_duration(event.seconds)}"))
        self._result_box.setVisible(True)

    @Slot(str)
    def _on_folder_label_link_activated(self, link: str) -> None:
        if not QDesktopServices.openUrl(QUrl(link)):
            self.hint_label.setText(f"The folder could not be opened here; it is "
                                    f"{html.escape(QUrl(link).toLocalFile())}.")
            self.hint_label.setVisible(True)


def _short_path(path: str, keep: int = 2) -> str:
    """The last ``keep`` parts of a path (the full path is in the tooltip)."""
    parts = Path(path).parts
    return path if len(parts) <= keep + 1 else "…/" + "/".join(parts[-keep:])
