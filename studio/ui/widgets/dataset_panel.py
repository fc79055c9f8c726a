"""DatasetPanel: choose an image folder, scan it in the background, and show what is in it.

The scan (engine ``scan_folder``) runs in the thread pool through BackgroundTask, whose results
arrive on the GUI thread; ScanView (dataset_views.py) shows what it found, and its Check tab
(doctor_view.py) what is wrong with it: a relabel or remove there rescans the folder. The
RunConfig stays the source of truth: the panel writes ``data.*`` through the ProjectModel and
rescans when the folder, the validation fraction or the seed in the config no longer match what
it shows.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from PySide6.QtCore import QSignalBlocker, Qt, QTimer, Signal
from PySide6.QtGui import (
    QDragEnterEvent,
    QDropEvent,
    QPalette,
)
from PySide6.QtWidgets import (
    QComboBox,
    QDoubleSpinBox,
    QFileDialog,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QProgressBar,
    QPushButton,
    QStackedWidget,
    QStyle,
    QVBoxLayout,
    QWidget,
)

from studio.engine.config import ConfigError
from studio.engine.data import DatasetScan, scan_folder
from studio.ui.project import ProjectModel
from studio.ui.tasks import BackgroundTask
from studio.ui.text import sentence
from studio.ui.widgets.dataset_views import ERROR_COLOR, ScanView
from studio.ui.widgets.doctor_view import DoctorView

RESCAN_DELAY_MS = 300  # a val-fraction spin settles before the folder is scanned again

EMPTY_HINT = "Choose or drop a folder with one subfolder per class"

AUGMENT_CHOICES = (
    ("none", "None", "Train on the images as they are (resized and centre-cropped)"),
    ("light", "Light", "Mild random crops and horizontal flips"),
    ("standard", "Standard", "Random crops, flips and small colour changes (a good default)"),
    ("strong", "Strong", "Aggressive crops, TrivialAugment and random erasing; for small sets"),
)
BALANCE_CHOICES = (
    ("none", "None", "Every image counts the same; common classes dominate"),
    ("loss", "Class-weighted loss", "Mistakes on rare classes cost more in the loss"),
    ("sampler", "Weighted sampler", "Rare classes' images are drawn more often in each epoch"),
)

ScanKey = tuple[str, float, int]  # (folder, val_fraction, seed): what decides a scan's result


# ---------------------------------------------------------------------------------------------
# The panel


class DatasetPanel(QWidget):
    """Folder, split and augmentation settings, and what the scan found."""

    scan_finished = Signal(object)  # DatasetScan

    def __init__(self, project: ProjectModel, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self._project = project
        self._shown_scan: DatasetScan | None = None
        self._requested: ScanKey | None = None  # the last scan asked for, done or not
        self.setAcceptDrops(True)

        self._scan_task = BackgroundTask(self)
        self._scan_task.succeeded.connect(self._on_scan_task_succeeded)
        self._scan_task.failed.connect(self._on_scan_task_failed)
        self._scan_task.progressed.connect(self._on_scan_task_progressed)
        self._scan_task.running_changed.connect(self._on_scan_task_running_changed)
        self._rescan_timer = QTimer(self)
        self._rescan_timer.setSingleShot(True)
        self._rescan_timer.setInterval(RESCAN_DELAY_MS)
        self._rescan_timer.timeout.connect(self._on_rescan_timer_timeout)

        self._build_controls()
        self._results_page = ScanView()
        self._results_page.doctor_view.dataset_changed.connect(self._on_doctor_dataset_changed)
        self._results_page.files_changed.connect(self._on_doctor_dataset_changed)
        self._results_page.cleaning_failed.connect(self._on_results_page_cleaning_failed)
        self._build_empty_state()
        self._stack = QStackedWidget()
        self._stack.addWidget(self._empty_page)
        self._stack.addWidget(self._results_page)

        layout = QVBoxLayout(self)
        layout.addLayout(self._folder_row)
        layout.addLayout(self._settings_row)
        layout.addWidget(self._progress)
        layout.addWidget(self._message)
        layout.addWidget(self._stack, 1)

        self._name_widgets()

        project.config_changed.connect(self._on_project_config_changed)
        project.scan_changed.connect(self._on_project_scan_changed)
        if project.scan is not None:
            self._on_project_scan_changed(project.scan)
        self._sync_from_config()

    # -- building ---------------------------------------------------------------------------

    def _build_controls(self) -> None:
        self._folder_edit = QLineEdit()
        self._folder_edit.setPlaceholderText("Folder with one subfolder per class")
        self._folder_edit.setToolTip("The dataset folder: one subfolder of images per class "
                                     "(or train/ and val/ folders); press Enter to scan it")
        self._folder_edit.setClearButtonEnabled(True)
        self._folder_edit.setAcceptDrops(False)  # a dropped folder goes to the panel instead
        self._folder_edit.returnPressed.connect(self._on_folder_edit_return_pressed)
        self._browse_button = QPushButton("Browse…")
        self._browse_button.setToolTip("Choose the dataset folder in a file dialog")
        self._browse_button.clicked.connect(self._on_browse_button_clicked)
        self._rescan_button = QPushButton("Rescan")
        self._rescan_button.setToolTip("Scan the folder again, after adding or removing images")
        self._rescan_button.setEnabled(False)
        self._rescan_button.clicked.connect(self._on_rescan_button_clicked)
        self._folder_row = QHBoxLayout()
        folder_label = QLabel("&Folder:")
        folder_label.setBuddy(self._folder_edit)
        self._folder_row.addWidget(folder_label)
        self._folder_row.addWidget(self._folder_edit, 1)
        self._folder_row.addWidget(self._browse_button)
        self._folder_row.addWidget(self._rescan_button)

        self._val_spin = QDoubleSpinBox()
        self._val_spin.setRange(0.0, 0.9)
        self._val_spin.setSingleStep(0.05)
        self._val_spin.setDecimals(2)
        self._val_spin.setKeyboardTracking(False)
        self._val_spin.setToolTip("Share of each class held back to measure accuracy (unused "
                                  "when the folder has its own val/ folder)")
        self._val_spin.valueChanged.connect(self._on_val_spin_value_changed)
        self._augment_combo = _choice_combo(
            AUGMENT_CHOICES, "Random changes to training images that help the model generalise")
        self._augment_combo.currentIndexChanged.connect(self._on_augment_combo_index_changed)
        self._balance_combo = _choice_combo(
            BALANCE_CHOICES, "How rare classes are made to count as much as common ones")
        self._balance_combo.currentIndexChanged.connect(self._on_balance_combo_index_changed)
        self._settings_row = QHBoxLayout()
        for text, widget in (("&Validation fraction:", self._val_spin),
                             ("&Augmentation:", self._augment_combo),
                             ("&Balance classes:", self._balance_combo)):
            label = QLabel(text)
            label.setBuddy(widget)
            self._settings_row.addWidget(label)
            self._settings_row.addWidget(widget)
            self._settings_row.addSpacing(12)
        self._settings_row.addStretch(1)

        self._progress = QProgressBar()
        self._progress.setFormat("verifying %v / %m images")
        self._progress.setTextVisible(True)
        self._progress.setToolTip("Every image is decoded once, so broken files never reach "
                                  "training")
        self._progress.hide()
        self._message = QLabel()
        self._message.setWordWrap(True)
        self._message.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self._message.setStyleSheet(f"color: {ERROR_COLOR};")
        self._message.hide()

    def _build_empty_state(self) -> None:
        self._empty_page = QWidget()
        icon = QLabel()
        icon.setPixmap(self.style().standardIcon(QStyle.StandardPixmap.SP_DirOpenIcon)
                       .pixmap(48, 48))
        icon.setAlignment(Qt.AlignmentFlag.AlignHCenter)
        hint = self._empty_hint = QLabel(EMPTY_HINT)
        font = hint.font()
        font.setPointSizeF(font.pointSizeF() * 1.3)
        hint.setFont(font)
        hint.setAlignment(Qt.AlignmentFlag.AlignHCenter)
        example = QLabel("For example pets/cat/*.jpg and pets/dog/*.jpg — or train/ and val/ "
                         "folders that each hold the class folders.")
        example.setAlignment(Qt.AlignmentFlag.AlignHCenter)
        example.setWordWrap(True)
        example.setForegroundRole(QPalette.ColorRole.PlaceholderText)
        layout = QVBoxLayout(self._empty_page)
        layout.addStretch(1)
        layout.addWidget(icon)
        layout.addWidget(hint)
        layout.addWidget(example)
        layout.addStretch(2)

    def _name_widgets(self) -> None:
        """Stable object names: handles for tests, the main window and style sheets."""
        for name, widget in (("folder_edit", self._folder_edit),
                             ("browse_button", self._browse_button),
                             ("rescan_button", self._rescan_button),
                             ("val_fraction_spin", self._val_spin),
                             ("augment_combo", self._augment_combo),
                             ("balance_combo", self._balance_combo),
                             ("scan_progress", self._progress),
                             ("scan_message", self._message),
                             ("empty_hint", self._empty_hint)):
            widget.setObjectName(name)

    # -- public -----------------------------------------------------------------------------

    @property
    def scan(self) -> DatasetScan | None:
        """The scan the panel shows (also the project's, once it succeeded)."""
        return self._shown_scan

    def load_folder(self, path: str) -> None:
        """Scan ``path`` in the background with the config's validation fraction and seed."""
        path = path.strip()
        if not path:
            self._show_message("Choose a dataset folder first: one subfolder of images per "
                               "class.")
            return
        root = str(Path(path).expanduser())
        self._folder_edit.setText(root)
        config = self._project.config
        self._start_scan((root, config.data.val_fraction, config.train.seed))

    @property
    def doctor_view(self) -> DoctorView:
        """The Check tab: the doctor's findings and the relabel/remove/undo actions."""
        return self._results_page.doctor_view

    def set_doctor_run(self, run_dir: str) -> None:
        """The run whose validation predictions the Check tab uses for label errors."""
        self._results_page.doctor_view.set_run(run_dir)

    def folder_changed(self, root: str) -> None:
        """Files moved in the dataset at ``root`` elsewhere (the Evaluate gallery): rescan it
        when it is the one shown."""
        shown = self._shown_scan
        if shown is not None and Path(shown.root).resolve() == Path(root).resolve():
            self.load_folder(shown.root)

    def _on_doctor_dataset_changed(self, _changes: object) -> None:
        if self._shown_scan is not None:  # files moved: the counts follow
            self.load_folder(self._shown_scan.root)

    # -- scanning ---------------------------------------------------------------------------

    def _start_scan(self, key: ScanKey) -> None:
        self._rescan_timer.stop()
        self._requested = key
        root, val_fraction, seed = key

        def job(progress: Any) -> DatasetScan:
            return scan_folder(root, val_fraction=val_fraction, seed=seed, progress=progress)

        self._progress.setRange(0, 0)  # busy until the scan knows how many images there are
        self._scan_task.start(job, with_progress=True)

    def _on_scan_task_running_changed(self, running: bool) -> None:
        self._progress.setVisible(running)
        if running:
            self._show_message("")
        scanning = self._requested[0] if running and self._requested else ""
        self._empty_hint.setText(f"Looking at the images in {Path(scanning).name or scanning}…"
                                 if scanning else EMPTY_HINT)
        self._rescan_button.setEnabled(not running and bool(self._folder_edit.text().strip()))

    def _on_scan_task_progressed(self, done: int, total: int) -> None:
        if total <= 0:
            self._progress.setRange(0, 0)
            return
        self._progress.setRange(0, total)
        self._progress.setValue(done)

    def _on_scan_task_succeeded(self, scan: DatasetScan) -> None:
        self._show_scan(scan)
        self._project.set_scan(scan)
        if self._project.config.data.root != scan.root:
            self._update_config(root=scan.root)
        self.scan_finished.emit(scan)

    def _on_scan_task_failed(self, message: str) -> None:
        self._show_message(sentence(message))
        self._rescan_button.setEnabled(bool(self._folder_edit.text().strip()))

    def _on_rescan_timer_timeout(self) -> None:
        key = self._config_key()
        if key is not None:
            self._folder_edit.setText(key[0])
            self._start_scan(key)

    def _config_key(self) -> ScanKey | None:
        config = self._project.config
        if not config.data.root:
            return None
        root = str(Path(config.data.root).expanduser())
        return root, config.data.val_fraction, config.train.seed

    # -- showing a scan ---------------------------------------------------------------------

    def _show_scan(self, scan: DatasetScan | None) -> None:
        self._shown_scan = scan
        if scan is None:
            self._stack.setCurrentWidget(self._empty_page)
            return
        self._results_page.show_scan(scan)
        self._stack.setCurrentWidget(self._results_page)
        self._rescan_button.setEnabled(True)
        self._folder_edit.setText(scan.root)

    def _on_results_page_cleaning_failed(self, message: str) -> None:
        self._show_message(sentence(message))

    def _show_message(self, text: str) -> None:
        self._message.setText(text)
        self._message.setVisible(bool(text))

    # -- settings ---------------------------------------------------------------------------

    def _on_folder_edit_return_pressed(self) -> None:
        self.load_folder(self._folder_edit.text())

    def _on_browse_button_clicked(self) -> None:
        start = self._folder_edit.text().strip() or self._project.config.data.root
        folder = QFileDialog.getExistingDirectory(self, "Choose the dataset folder",
                                                  start or str(Path.home()))
        if folder:
            self.load_folder(folder)

    def _on_rescan_button_clicked(self) -> None:
        self.load_folder(self._folder_edit.text() or self._project.config.data.root)

    def _on_val_spin_value_changed(self, value: float) -> None:
        self._update_config(val_fraction=round(value, 2))  # the config change schedules a rescan

    def _on_augment_combo_index_changed(self, index: int) -> None:
        self._update_config(augment=self._augment_combo.itemData(index))

    def _on_balance_combo_index_changed(self, index: int) -> None:
        self._update_config(balance=self._balance_combo.itemData(index))

    def _update_config(self, **fields: Any) -> None:
        try:
            self._project.update("data", **fields)
        except ConfigError as error:
            self._show_message(sentence(str(error)))

    # -- following the project --------------------------------------------------------------

    def _on_project_config_changed(self, _config: object) -> None:
        self._sync_from_config()

    def _on_project_scan_changed(self, scan: DatasetScan | None) -> None:
        if scan is self._shown_scan:
            return  # our own scan coming back
        self._show_scan(scan)
        if scan is not None:
            config = self._project.config
            self._requested = (scan.root, config.data.val_fraction, config.train.seed)

    def _sync_from_config(self) -> None:
        """Show config.data in the widgets (without writing back) and rescan when the config
        names another folder, split or seed than the one shown."""
        data = self._project.config.data
        with QSignalBlocker(self._val_spin):
            self._val_spin.setValue(data.val_fraction)
        for combo, value in ((self._augment_combo, data.augment),
                             (self._balance_combo, data.balance)):
            with QSignalBlocker(combo):
                combo.setCurrentIndex(max(0, combo.findData(value)))
        key = self._config_key()
        if key is None or key == self._requested:
            return
        if not self._folder_edit.hasFocus():
            self._folder_edit.setText(key[0])
        self._rescan_timer.start()

    # -- drag and drop (Qt overrides) -------------------------------------------------------

    def dragEnterEvent(self, event: QDragEnterEvent) -> None:
        if _dropped_path(event) is not None:
            event.acceptProposedAction()
        else:
            event.ignore()

    def dropEvent(self, event: QDropEvent) -> None:
        path = _dropped_path(event)
        if path is None:
            event.ignore()
            return
        event.acceptProposedAction()
        self.load_folder(path)


def _choice_combo(choices: Sequence[tuple[str, str, str]], tooltip: str) -> QComboBox:
    combo = QComboBox()
    combo.setToolTip(tooltip)
    for value, text, tip in choices:
        combo.addItem(text, value)
        combo.setItemData(combo.count() - 1, tip, Qt.ItemDataRole.ToolTipRole)
    return combo


def _dropped_path(event: QDragEnterEvent | QDropEvent) -> str | None:
    """The one local folder being dragged, or None for anything else: a dropped image file
    goes on to the window, which predicts it (Evaluate page)."""
    mime = event.mimeData()
    if mime is None or not mime.hasUrls():
        return None
    urls = [url for url in mime.urls() if url.isLocalFile()]
    if len(urls) != 1 or not Path(urls[0].toLocalFile()).is_dir():
        return None
    return urls[0].toLocalFile()
