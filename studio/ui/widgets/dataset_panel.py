"""DatasetPanel: choose an image folder, scan it in the background, and show what is in it.

The scan (engine ``scan_folder``) and the thumbnails run in the thread pool through
BackgroundTask, whose results arrive on the GUI thread. The RunConfig stays the source of truth:
the panel writes ``data.*`` through the ProjectModel and rescans when the folder, the validation
fraction or the seed in the config no longer match what it shows.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from pathlib import Path
from typing import Any

import pyqtgraph as pg
from PySide6.QtCore import QEvent, QSignalBlocker, QSize, Qt, QTimer, Signal
from PySide6.QtGui import (
    QDragEnterEvent,
    QDropEvent,
    QFontMetrics,
    QIcon,
    QPalette,
)
from PySide6.QtWidgets import (
    QAbstractItemView,
    QComboBox,
    QDoubleSpinBox,
    QFileDialog,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QLineEdit,
    QListView,
    QListWidget,
    QListWidgetItem,
    QProgressBar,
    QPushButton,
    QSplitter,
    QStackedWidget,
    QStyle,
    QTableWidget,
    QTableWidgetItem,
    QTabWidget,
    QTreeWidget,
    QTreeWidgetItem,
    QVBoxLayout,
    QWidget,
)

from studio.engine.config import ConfigError
from studio.engine.data import IMBALANCE_RATIO, DatasetScan, scan_folder
from studio.ui.project import ProjectModel
from studio.ui.tasks import BackgroundTask
from studio.ui.text import sentence
from studio.ui.thumbnails import Thumbnail, make_thumbnail, thumbnail_pixmap

THUMBNAIL_SIZE = 64  # pixels, the longer side
THUMBNAILS_PER_CLASS = 4
MAX_THUMBNAILS = 240  # many classes: fewer per class, never thousands of icons
RESCAN_DELAY_MS = 300  # a val-fraction spin settles before the folder is scanned again
MAX_BAR_LABELS = 30  # more classes than this: no count at the end of each bar

EMPTY_HINT = "Choose or drop a folder with one subfolder per class"
ERROR_COLOR = "#c62828"
BAR_COLOR = "#4c78a8"
RARE_BAR_COLOR = "#e39b2d"

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
# Thumbnails: plain functions that run in the thread pool (no Qt here)


def thumbnail_samples(scan: DatasetScan, per_class: int = THUMBNAILS_PER_CLASS,
                      limit: int = MAX_THUMBNAILS) -> list[tuple[str, str]]:
    """(class name, path) of the first few training images of every class, at most ``limit``."""
    if not scan.classes:
        return []
    per_class = max(1, min(per_class, limit // len(scan.classes)))
    chosen: dict[int, list[str]] = {}
    for sample in (*scan.splits.get("train", ()), *scan.splits.get("val", ())):
        paths = chosen.setdefault(sample.label, [])
        if len(paths) < per_class:
            paths.append(sample.path)
    pairs = [(scan.classes[label], path) for label in sorted(chosen) for path in chosen[label]]
    return pairs[:limit]


def load_thumbnails(pairs: Sequence[tuple[str, str]]) -> list[Thumbnail]:
    """Thumbnails of ``pairs`` in order, decoded a few at a time (Pillow releases the GIL)."""
    with ThreadPoolExecutor(max_workers=4, thread_name_prefix="studio-thumbs") as pool:
        made = pool.map(lambda pair: make_thumbnail(*pair, THUMBNAIL_SIZE), pairs)
        return [thumb for thumb in made if thumb is not None]


# ---------------------------------------------------------------------------------------------
# The panel


class ClassAxis(pg.AxisItem):
    """A left axis that names the bars; with more classes than fit, every n-th one."""

    def __init__(self) -> None:
        super().__init__("left")
        self.setStyle(textFillLimits=[(0, 0.95)])  # labels may fill the axis; we space them
        self.names: list[str] = []

    def tickValues(self, minVal: float, maxVal: float, size: float) -> list[Any]:
        if not self.names:
            return []
        line = QFontMetrics(self.style.get("tickFont") or self.font()).height() * 1.25
        fit = max(1, int(size // line))
        low, high = sorted((minVal, maxVal))  # an inverted view gives them high first
        step = max(1, math.ceil(min(len(self.names), high - low) / fit))
        first = max(0, math.ceil(low))
        last = min(len(self.names) - 1, math.floor(high))
        return [(step, [float(i) for i in range(first, last + 1) if i % step == 0])]

    def tickStrings(self, values: list[float], scale: float, spacing: float) -> list[str]:
        return [_short(self.names[int(v)]) if 0 <= int(v) < len(self.names) else ""
                for v in values]


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
        self._thumbnail_task = BackgroundTask(self)
        self._thumbnail_task.succeeded.connect(self._on_thumbnail_task_succeeded)
        self._thumbnail_task.failed.connect(self._on_thumbnail_task_failed)
        self._rescan_timer = QTimer(self)
        self._rescan_timer.setSingleShot(True)
        self._rescan_timer.setInterval(RESCAN_DELAY_MS)
        self._rescan_timer.timeout.connect(self._on_rescan_timer_timeout)

        self._build_controls()
        self._build_results()
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

    def _build_results(self) -> None:
        self._summary = QLabel()
        self._summary.setWordWrap(True)
        self._summary.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)

        self._class_table = QTableWidget(0, 0)
        self._class_table.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self._class_table.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        self._class_table.setAlternatingRowColors(True)
        self._class_table.verticalHeader().hide()
        self._class_table.verticalHeader().setDefaultSectionSize(
            self._class_table.fontMetrics().height() + 8)
        self._class_table.setToolTip("Images per class in each split; click a header to sort")

        self._class_axis = ClassAxis()
        self._chart = pg.PlotWidget(axisItems={"left": self._class_axis})
        self._chart.setMenuEnabled(False)
        self._chart.setMouseEnabled(x=False, y=False)
        self._chart.hideButtons()
        self._chart.setToolTip("Training images per class; amber bars are under-represented")
        self._chart.setMinimumWidth(220)
        plot = self._chart.getPlotItem()
        plot.invertY(True)
        plot.showGrid(x=True, y=False, alpha=0.25)
        plot.setLabel("bottom", "training images")
        self._style_chart()

        self._warning_list = QListWidget()
        self._warning_list.setWordWrap(True)
        self._warning_list.setSpacing(2)
        self._warning_list.setTextElideMode(Qt.TextElideMode.ElideNone)
        self._warning_list.setSelectionMode(QAbstractItemView.SelectionMode.NoSelection)
        self._warning_list.setFocusPolicy(Qt.FocusPolicy.NoFocus)
        self._warning_list.setToolTip("Things about the folder worth knowing before training")

        self._skipped_tree = QTreeWidget()
        self._skipped_tree.setColumnCount(2)
        self._skipped_tree.setHeaderLabels(["File", "Reason"])
        self._skipped_tree.setRootIsDecorated(False)
        self._skipped_tree.setAlternatingRowColors(True)
        self._skipped_tree.setToolTip("Files left out of training because they cannot be decoded")
        self._skipped_tree.header().setSectionResizeMode(0, QHeaderView.ResizeMode.Interactive)
        self._skipped_tree.header().setStretchLastSection(True)

        self._thumbnail_list = QListWidget()
        self._thumbnail_list.setViewMode(QListView.ViewMode.IconMode)
        self._thumbnail_list.setIconSize(QSize(THUMBNAIL_SIZE, THUMBNAIL_SIZE))
        self._thumbnail_list.setGridSize(QSize(THUMBNAIL_SIZE + 28, THUMBNAIL_SIZE + 30))
        self._thumbnail_list.setResizeMode(QListView.ResizeMode.Adjust)
        self._thumbnail_list.setMovement(QListView.Movement.Static)
        self._thumbnail_list.setUniformItemSizes(True)
        self._thumbnail_list.setSelectionMode(QAbstractItemView.SelectionMode.NoSelection)
        self._thumbnail_list.setToolTip("A few training images of every class")

        self._details = QTabWidget()
        self._details.addTab(self._thumbnail_list, "Examples")
        self._details.addTab(self._skipped_tree, "Skipped files")

        left = QSplitter(Qt.Orientation.Vertical)
        left.addWidget(self._class_table)
        left.addWidget(self._warning_list)
        left.setStretchFactor(0, 3)
        left.setStretchFactor(1, 2)
        left.setChildrenCollapsible(False)
        top = QSplitter(Qt.Orientation.Horizontal)
        top.addWidget(left)
        top.addWidget(self._chart)
        top.setStretchFactor(0, 3)
        top.setStretchFactor(1, 2)
        top.setChildrenCollapsible(False)
        split = QSplitter(Qt.Orientation.Vertical)
        split.addWidget(top)
        split.addWidget(self._details)
        split.setSizes([3, 2])  # proportions until the panel has a size
        split.setChildrenCollapsible(False)

        self._results_page = QWidget()
        layout = QVBoxLayout(self._results_page)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self._summary)
        layout.addWidget(split, 1)

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
                             ("scan_summary", self._summary),
                             ("class_table", self._class_table),
                             ("class_chart", self._chart),
                             ("warning_list", self._warning_list),
                             ("skipped_files", self._skipped_tree),
                             ("thumbnail_list", self._thumbnail_list),
                             ("empty_hint", self._empty_hint)):
            widget.setObjectName(name)

    def _style_chart(self) -> None:
        palette = self.palette()
        self._chart.setBackground(palette.color(QPalette.ColorRole.Base))
        text = palette.color(QPalette.ColorRole.Text)
        for side in ("left", "bottom"):
            axis = self._chart.getPlotItem().getAxis(side)
            axis.setPen(pg.mkPen(palette.color(QPalette.ColorRole.Mid)))
            axis.setTextPen(pg.mkPen(text))

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
        counts = scan.counts()
        self._summary.setText(_summary_text(scan, counts))
        self._fill_class_table(scan, counts)
        self._fill_chart(scan, counts.get("train", {}))
        self._fill_warnings(scan)
        self._fill_skipped(scan)
        self._thumbnail_list.clear()
        self._details.setTabText(0, "Examples (loading…)")
        self._thumbnail_task.start(partial(load_thumbnails, thumbnail_samples(scan)))
        self._stack.setCurrentWidget(self._results_page)
        self._rescan_button.setEnabled(True)
        self._folder_edit.setText(scan.root)

    def _fill_class_table(self, scan: DatasetScan, counts: dict[str, dict[str, int]]) -> None:
        splits = [split for split in ("train", "val", "test") if split in counts]
        headers = ["Class", *(s.capitalize() for s in splits), "Total"]
        tips = {"train": "Images the model learns from", "val": "Images held back to measure "
                "accuracy after each epoch", "test": "Images kept for a final evaluation"}
        table = self._class_table
        table.setSortingEnabled(False)
        table.clear()
        table.setColumnCount(len(headers))
        table.setRowCount(len(scan.classes))
        for column, header in enumerate(headers):
            item = QTableWidgetItem(header)
            split = splits[column - 1] if 0 < column <= len(splits) else ""
            item.setToolTip(tips.get(split, "Class folder name" if column == 0
                                     else "Images of the class in all splits"))
            table.setHorizontalHeaderItem(column, item)
        right = Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter
        for row, name in enumerate(scan.classes):
            table.setItem(row, 0, QTableWidgetItem(name))
            values = [counts[split][name] for split in splits]
            for column, value in enumerate([*values, sum(values)], start=1):
                item = QTableWidgetItem()
                item.setData(Qt.ItemDataRole.DisplayRole, value)
                item.setTextAlignment(right)
                table.setItem(row, column, item)
        header = table.horizontalHeader()
        header.setSectionResizeMode(0, QHeaderView.ResizeMode.Stretch)
        for column in range(1, len(headers)):
            header.setSectionResizeMode(column, QHeaderView.ResizeMode.ResizeToContents)
        table.setSortingEnabled(True)
        table.sortByColumn(-1, Qt.SortOrder.AscendingOrder)  # class order until a header click

    def _fill_chart(self, scan: DatasetScan, train: dict[str, int]) -> None:
        plot = self._chart.getPlotItem()
        plot.clear()
        names = list(scan.classes)
        values = [train.get(name, 0) for name in names]
        if not values:
            return
        most = max(values)
        brushes = [pg.mkBrush(RARE_BAR_COLOR if value * IMBALANCE_RATIO <= most
                              else BAR_COLOR) for value in values]
        bars = pg.BarGraphItem(x0=0, y=list(range(len(names))), height=0.7, width=values,
                               brushes=brushes, pen=pg.mkPen(None))
        plot.addItem(bars)
        self._class_axis.names = names
        if len(names) <= MAX_BAR_LABELS:
            color = self.palette().color(QPalette.ColorRole.Text)
            for i, value in enumerate(values):
                label = pg.TextItem(str(value), color=color, anchor=(0, 0.5))
                label.setPos(value, i)
                plot.addItem(label)
        plot.setXRange(0, max(most, 1) * 1.18, padding=0)
        plot.setYRange(-0.6, len(names) - 0.4, padding=0)

    def _fill_warnings(self, scan: DatasetScan) -> None:
        self._warning_list.clear()
        icon = self.style().standardIcon(QStyle.StandardPixmap.SP_MessageBoxWarning)
        for text in scan.warnings:
            item = QListWidgetItem(icon, sentence(text))
            item.setToolTip(sentence(text))
            self._warning_list.addItem(item)
        if not scan.warnings:
            ok = self.style().standardIcon(QStyle.StandardPixmap.SP_DialogApplyButton)
            self._warning_list.addItem(QListWidgetItem(ok, "No problems found in this folder."))

    def _fill_skipped(self, scan: DatasetScan) -> None:
        self._skipped_tree.clear()
        root = Path(scan.root)
        for bad in scan.bad_files:
            try:
                shown = str(Path(bad.path).relative_to(root))
            except ValueError:
                shown = bad.path
            item = QTreeWidgetItem([shown, bad.reason])
            item.setToolTip(0, bad.path)
            item.setToolTip(1, bad.reason)
            self._skipped_tree.addTopLevelItem(item)
        self._skipped_tree.resizeColumnToContents(0)
        count = len(scan.bad_files)
        self._details.setTabText(1, f"Skipped files ({count})" if count else "Skipped files")

    def _on_thumbnail_task_succeeded(self, thumbnails: list[Thumbnail]) -> None:
        self._thumbnail_list.clear()
        for thumb in thumbnails:
            item = QListWidgetItem(QIcon(thumbnail_pixmap(thumb)), thumb.label)
            item.setToolTip(thumb.path)
            self._thumbnail_list.addItem(item)
        self._details.setTabText(0, "Examples")

    def _on_thumbnail_task_failed(self, message: str) -> None:
        self._details.setTabText(0, "Examples")
        item = QListWidgetItem(sentence(f"no examples to show: {message}"))
        self._thumbnail_list.addItem(item)

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

    def changeEvent(self, event: QEvent) -> None:
        super().changeEvent(event)
        if event.type() == QEvent.Type.PaletteChange:
            self._style_chart()


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


def _short(name: str, limit: int = 18) -> str:
    return name if len(name) <= limit else name[: limit - 1] + "…"


def _summary_text(scan: DatasetScan, counts: dict[str, dict[str, int]]) -> str:
    sizes = {split: sum(per_class.values()) for split, per_class in counts.items()}
    total = sum(sizes.values())
    parts = [f"<b>{total}</b> images in <b>{len(scan.classes)}</b> classes",
             f"{sizes.get('train', 0)} train", f"{sizes.get('val', 0)} val"]
    if "test" in sizes:
        parts.append(f"{sizes['test']} test")
    if scan.bad_files:
        parts.append(f"<span style='color:{ERROR_COLOR}'>{len(scan.bad_files)} skipped</span>")
    if scan.ignored_files:
        parts.append(f"{scan.ignored_files} other files ignored")
    layout = "train/val folders" if scan.layout == "split" else "class folders"
    return " · ".join(parts) + f" &nbsp;<span style='color:gray'>({layout})</span>"
