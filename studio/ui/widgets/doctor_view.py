"""DoctorView: the Dataset page's Check tab — the doctor's findings, and fixing them.

The doctor (engine ``diagnose``) runs in the thread pool with progress; its findings are listed
by kind with thumbnails. Relabel, Remove and Undo (buttons and the context menu, through
studio/ui/cleaning.py) move files with the engine's Cleaner; ``dataset_changed`` then asks the
panel to rescan, and the moved images are shown as done until they are undone.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial
from pathlib import Path
from typing import Any

from PySide6.QtCore import QPoint, QSize, Qt, Signal
from PySide6.QtGui import QBrush, QIcon, QPalette
from PySide6.QtWidgets import (
    QAbstractItemView,
    QCheckBox,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QMenu,
    QProgressBar,
    QPushButton,
    QTreeWidget,
    QTreeWidgetItem,
    QVBoxLayout,
    QWidget,
)

from studio.engine.cleaner import Change
from studio.engine.data import DatasetScan
from studio.engine.doctor import DoctorReport, diagnose
from studio.ui.cleaning import add_cleaning_actions, relabel_or_remove, undo_changes
from studio.ui.tasks import BackgroundTask
from studio.ui.text import plural, sentence
from studio.ui.thumbnails import Thumbnail, thumbnail_pixmap
from studio.ui.widgets.dataset_views import ERROR_COLOR, load_thumbnails

ICON_SIZE = 40
MAX_THUMBNAILS = 400  # the first files listed get pictures; the rest stay text
PATH = Qt.ItemDataRole.UserRole  # a file row's absolute path
DETAIL = Qt.ItemDataRole.UserRole + 1  # its detail before any change


class DoctorView(QWidget):
    """Runs the doctor on the shown scan and lists what it found, ready to fix."""

    check_finished = Signal(object)  # DoctorReport
    dataset_changed = Signal(object)  # list[Change]: files moved, the dataset needs a rescan

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self._scan: DatasetScan | None = None
        self._report: DoctorReport | None = None
        self._run_dir = ""
        self._done: dict[str, str] = {}  # absolute path of a listed file -> what became of it
        self._own_rescan = False  # the next scan follows our own change: keep the findings
        self._items: dict[str, list[QTreeWidgetItem]] = {}

        self._check_button = QPushButton("Check dataset")
        self._check_button.setToolTip("Look for duplicates, near-duplicates, leaks between "
                                      "train and val, conflicts between classes and odd images")
        self._check_button.clicked.connect(self.start_check)
        self._run_box = QCheckBox("Label errors from the last run")
        self._run_box.setToolTip("Also list validation images that the last run trained on "
                                 "this folder confidently puts in another class")
        self._run_box.setEnabled(False)
        self._progress = QProgressBar()
        self._progress.setFormat("checking %p%")
        self._progress.hide()
        self._summary = QLabel("Check the dataset for duplicates, leaks and conflicts.")
        self._summary.setWordWrap(True)
        top = QHBoxLayout()
        top.addWidget(self._check_button)
        top.addWidget(self._run_box)
        top.addWidget(self._progress, 1)

        self._tree = QTreeWidget()
        self._tree.setColumnCount(3)
        self._tree.setHeaderLabels(["Finding", "Class", "Detail"])
        self._tree.setSelectionMode(QAbstractItemView.SelectionMode.ExtendedSelection)
        self._tree.setIconSize(QSize(ICON_SIZE, ICON_SIZE))
        self._tree.setAlternatingRowColors(True)
        self._tree.setContextMenuPolicy(Qt.ContextMenuPolicy.CustomContextMenu)
        self._tree.customContextMenuRequested.connect(self._on_tree_context_menu_requested)
        self._tree.itemSelectionChanged.connect(self._update_buttons)
        header = self._tree.header()
        header.setSectionResizeMode(0, QHeaderView.ResizeMode.Stretch)
        header.setSectionResizeMode(1, QHeaderView.ResizeMode.ResizeToContents)
        header.setSectionResizeMode(2, QHeaderView.ResizeMode.ResizeToContents)

        self._relabel_menu = QMenu(self)
        self._relabel_menu.aboutToShow.connect(self._on_relabel_menu_about_to_show)
        self._relabel_button = QPushButton("Relabel as…")
        self._relabel_button.setToolTip("Move the selected images into another class folder")
        self._relabel_button.setMenu(self._relabel_menu)
        self._remove_button = QPushButton("Remove")
        self._remove_button.setToolTip("Move the selected images into the dataset's hidden "
                                       ".studio-trash folder; Undo puts them back")
        self._remove_button.clicked.connect(self.remove_selected)
        self._undo_button = QPushButton("Undo")
        self._undo_button.setToolTip("Undo the dataset's last relabel or remove")
        self._undo_button.clicked.connect(self.undo_last)
        self._message = QLabel()
        self._message.setWordWrap(True)
        self._message.setStyleSheet(f"color: {ERROR_COLOR};")
        self._message.hide()
        actions = QHBoxLayout()
        for button in (self._relabel_button, self._remove_button, self._undo_button):
            actions.addWidget(button)
        actions.addWidget(self._message, 1)

        layout = QVBoxLayout(self)
        layout.addLayout(top)
        layout.addWidget(self._summary)
        layout.addWidget(self._tree, 1)
        layout.addLayout(actions)

        self._task = BackgroundTask(self)
        self._task.succeeded.connect(self._on_task_succeeded)
        self._task.failed.connect(self._on_task_failed)
        self._task.progressed.connect(self._on_task_progressed)
        self._task.running_changed.connect(self._on_task_running_changed)
        self._thumbnail_task = BackgroundTask(self)
        self._thumbnail_task.succeeded.connect(self._on_thumbnail_task_succeeded)
        for name, widget in (("check_button", self._check_button), ("run_box", self._run_box),
                             ("check_progress", self._progress),
                             ("check_summary", self._summary), ("findings_tree", self._tree),
                             ("relabel_button", self._relabel_button),
                             ("remove_button", self._remove_button),
                             ("undo_button", self._undo_button),
                             ("check_message", self._message)):
            widget.setObjectName(name)
        self._update_buttons()

    # -- public -----------------------------------------------------------------------------

    @property
    def report(self) -> DoctorReport | None:
        return self._report

    @property
    def running(self) -> bool:
        return self._task.running

    def set_scan(self, scan: DatasetScan | None) -> None:
        """The dataset to check. The rescan after a relabel, remove or undo here keeps the
        findings (marked as done); any other scan clears them, as they may no longer hold."""
        same = scan is not None and self._scan is not None and scan.root == self._scan.root
        keep, self._own_rescan = same and self._own_rescan, False
        self._scan = scan
        if not keep:
            self._report = None
            self._done.clear()
            self._items = {}
            self._tree.clear()
            self._summary.setText("Check the dataset for duplicates, leaks and conflicts.")
        self._update_buttons()

    def set_run(self, run_dir: str) -> None:
        """A trained run whose validation predictions can point at label errors."""
        self._run_dir = run_dir
        self._run_box.setEnabled(bool(run_dir))
        self._run_box.setChecked(bool(run_dir))
        self._run_box.setToolTip(f"Also list validation images that the run {run_dir} "
                                 f"confidently puts in another class" if run_dir else
                                 "Train a run on this folder to look for label errors")

    def start_check(self) -> None:
        scan = self._scan
        if scan is None:
            return
        run_dir = self._run_dir if self._run_box.isChecked() else None

        def job(progress: Any) -> DoctorReport:
            return diagnose(scan.root, scan=scan, run_dir=run_dir, progress=progress)

        self._progress.setRange(0, 0)
        self._show_message("")
        self._task.start(job, with_progress=True)

    def selected_paths(self) -> list[str]:
        """Absolute paths of the selected file rows (group and kind rows carry none)."""
        paths = [item.data(0, PATH) for item in self._tree.selectedItems()]
        return list(dict.fromkeys(p for p in paths if p and p not in self._done))

    def relabel_selected(self, class_name: str) -> list[Change]:
        return self._apply(class_name)

    def remove_selected(self) -> list[Change]:
        return self._apply(None)

    def undo_last(self) -> list[Change]:
        if self._scan is None:
            return []
        return undo_changes(self._scan.root, 1, self._on_files_changed, self._show_message)

    # -- checking ---------------------------------------------------------------------------

    def _on_task_running_changed(self, running: bool) -> None:
        self._progress.setVisible(running)
        self._check_button.setEnabled(not running)

    def _on_task_progressed(self, done: int, total: int) -> None:
        self._progress.setRange(0, max(total, 1))
        self._progress.setValue(done)

    def _on_task_failed(self, message: str) -> None:
        self._show_message(sentence(message))

    def _on_task_succeeded(self, report: DoctorReport) -> None:
        self._report = report
        self._done.clear()
        self._fill(report)
        self.check_finished.emit(report)

    def _fill(self, report: DoctorReport) -> None:
        self._tree.clear()
        self._items = {}
        labels = report.labels
        kinds: list[tuple[str, str, list[QTreeWidgetItem]]] = [
            ("Leaks", "the same image in more than one split",
             [self._group(f"{leak.kind} copies in " + " and ".join(leak.splits),
                          [p for paths in leak.splits.values() for p in paths], report,
                          {p: split for split, paths in leak.splits.items() for p in paths})
              for leak in report.leaks]),
            ("Conflicts", "the same image in more than one class",
             [self._group(f"{c.kind} copies in classes " + ", ".join(sorted(set(c.classes))),
                          c.paths, report) for c in report.conflicts]),
            ("Suspected label errors", report.label_method or "needs a run trained here",
             [self._file(i.path, report, labels.get(i.path, i.given),
                         f"looks like {i.suggested} ({i.confidence:.0%})")
              for i in report.suspected_label_errors]),
            ("Exact duplicates", "identical files",
             [self._group(plural(len(g), "identical file"), g, report)
              for g in report.duplicates]),
            ("Near-duplicates", report.near_method or "install imagehash to look for them",
             [self._group(plural(len(g), "similar image"), g, report)
              for g in report.near_duplicates]),
            ("Tiny or elongated images", "blown up or padded a lot before training",
             [self._file(o.path, report, labels.get(o.path, ""),
                         f"{o.width}×{o.height} {o.reason}") for o in report.odd_images]),
        ]
        for title, tip, children in kinds:
            top = QTreeWidgetItem([f"{title} ({len(children)})", "", tip])
            top.setToolTip(0, tip)
            top.setFlags(top.flags() & ~Qt.ItemFlag.ItemIsSelectable)
            font = top.font(0)
            font.setBold(True)
            top.setFont(0, font)
            top.addChildren(children)
            self._tree.addTopLevelItem(top)
            top.setExpanded(bool(children) and len(children) <= 20)
            for child in children:
                child.setExpanded(top.isExpanded())
        count = report.findings
        self._summary.setText(
            f"{plural(report.images, 'image')} checked: {plural(count, 'finding')}"
            + (". Select images to relabel or remove them." if count else ". Nothing to fix.")
            + "".join(f" {sentence(note)}" for note in report.notes))
        self._summary.setToolTip("\n".join(sentence(w) for w in report.warnings))
        paths = list(self._items)[:MAX_THUMBNAILS]
        self._thumbnail_task.start(partial(load_thumbnails, [(p, p) for p in paths]))
        self._update_buttons()

    def _group(self, title: str, paths: Sequence[str], report: DoctorReport,
               details: dict[str, str] | None = None) -> QTreeWidgetItem:
        group = QTreeWidgetItem([title, "", ""])
        group.setFlags(group.flags() & ~Qt.ItemFlag.ItemIsSelectable)
        for path in paths:
            group.addChild(self._file(path, report, report.labels.get(path, ""),
                                      (details or {}).get(path, "")))
        return group

    def _file(self, path: str, report: DoctorReport, class_name: str,
              detail: str) -> QTreeWidgetItem:
        absolute = report.absolute(path)
        item = QTreeWidgetItem([path, class_name, detail])
        item.setData(0, PATH, absolute)
        item.setData(2, DETAIL, detail)
        item.setToolTip(0, absolute)
        self._items.setdefault(absolute, []).append(item)
        return item

    def _on_thumbnail_task_succeeded(self, thumbnails: list[Thumbnail]) -> None:
        for thumb in thumbnails:
            icon = QIcon(thumbnail_pixmap(thumb))
            for item in self._items.get(thumb.path, ()):
                item.setIcon(0, icon)

    # -- fixing -----------------------------------------------------------------------------

    def _apply(self, class_name: str | None) -> list[Change]:
        if self._scan is None:
            return []
        self._show_message("")
        return relabel_or_remove(self._scan.root, self.selected_paths(), class_name,
                                 self._on_files_changed, self._show_message)

    def _on_files_changed(self, changes: list[Change]) -> None:
        if self._scan is None:
            return
        root = Path(self._scan.root)
        for change in changes:
            if change.action == "undo":
                self._done.pop(str(root / change.target), None)
            elif change.action == "relabel":
                self._done[str(root / change.source)] = f"relabelled: {change.target}"
            else:
                self._done[str(root / change.source)] = "removed (in .studio-trash)"
        self._mark_done()
        self._update_buttons()
        self._own_rescan = True
        self.dataset_changed.emit(changes)

    def _mark_done(self) -> None:
        grey = QBrush(self.palette().color(QPalette.ColorRole.PlaceholderText))
        for path, items in self._items.items():
            state = self._done.get(path)
            for item in items:
                font = item.font(0)
                font.setStrikeOut(state is not None)
                item.setFont(0, font)
                item.setText(2, state or item.data(2, DETAIL))
                item.setForeground(0, grey if state else QBrush())
                item.setFlags(item.flags() & ~Qt.ItemFlag.ItemIsSelectable if state
                              else item.flags() | Qt.ItemFlag.ItemIsSelectable)
                if state:
                    item.setSelected(False)

    def _on_relabel_menu_about_to_show(self) -> None:
        self._relabel_menu.clear()
        current = {Path(p).parent.name for p in self.selected_paths()}
        for name in self._scan.classes if self._scan is not None else ():
            action = self._relabel_menu.addAction(name)
            action.setEnabled(current != {name})
            action.triggered.connect(partial(self.relabel_selected, name))

    def _on_tree_context_menu_requested(self, position: QPoint) -> None:
        if self._scan is None:
            return
        menu = QMenu(self)
        add_cleaning_actions(menu, self._scan.root, self.selected_paths(), self._scan.classes,
                             changed=self._on_files_changed, failed=self._show_message)
        menu.addSeparator()
        menu.addAction("Undo the last change", self.undo_last)
        menu.exec(self._tree.viewport().mapToGlobal(position))

    def _update_buttons(self) -> None:
        selected = bool(self.selected_paths())
        self._relabel_button.setEnabled(selected)
        self._remove_button.setEnabled(selected)
        self._undo_button.setEnabled(self._scan is not None)
        self._check_button.setEnabled(self._scan is not None and not self._task.running)

    def _show_message(self, text: str) -> None:
        self._message.setText(sentence(text) if text else "")
        self._message.setVisible(bool(text))
