"""What a dataset scan found, as the Dataset page shows it: a summary line, images per class and
split (a table and a bar chart, rare classes in amber), warnings, the skipped files with their
reasons, and a few example images per class (decoded in the thread pool)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from pathlib import Path
from typing import Any

import pyqtgraph as pg
from PySide6.QtCore import QEvent, QPoint, QSize, Qt, Signal
from PySide6.QtGui import QFontMetrics, QIcon, QPalette
from PySide6.QtWidgets import (
    QAbstractItemView,
    QHeaderView,
    QLabel,
    QListView,
    QListWidget,
    QListWidgetItem,
    QMenu,
    QSplitter,
    QStyle,
    QTableWidget,
    QTableWidgetItem,
    QTabWidget,
    QTreeWidget,
    QTreeWidgetItem,
    QVBoxLayout,
    QWidget,
)

from studio.engine.data import IMBALANCE_RATIO, DatasetScan
from studio.ui.cleaning import add_cleaning_actions
from studio.ui.tasks import BackgroundTask
from studio.ui.text import sentence
from studio.ui.thumbnails import Thumbnail, make_thumbnail, thumbnail_pixmap

THUMBNAIL_SIZE = 64  # pixels, the longer side
THUMBNAILS_PER_CLASS = 4
MAX_THUMBNAILS = 240  # many classes: fewer per class, never thousands of icons
MAX_BAR_LABELS = 30  # more classes than this: no count at the end of each bar
ERROR_COLOR = "#c62828"
BAR_COLOR = "#4c78a8"
RARE_BAR_COLOR = "#e39b2d"


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



class ScanView(QWidget):
    """One scan's results; :meth:`show_scan` fills every part and starts the examples."""

    files_changed = Signal(object)  # list[Change]: an example was relabelled or removed
    cleaning_failed = Signal(str)  # the sentence of why not

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
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
        self._thumbnail_list.setToolTip("A few training images of every class; right-click "
                                        "one to relabel or remove it")
        self._thumbnail_list.setContextMenuPolicy(Qt.ContextMenuPolicy.CustomContextMenu)
        self._thumbnail_list.customContextMenuRequested.connect(
            self._on_thumbnail_list_context_menu_requested)
        self._scan: DatasetScan | None = None

        from studio.ui.widgets.doctor_view import DoctorView  # it imports this module

        self.doctor_view = DoctorView()
        self._details = QTabWidget()
        self._details.addTab(self._thumbnail_list, "Examples")
        self._details.addTab(self._skipped_tree, "Skipped files")
        self._details.addTab(self.doctor_view, "Check")
        self._details.setTabToolTip(2, "Duplicates, leaks between splits, conflicts between "
                                       "classes, odd images; relabel or remove them")

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

        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self._summary)
        layout.addWidget(split, 1)

        self._thumbnail_task = BackgroundTask(self)
        self._thumbnail_task.succeeded.connect(self._on_thumbnail_task_succeeded)
        self._thumbnail_task.failed.connect(self._on_thumbnail_task_failed)
        for name, widget in (("scan_summary", self._summary),
                             ("class_table", self._class_table),
                             ("class_chart", self._chart),
                             ("warning_list", self._warning_list),
                             ("skipped_files", self._skipped_tree),
                             ("thumbnail_list", self._thumbnail_list),
                             ("details_tabs", self._details)):
            widget.setObjectName(name)

    def show_scan(self, scan: DatasetScan) -> None:
        self._scan = scan
        counts = scan.counts()
        self._summary.setText(_summary_text(scan, counts))
        self._fill_class_table(scan, counts)
        self._fill_chart(scan, counts.get("train", {}))
        self._fill_warnings(scan)
        self._fill_skipped(scan)
        self.doctor_view.set_scan(scan)
        self._thumbnail_list.clear()
        self._details.setTabText(0, "Examples (loading…)")
        self._thumbnail_task.start(partial(load_thumbnails, thumbnail_samples(scan)))

    def _style_chart(self) -> None:
        palette = self.palette()
        self._chart.setBackground(palette.color(QPalette.ColorRole.Base))
        text = palette.color(QPalette.ColorRole.Text)
        for side in ("left", "bottom"):
            axis = self._chart.getPlotItem().getAxis(side)
            axis.setPen(pg.mkPen(palette.color(QPalette.ColorRole.Mid)))
            axis.setTextPen(pg.mkPen(text))

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
            self._warning_list.addItem(QListWidgetItem(ok, "The scan found no problems; the Check "
                                                           "tab looks for duplicates, leaks and "
                                                           "label errors."))

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

    def example_menu(self, item: QListWidgetItem) -> QMenu | None:
        """Relabel or remove one example (the cleaner; undo on the Check tab or with
        ``studio clean --undo``)."""
        if self._scan is None or not item.toolTip():
            return None
        menu = QMenu(self)
        add_cleaning_actions(menu, self._scan.root, [item.toolTip()], self._scan.classes,
                             changed=self.files_changed.emit, failed=self.cleaning_failed.emit)
        return menu

    def _on_thumbnail_list_context_menu_requested(self, position: QPoint) -> None:
        item = self._thumbnail_list.itemAt(position)
        menu = self.example_menu(item) if item is not None else None
        if menu is not None:
            menu.exec(self._thumbnail_list.viewport().mapToGlobal(position))

    def changeEvent(self, event: QEvent) -> None:
        super().changeEvent(event)
        if event.type() == QEvent.Type.PaletteChange:
            self._style_chart()


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
