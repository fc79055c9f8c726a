"""RunsPanel: the Runs page — every run of the runs folder and of folders the user added.

A sortable, filterable table of the run history (``engine.history.list_runs``, listed in the
background so a big history never stalls the window), the selected runs compared underneath
(:class:`~studio.ui.widgets.run_compare.RunComparison`), and what can be done with a run: open
it in Evaluate or Export, load its settings into the project, re-run it exactly (after saying
what changed since), continue it, rename it, move it to the trash. Starting a run is the
window's business: the panel asks for it with a signal, as the Train page does.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from PySide6.QtCore import (
    QItemSelection,
    QItemSelectionModel,
    QPoint,
    QSettings,
    QSortFilterProxyModel,
    Qt,
    QTimer,
    Signal,
    Slot,
)
from PySide6.QtGui import QAction, QKeySequence, QShowEvent
from PySide6.QtWidgets import (
    QAbstractItemView,
    QFileDialog,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QLineEdit,
    QMenu,
    QPushButton,
    QSplitter,
    QTableView,
    QToolButton,
    QVBoxLayout,
    QWidget,
)

from studio.engine.config import RunConfig
from studio.engine.errors import StudioError
from studio.engine.history import RunSummary, list_runs, rename_run, run_config
from studio.engine.runs import RunPaths, default_runs_root
from studio.ui.models.runs_model import FILTER_ROLE, NAME, SORT_ROLE, STARTED, RunsModel
from studio.ui.project import ProjectModel
from studio.ui.tasks import BackgroundTask
from studio.ui.text import plural, sentence
from studio.ui.widgets.export_panel import run_has_checkpoint
from studio.ui.widgets.run_compare import RunComparison
from studio.ui.widgets.run_questions import (
    ask_new_name,
    confirm_rerun,
    confirm_trash,
    rerun_check,
    same_folder,
    trash_job,
    trashed_sentence,
)

RUNS_DIR_KEY = "paths/runs_dir"  # where the app puts new runs (the window's setting)
FOLDERS_KEY = "runs/folders"  # further folders of runs the user added
RESUMABLE = frozenset({"stopped", "interrupted", "failed"})
ERROR_STYLE = "color: #c62828;"


class RunsPanel(QWidget):
    """The run history: a table, a comparison of the selected runs, and actions on them."""

    evaluate_requested = Signal(str)  # a run folder to open on the Evaluate page
    export_requested = Signal(str)  # … on the Export page
    settings_loaded = Signal(object)  # the RunConfig just put into the project
    rerun_requested = Signal(str, object)  # run folder, its RunConfig: train it again, exactly
    continue_requested = Signal(str)  # run folder to resume from its last epoch
    runs_listed = Signal(int)  # a listing arrived (how many runs)

    def __init__(self, project: ProjectModel, settings: QSettings,
                 parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self._project, self._settings = project, settings
        self._order: list[Path] = []  # the selected runs, in the order they were selected
        self._restoring = False
        self._pending_rerun: tuple[Path, RunConfig] | None = None
        self._lister = BackgroundTask(self)
        self._checker = BackgroundTask(self)  # what changed since a run (scans the dataset)
        self._trasher = BackgroundTask(self)
        self._compare_timer = QTimer(self)  # one redraw for a burst of selection changes
        self._compare_timer.setSingleShot(True)
        self._compare_timer.setInterval(0)

        self.model = RunsModel(parent=self)
        self.proxy = QSortFilterProxyModel(self)
        self.proxy.setSourceModel(self.model)
        self.proxy.setSortRole(SORT_ROLE)
        self.proxy.setFilterRole(FILTER_ROLE)
        self.proxy.setFilterKeyColumn(0)
        self.proxy.setFilterCaseSensitivity(Qt.CaseSensitivity.CaseInsensitive)

        self.filter_edit = QLineEdit()
        self.filter_edit.setPlaceholderText("Filter by name, backbone, dataset or status")
        self.filter_edit.setClearButtonEnabled(True)
        self.count_label = QLabel("")
        self.count_label.setStyleSheet("color: #6b6b6b;")
        self.add_folder_button = QPushButton("Add folder…")
        self.add_folder_button.setToolTip("List the runs of another folder too (remembered)")
        self.refresh_button = QPushButton("Refresh")
        self.refresh_button.setToolTip("List the runs again (F5)")
        self.refresh_button.setShortcut(QKeySequence.StandardKey.Refresh)

        self.table = QTableView()
        self.table.setObjectName("runsTable")
        self.table.setModel(self.proxy)
        self.table.setSortingEnabled(True)
        self.table.sortByColumn(STARTED, Qt.SortOrder.DescendingOrder)
        self.table.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        self.table.setSelectionMode(QAbstractItemView.SelectionMode.ExtendedSelection)
        self.table.setAlternatingRowColors(True)
        self.table.setWordWrap(False)
        self.table.verticalHeader().setVisible(False)
        self.table.verticalHeader().setDefaultSectionSize(24)
        header = self.table.horizontalHeader()
        header.setSectionResizeMode(QHeaderView.ResizeMode.Interactive)
        header.setSectionResizeMode(NAME, QHeaderView.ResizeMode.Stretch)  # the spare width
        header.setMinimumSectionSize(40)
        self.table.setContextMenuPolicy(Qt.ContextMenuPolicy.CustomContextMenu)

        self.evaluate_action = self._action("Open in Evaluate", "Evaluate this run's best "
                                            "checkpoint on the Evaluate page")
        self.export_action = self._action("Open in Export", "Export this run on the Export page")
        self.load_action = self._action("Load settings", "Put this run's settings (dataset, "
                                        "backbone, layers, rates, training) into the project")
        self.rerun_action = self._action("Re-run exactly…", "Train the same settings with the "
                                         "same seed into a new run folder, after saying what "
                                         "changed since (dataset files, library versions)")
        self.continue_action = self._action("Continue", "Resume this run from its last "
                                            "completed epoch")
        self.rename_action = self._action("Rename…", "Rename the run folder (F2)",
                                          QKeySequence(Qt.Key.Key_F2))
        self.delete_action = self._action("Delete…", "Move the run folder to the trash (Del)",
                                          QKeySequence.StandardKey.Delete)
        self._actions = (self.evaluate_action, self.export_action, self.load_action,
                         self.rerun_action, self.continue_action, self.rename_action,
                         self.delete_action)

        self.message_label = QLabel("")
        self.message_label.setObjectName("runsMessage")
        self.message_label.setWordWrap(True)
        self.message_label.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.comparison = RunComparison()

        self._build_layout()
        self._connect()
        self._update_actions()

    # -- construction ---------------------------------------------------------------------

    def _action(self, text: str, tip: str, shortcut: QKeySequence | None = None) -> QAction:
        action = QAction(text, self)
        action.setToolTip(tip)
        action.setStatusTip(tip)
        if shortcut is not None:
            action.setShortcut(shortcut)
            action.setShortcutContext(Qt.ShortcutContext.WidgetWithChildrenShortcut)
            self.table.addAction(action)  # the key works where the table has the focus
        return action

    def _build_layout(self) -> None:
        top_row = QHBoxLayout()
        top_row.addWidget(self.filter_edit, 1)
        top_row.addWidget(self.count_label)
        top_row.addWidget(self.add_folder_button)
        top_row.addWidget(self.refresh_button)
        actions_row = QHBoxLayout()
        actions_row.setSpacing(4)
        for action in self._actions:
            button = QToolButton()
            button.setDefaultAction(action)  # mirrors the action's text and enabled state
            button.setToolButtonStyle(Qt.ToolButtonStyle.ToolButtonTextOnly)
            actions_row.addWidget(button)
        actions_row.addStretch(1)

        upper = QWidget()
        upper_layout = QVBoxLayout(upper)
        upper_layout.setContentsMargins(0, 0, 0, 0)
        upper_layout.setSpacing(4)
        upper_layout.addLayout(top_row)
        upper_layout.addWidget(self.table, 1)
        upper_layout.addLayout(actions_row)
        upper_layout.addWidget(self.message_label)

        splitter = QSplitter(Qt.Orientation.Vertical)
        splitter.addWidget(upper)
        splitter.addWidget(self.comparison)
        splitter.setStretchFactor(0, 1)
        splitter.setStretchFactor(1, 1)
        splitter.setChildrenCollapsible(False)
        splitter.setSizes([300, 480])
        layout = QVBoxLayout(self)
        layout.setContentsMargins(4, 4, 4, 4)
        layout.addWidget(splitter)

    def _connect(self) -> None:
        self.filter_edit.textChanged.connect(self._on_filter_edit_text_changed)
        self.add_folder_button.clicked.connect(self._on_add_folder_button_clicked)
        self.refresh_button.clicked.connect(self.refresh)
        self.table.selectionModel().selectionChanged.connect(
            self._on_table_selection_changed)
        self.table.customContextMenuRequested.connect(
            self._on_table_custom_context_menu_requested)
        self._compare_timer.timeout.connect(self._on_compare_timer_timeout)
        self._lister.succeeded.connect(self._on_lister_succeeded)
        self._lister.failed.connect(self._on_lister_failed)
        self._checker.succeeded.connect(self._on_checker_succeeded)
        self._checker.failed.connect(self._on_checker_failed)
        self._trasher.succeeded.connect(self._on_trasher_succeeded)
        self._trasher.failed.connect(self._on_trasher_failed)
        self.evaluate_action.triggered.connect(self._on_evaluate_action_triggered)
        self.export_action.triggered.connect(self._on_export_action_triggered)
        self.load_action.triggered.connect(self._on_load_action_triggered)
        self.rerun_action.triggered.connect(self._on_rerun_action_triggered)
        self.continue_action.triggered.connect(self._on_continue_action_triggered)
        self.rename_action.triggered.connect(self._on_rename_action_triggered)
        self.delete_action.triggered.connect(self._on_delete_action_triggered)

    # -- public ---------------------------------------------------------------------------

    def runs_root(self) -> Path:
        """Where the app puts new runs."""
        return Path(str(self._settings.value(RUNS_DIR_KEY, str(default_runs_root()))))

    def folders(self) -> list[str]:
        """The folders of runs the user added."""
        value = self._settings.value(FOLDERS_KEY, [])
        if isinstance(value, str):
            value = [value]
        return [str(v) for v in (value or [])]

    def roots(self) -> list[Path]:
        roots = [self.runs_root()]
        for folder in self.folders():
            if not any(same_folder(str(root), folder) for root in roots):
                roots.append(Path(folder))
        return roots

    def add_folder(self, path: str) -> None:
        """List the runs under ``path`` too; a run folder itself adds the folder holding it."""
        folder = Path(path).expanduser()
        if RunPaths(folder).config.is_file():
            folder = folder.parent
        if not any(same_folder(str(root), str(folder)) for root in self.roots()):
            self._settings.setValue(FOLDERS_KEY, [*self.folders(), str(folder)])
        self.say(f"Listing the runs in {folder} too.")
        self.refresh()

    def refresh(self) -> None:
        """List the runs again, in the background; the selection is kept."""
        roots = self.roots()
        self._lister.start(lambda: list_runs(roots))

    @property
    def listing(self) -> bool:
        return self._lister.running

    def say(self, message: str, error: bool = False) -> None:
        """One sentence under the table: what happened, or what went wrong and what to do."""
        self.message_label.setText(sentence(message))
        self.message_label.setStyleSheet(ERROR_STYLE if error else "")

    def selected_runs(self) -> list[RunSummary]:
        """The selected runs, in the order they were selected (the first is compared with)."""
        runs = []
        for path in self._order:
            row = self.model.row_of(path)
            if row >= 0:
                runs.append(self.model.run(row))
        return runs

    def select_runs(self, paths: list[str | Path]) -> None:
        """Select these runs, in this order (what a Ctrl+click does, one after the other)."""
        selection = self.table.selectionModel()
        selection.clearSelection()
        flags = QItemSelectionModel.SelectionFlag.Select | \
            QItemSelectionModel.SelectionFlag.Rows
        for path in paths:
            row = self.model.row_of(path)
            if row >= 0:
                index = self.proxy.mapFromSource(self.model.index(row, 0))
                if index.isValid():
                    selection.select(index, flags)
                    selection.setCurrentIndex(index, QItemSelectionModel.SelectionFlag.NoUpdate)

    # session hooks: the window connects the session's signals here

    @Slot(object)
    def on_fit_started(self, event: object) -> None:
        self._refresh_if_shown()

    @Slot(object)
    def on_epoch_ended(self, event: object) -> None:
        self._refresh_if_shown()

    @Slot(object)
    def on_fit_ended(self, result: object) -> None:
        self._refresh_if_shown()

    def _refresh_if_shown(self) -> None:
        if self.isVisible():  # a hidden page lists again when it is shown
            self.refresh()

    def showEvent(self, event: QShowEvent) -> None:  # noqa: N802 - Qt override
        super().showEvent(event)
        self.refresh()

    # -- listing --------------------------------------------------------------------------

    @Slot(object)
    def _on_lister_succeeded(self, runs: Any) -> None:
        order = list(self._order)
        self._restoring = True
        try:
            first = self.model.rowCount() == 0
            self.model.set_runs(runs)
            self._order = []
            self.select_runs(order)  # the runs that still exist, in their order
        finally:
            self._restoring = False
        if first and runs:
            self.table.resizeColumnsToContents()
        self._update_count()
        self._update_actions()
        self._compare_timer.start()
        self.runs_listed.emit(len(runs))

    @Slot(str)
    def _on_lister_failed(self, message: str) -> None:
        self.say(message, error=True)

    def _update_count(self) -> None:
        total, shown = self.model.rowCount(), self.proxy.rowCount()
        folders = ", ".join(str(root) for root in self.roots())
        if not total:
            self.count_label.setText("No runs yet")
            self.count_label.setToolTip(f"Nothing under {folders}; press Train (step 5) or "
                                        f"add a folder that holds runs.")
            return
        self.count_label.setText(plural(total, "run") if shown == total
                                 else f"{shown} of {plural(total, 'run')}")
        self.count_label.setToolTip(f"Runs listed from {folders}")

    @Slot(str)
    def _on_filter_edit_text_changed(self, text: str) -> None:
        self.proxy.setFilterFixedString(text.strip())
        self._update_count()

    @Slot()
    def _on_add_folder_button_clicked(self) -> None:
        start = self.folders()[-1] if self.folders() else str(self.runs_root())
        path = QFileDialog.getExistingDirectory(self, "Add a folder of runs", start)
        if path:
            self.add_folder(path)

    # -- selection ------------------------------------------------------------------------

    @Slot(QItemSelection, QItemSelection)
    def _on_table_selection_changed(self, selected: QItemSelection,
                                    deselected: QItemSelection) -> None:
        rows = sorted({self.proxy.mapToSource(index).row()
                       for index in self.table.selectionModel().selectedRows()})
        paths = [self.model.run(row).path for row in rows]
        current = set(paths)
        self._order = [p for p in self._order if p in current] + \
            [p for p in paths if p not in self._order]
        if not self._restoring:
            self._update_actions()
            self._compare_timer.start()

    @Slot()
    def _on_compare_timer_timeout(self) -> None:
        self.comparison.show_runs(self.selected_runs())

    def _single(self) -> RunSummary | None:
        runs = self.selected_runs()
        if len(runs) != 1:
            self.say("Select one run first.", error=True)
            return None
        return runs[0]

    def _update_actions(self) -> None:
        runs = self.selected_runs()
        one = runs[0] if len(runs) == 1 else None
        idle = one is not None and one.status != "running"
        ready = one is not None and run_has_checkpoint(str(one.path))
        self.evaluate_action.setEnabled(ready)
        self.export_action.setEnabled(ready)
        self.load_action.setEnabled(one is not None)
        self.rerun_action.setEnabled(idle and not self._checker.running)
        self.continue_action.setEnabled(
            one is not None and one.status in RESUMABLE and one.epochs < one.planned
            and RunPaths(one.path).last.is_file())
        self.rename_action.setEnabled(idle)
        self.delete_action.setEnabled(bool(runs) and not self._trasher.running
                                      and all(run.status != "running" for run in runs))
        self.delete_action.setText("Delete…" if len(runs) < 2 else f"Delete {len(runs)}…")

    @Slot(QPoint)
    def _on_table_custom_context_menu_requested(self, position: QPoint) -> None:
        index = self.table.indexAt(position)
        if not index.isValid():
            return
        if not self.table.selectionModel().isRowSelected(index.row(), index.parent()):
            self.table.selectionModel().select(
                index, QItemSelectionModel.SelectionFlag.ClearAndSelect
                | QItemSelectionModel.SelectionFlag.Rows)
        menu = QMenu(self)
        for number, action in enumerate(self._actions):
            if number in (2, 5):
                menu.addSeparator()
            menu.addAction(action)
        menu.exec(self.table.viewport().mapToGlobal(position))

    # -- actions --------------------------------------------------------------------------

    @Slot()
    def _on_evaluate_action_triggered(self) -> None:
        run = self._single()
        if run is not None:
            self.evaluate_requested.emit(str(run.path))

    @Slot()
    def _on_export_action_triggered(self) -> None:
        run = self._single()
        if run is not None:
            self.export_requested.emit(str(run.path))

    def _single_with_config(self) -> tuple[RunSummary | None, RunConfig | None]:
        """The one selected run and its config, or a sentence on the page saying why not."""
        run = self._single()
        if run is None:
            return None, None
        try:
            return run, run_config(run.path)
        except StudioError as error:
            self.say(str(error), error=True)
            return run, None

    @Slot()
    def _on_load_action_triggered(self) -> None:
        run, config = self._single_with_config()
        if run is None or config is None:
            return
        self._project.set_config(config)
        self.settings_loaded.emit(config)
        self.say(f"Loaded the settings of {run.name} into the project ({config.model.backbone} "
                 f"on {Path(config.data.root).name or 'no dataset'}); the other pages show "
                 f"them now.")

    @Slot()
    def _on_rerun_action_triggered(self) -> None:
        run, config = self._single_with_config()
        if run is None or config is None:
            return
        scan = self._project.scan
        if scan is not None and not same_folder(scan.root, config.data.root):
            scan = None  # the project shows another dataset: scan the run's own
        self._pending_rerun = (run.path, config)
        self.say(f"Checking what changed since {run.name} (its dataset and the library "
                 f"versions)…")
        self._checker.start(rerun_check(run.path, config, scan))
        self._update_actions()

    @Slot(object)
    def _on_checker_succeeded(self, notes: Any) -> None:
        pending, self._pending_rerun = self._pending_rerun, None
        self._update_actions()
        if pending is None:
            return
        path, config = pending
        if not confirm_rerun(self, path.name, notes):
            self.say(f"{path.name} was not re-run.")
            return
        self.say(f"Re-running {path.name} exactly; the Train page shows it.")
        self.rerun_requested.emit(str(path), config)

    @Slot(str)
    def _on_checker_failed(self, message: str) -> None:
        pending, self._pending_rerun = self._pending_rerun, None
        self._update_actions()
        name = pending[0].name if pending else "the run"
        self.say(f"{name} cannot be re-run: {message}", error=True)

    @Slot()
    def _on_continue_action_triggered(self) -> None:
        run = self._single()
        if run is None:
            return
        if run.epochs >= run.planned:
            self.say(f"{run.name} completed all its {run.planned} epochs; to train it further "
                     f"use `studio train --resume {run.path} --epochs N`.", error=True)
            return
        self.continue_requested.emit(str(run.path))

    @Slot()
    def _on_rename_action_triggered(self) -> None:
        run = self._single()
        name = ask_new_name(self, run) if run is not None else None
        if run is None or name is None:
            return
        try:
            target = rename_run(run.path, name)
        except StudioError as error:
            self.say(str(error), error=True)
            return
        self._order = [target if p == run.path else p for p in self._order]
        self.say(f"Renamed {run.name} to {target.name}.")
        self.refresh()

    @Slot()
    def _on_delete_action_triggered(self) -> None:
        runs = [run for run in self.selected_runs() if run.status != "running"]
        if not runs or not confirm_trash(self, runs):
            return
        self.say(f"Moving {plural(len(runs), 'run')} to the trash…")
        self._trasher.start(trash_job([run.path for run in runs]))
        self._update_actions()

    @Slot(object)
    def _on_trasher_succeeded(self, moved: Any) -> None:
        self.say(trashed_sentence(moved))
        self.refresh()

    @Slot(str)
    def _on_trasher_failed(self, message: str) -> None:
        self.say(message, error=True)
        self.refresh()  # some may have gone before the one that could not
