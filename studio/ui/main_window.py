"""MainWindow: composes the panels around one ProjectModel and one TrainingSession.

The window edits a RunConfig (through the panels) and observes training events; all logic lives
in the engine. Steps down the left side follow the workflow: data → backbone → layers → learning
rates → train → evaluate → export, and the runs so far.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

from PySide6.QtCore import QSettings, QSize, Qt, QTimer, Slot
from PySide6.QtGui import QAction, QCloseEvent, QDragEnterEvent, QDropEvent, QKeySequence
from PySide6.QtWidgets import (
    QApplication,
    QHBoxLayout,
    QLabel,
    QListWidget,
    QListWidgetItem,
    QMainWindow,
    QMessageBox,
    QSplitter,
    QStackedWidget,
    QStyle,
    QWidget,
)

from studio.engine.config import RunConfig
from studio.engine.errors import StudioError
from studio.engine.events import FitEnded
from studio.engine.history import run_config
from studio.engine.runs import default_runs_root, new_run_dir
from studio.ui.downloads import TrainGate, WeightsDownload
from studio.ui.project import ProjectModel
from studio.ui.project_files import ProjectFiles
from studio.ui.session import TrainingSession
from studio.ui.tasks import BackgroundTask
from studio.ui.widgets.backbone_panel import BackbonePanel
from studio.ui.widgets.curves_panel import CurvesPanel
from studio.ui.widgets.dataset_panel import DatasetPanel
from studio.ui.widgets.evaluate_panel import EvaluatePanel
from studio.ui.widgets.evaluate_predict import dropped_path
from studio.ui.widgets.export_panel import ExportPanel, run_has_checkpoint
from studio.ui.widgets.layers_panel import LayersPanel
from studio.ui.widgets.lr_panel import LearningRatePanel
from studio.ui.widgets.runs_panel import RunsPanel
from studio.ui.widgets.training_panel import TrainingPanel

log = logging.getLogger(__name__)

STOP_WAIT_MS = 60_000
KILL_WAIT_MS = 5_000  # for killed training processes to be reaped


class MainWindow(ProjectFiles, QMainWindow):
    """The Finetune Studio window."""

    PAGES = ("Dataset", "Backbone", "Layers", "Learning rates", "Train", "Evaluate", "Export",
             "Runs")

    def __init__(self, project: ProjectModel | None = None,
                 settings: QSettings | None = None, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.project = project or ProjectModel(parent=self)
        self.settings = settings or QSettings()
        self.session = TrainingSession(self)
        self.weights_download = WeightsDownload(self)  # the Backbone page shows its progress
        self.train_gate = TrainGate(self.weights_download, self)  # Train waits for the weights
        self._describer = BackgroundTask(self)
        self._described_key: tuple | None = None
        self._last_result: FitEnded | None = None
        self.setWindowTitle("Finetune Studio")
        self.setAcceptDrops(True)  # an image file dropped anywhere is predicted (Evaluate)

        self.dataset_panel = DatasetPanel(self.project)
        self.backbone_panel = BackbonePanel(self.project, downloads=self.weights_download)
        self.layers_panel = LayersPanel(self.project)
        self.lr_panel = LearningRatePanel(self.project)
        self.training_panel = TrainingPanel(self.project)
        self.curves_panel = CurvesPanel()
        self.evaluate_panel = EvaluatePanel()
        self.export_panel = ExportPanel()
        self.runs_panel = RunsPanel(self.project, self.settings)

        train_page = QSplitter(Qt.Orientation.Horizontal)
        train_page.addWidget(self.training_panel)
        train_page.addWidget(self.curves_panel)
        train_page.setStretchFactor(0, 0)
        train_page.setStretchFactor(1, 1)
        train_page.setSizes([380, 900])

        self.pages = QStackedWidget()
        for widget in (self.dataset_panel, self.backbone_panel, self.layers_panel,
                       self.lr_panel, train_page, self.evaluate_panel, self.export_panel,
                       self.runs_panel):
            self.pages.addWidget(widget)
        self.steps = QListWidget()
        self.steps.setObjectName("steps")
        self.steps.setIconSize(QSize(20, 20))
        self.steps.setSpacing(2)
        icons = (QStyle.StandardPixmap.SP_DirIcon, QStyle.StandardPixmap.SP_ComputerIcon,
                 QStyle.StandardPixmap.SP_FileDialogDetailedView,
                 QStyle.StandardPixmap.SP_FileDialogContentsView,
                 QStyle.StandardPixmap.SP_MediaPlay,
                 QStyle.StandardPixmap.SP_FileDialogInfoView,
                 QStyle.StandardPixmap.SP_DialogSaveButton,
                 QStyle.StandardPixmap.SP_FileDialogListView)
        for number, (title, icon) in enumerate(zip(self.PAGES, icons, strict=True), start=1):
            item = QListWidgetItem(self.style().standardIcon(icon), f"{number}. {title}")
            item.setSizeHint(QSize(170, 36))
            self.steps.addItem(item)
        self.steps.setFixedWidth(190)
        self.steps.currentRowChanged.connect(self.pages.setCurrentIndex)
        self.steps.setCurrentRow(0)

        body = QWidget()
        layout = QHBoxLayout(body)
        layout.setContentsMargins(6, 6, 6, 0)
        layout.setSpacing(8)
        layout.addWidget(self.steps)
        layout.addWidget(self.pages, 1)
        self.setCentralWidget(body)

        self.status_data = QLabel("No dataset")
        self.status_model = QLabel("")
        self.status_device = QLabel(self._device_text())
        for label in (self.status_data, self.status_model, self.status_device):
            self.statusBar().addPermanentWidget(label)

        self._build_menus()
        self._connect()
        self._restore_settings()
        self._schedule_describe()

    # -- construction ---------------------------------------------------------------------

    def _build_menus(self) -> None:
        file_menu = self.menuBar().addMenu("&File")
        self.open_action = QAction("&Open project…", self)
        self.open_action.setShortcut(QKeySequence.StandardKey.Open)
        self.open_action.triggered.connect(self._on_open_action_triggered)
        self.save_action = QAction("&Save project", self)
        self.save_action.setShortcut(QKeySequence.StandardKey.Save)
        self.save_action.triggered.connect(self._on_save_action_triggered)
        self.save_as_action = QAction("Save project &as…", self)
        self.save_as_action.setShortcut(QKeySequence.StandardKey.SaveAs)
        self.save_as_action.triggered.connect(self._on_save_as_action_triggered)
        self.open_dataset_action = QAction("Open &dataset folder…", self)
        self.open_dataset_action.setShortcut(QKeySequence("Ctrl+D"))
        self.open_dataset_action.triggered.connect(self._on_open_dataset_action_triggered)
        self.recent_menu = file_menu.addMenu("Open &recent")
        quit_action = QAction("&Quit", self)
        quit_action.setShortcut(QKeySequence.StandardKey.Quit)
        quit_action.triggered.connect(self.close)
        file_menu.addAction(self.open_action)
        file_menu.addMenu(self.recent_menu)
        file_menu.addAction(self.open_dataset_action)
        file_menu.addSeparator()
        file_menu.addAction(self.save_action)
        file_menu.addAction(self.save_as_action)
        file_menu.addSeparator()
        file_menu.addAction(quit_action)
        view_menu = self.menuBar().addMenu("&View")
        for number, title in enumerate(self.PAGES):
            action = QAction(title, self)
            action.setShortcut(QKeySequence(f"Ctrl+{number + 1}"))
            action.setData(number)
            action.triggered.connect(self._on_view_action_triggered)
            view_menu.addAction(action)
        self._refresh_recent()

    def _connect(self) -> None:
        project = self.project
        project.config_changed.connect(self._on_project_config_changed)
        project.scan_changed.connect(self._on_project_scan_changed)
        project.description_changed.connect(self._on_project_description_changed)
        project.path_changed.connect(self._on_project_path_changed)
        self._describer.succeeded.connect(self._on_describer_succeeded)
        self._describer.failed.connect(self._on_describer_failed)
        self.evaluate_panel.dataset_changed.connect(self.dataset_panel.folder_changed)

        panel = self.training_panel
        panel.train_requested.connect(self._on_training_panel_train_requested)
        panel.pause_requested.connect(self.session.pause)
        panel.resume_requested.connect(self.session.resume)
        panel.stop_requested.connect(self.session.stop)
        self.train_gate.released.connect(self._on_train_gate_released)
        self.train_gate.refused.connect(panel.show_problem)

        session = self.session
        session.running_changed.connect(self._on_session_running_changed)
        session.paused_changed.connect(panel.set_paused)
        session.fit_started.connect(panel.on_fit_started)
        session.fit_started.connect(self.curves_panel.on_fit_started)
        session.stage_started.connect(self.curves_panel.on_stage_started)
        session.batch_ended.connect(panel.on_batch_ended)
        session.batch_ended.connect(self.curves_panel.on_batch_ended)
        session.epoch_ended.connect(panel.on_epoch_ended)
        session.epoch_ended.connect(self.curves_panel.on_epoch_ended)
        session.warning_issued.connect(self._on_session_warning_issued)
        session.cache_reported.connect(panel.on_cache_reported)
        session.fit_started.connect(self.layers_panel.on_fit_started)
        session.layer_stats_sampled.connect(self.layers_panel.on_layer_stats)
        session.finished.connect(self._on_session_finished)

        runs = self.runs_panel  # the Runs page lists again when a run starts, moves, ends
        session.fit_started.connect(runs.on_fit_started)
        session.epoch_ended.connect(runs.on_epoch_ended)
        session.finished.connect(runs.on_fit_ended)
        runs.evaluate_requested.connect(self._on_runs_panel_evaluate_requested)
        runs.export_requested.connect(self._on_runs_panel_export_requested)
        runs.settings_loaded.connect(self._on_runs_panel_settings_loaded)
        runs.rerun_requested.connect(self._on_runs_panel_rerun_requested)
        runs.continue_requested.connect(self._on_runs_panel_continue_requested)

    # -- model description ----------------------------------------------------------------

    def _describe_key(self) -> tuple:
        config = self.project.config
        return (config.model.backbone, config.model.head, config.model.weights in ("none",),
                self.project.num_classes, config.data.image_size)

    def _schedule_describe(self) -> None:
        key = self._describe_key()
        if key == self._described_key:
            return
        self._described_key = key
        config = self.project.config
        num_classes, image_size = self.project.num_classes, config.data.image_size

        def describe() -> object:
            from studio.engine.backbones import describe_model

            return describe_model(config.model, num_classes, image_size)

        self.status_model.setText(f"Reading {config.model.backbone}…")
        self._describer.start(describe)

    @Slot(object)
    def _on_describer_succeeded(self, description: object) -> None:
        self.project.set_description(description)  # type: ignore[arg-type]

    @Slot(str)
    def _on_describer_failed(self, message: str) -> None:
        self.status_model.setText("Model unavailable")
        self.statusBar().showMessage(message, 10_000)

    # -- project signals ------------------------------------------------------------------

    @Slot(object)
    def _on_project_config_changed(self, config: RunConfig) -> None:
        self._schedule_describe()

    @Slot(object)
    def _on_project_scan_changed(self, scan: object) -> None:
        if scan is None:
            self.status_data.setText("No dataset")
        else:
            total = sum(len(s) for s in scan.splits.values())  # type: ignore[attr-defined]
            self.status_data.setText(f"{Path(scan.root).name}: "  # type: ignore[attr-defined]
                                     f"{len(scan.classes)} classes, "  # type: ignore[attr-defined]
                                     f"{total} images")
            self.settings.setValue("paths/last_dataset_dir", scan.root)  # type: ignore
        self._schedule_describe()

    @Slot(object)
    def _on_project_description_changed(self, description: object) -> None:
        if description is None:
            self.status_model.setText("")
            return
        self.status_model.setText(f"{description.backbone}: "  # type: ignore[attr-defined]
                                  f"{description.total / 1e6:.1f} M parameters")  # type: ignore

    @Slot(str)
    def _on_project_path_changed(self, path: str) -> None:
        name = Path(path).name if path else "untitled"
        self.setWindowTitle(f"{name} — Finetune Studio")

    # -- training -------------------------------------------------------------------------

    def _readiness_problem(self) -> str | None:
        config = self.project.config
        if self.project.scan is None or not config.data.root:
            return "Choose a dataset folder first (step 1)."
        if self.project.description is None:
            return "The backbone is still being read; try again in a moment."
        if self._describer.running:
            return "The backbone is still being read; try again in a moment."
        return None

    @Slot()
    def _on_training_panel_train_requested(self) -> None:
        if self.session.is_running:
            return
        problem = self._readiness_problem()
        if problem:
            self.training_panel.show_problem(problem)
            return
        config = self.project.config
        waiting = self.train_gate.hold(config.model)  # uncached pretrained weights come first
        if waiting:
            self.training_panel.show_problem(waiting)
            if self.train_gate.waiting:
                self.steps.setCurrentRow(self.PAGES.index("Backbone"))
            return
        runs = Path(self.settings.value("paths/runs_dir", str(default_runs_root())))
        run_dir = new_run_dir(runs, config.model.backbone)
        self.session.start(config, run_dir)  # the curves keep this run's predecessor, faint
        self.steps.setCurrentRow(self.PAGES.index("Train"))

    @Slot()
    def _on_train_gate_released(self) -> None:
        self.training_panel.show_problem("")  # "downloading first…" is over
        self._on_training_panel_train_requested()  # checks again: the config may have moved on

    @Slot(bool)
    def _on_session_running_changed(self, running: bool) -> None:
        # Panels stay usable during a run (edits apply to the next run: the running one has
        # its own copy of the config), so scrolling and reading never wait for training.
        self.training_panel.set_running(running, pausable=self.session.can_pause)

    @Slot(object)
    def _on_session_warning_issued(self, event: object) -> None:
        self.statusBar().showMessage(f"Warning: {event.message}", 15_000)  # type: ignore
        self.training_panel.on_warning(event)  # type: ignore[arg-type]

    @Slot(object)
    def _on_session_finished(self, result: FitEnded) -> None:
        self._last_result = result
        self.training_panel.on_fit_ended(result)
        self.curves_panel.on_fit_ended(result)
        self.layers_panel.on_fit_ended(result)
        if run_has_checkpoint(result.run_dir):
            self.evaluate_panel.set_run_dir(result.run_dir)
            self.export_panel.set_run_dir(result.run_dir)
            self.dataset_panel.set_doctor_run(result.run_dir)

    # -- the Runs page --------------------------------------------------------------------

    @Slot(str)
    def _on_runs_panel_evaluate_requested(self, run_dir: str) -> None:
        self.evaluate_panel.set_run_dir(run_dir)
        self.dataset_panel.set_doctor_run(run_dir)
        self.steps.setCurrentRow(self.PAGES.index("Evaluate"))

    @Slot(str)
    def _on_runs_panel_export_requested(self, run_dir: str) -> None:
        self.export_panel.set_run_dir(run_dir)
        self.steps.setCurrentRow(self.PAGES.index("Export"))

    @Slot(object)
    def _on_runs_panel_settings_loaded(self, config: RunConfig) -> None:
        scan = self.project.scan  # the run's dataset is scanned unless it is the one shown
        if config.data.root and (scan is None or Path(scan.root).resolve()
                                 != Path(config.data.root).resolve()):
            self.dataset_panel.load_folder(config.data.root)

    @Slot(str, object)
    def _on_runs_panel_rerun_requested(self, run_dir: str, config: RunConfig) -> None:
        if not self._can_train_from_runs(config):
            return
        runs = self.runs_panel.runs_root()
        self.session.start(config, new_run_dir(runs, f"{Path(run_dir).name}-rerun"),
                           rerun_of=run_dir)
        self.steps.setCurrentRow(self.PAGES.index("Train"))

    @Slot(str)
    def _on_runs_panel_continue_requested(self, run_dir: str) -> None:
        try:
            config = run_config(run_dir)
        except StudioError as error:
            self.runs_panel.say(str(error), error=True)
            return
        if self._can_train_from_runs(config):
            self.session.resume_run(run_dir, config.train.processes)
            self.steps.setCurrentRow(self.PAGES.index("Train"))

    def _can_train_from_runs(self, config: RunConfig) -> bool:
        """One run at a time, and pretrained weights fetched first (on the Backbone page)."""
        from studio.engine.downloads import weights_to_download

        problem = None
        if self.session.is_running:
            problem = "A run is training already; wait for it to end or stop it first."
        elif weights_to_download(config.model) is not None:
            problem = (f"The pretrained weights of {config.model.backbone} are not downloaded "
                       f"yet; fetch them on the Backbone page (Download now) first.")
        if problem:
            self.runs_panel.say(problem, error=True)
        return problem is None

    @Slot()
    def _on_view_action_triggered(self) -> None:
        action = self.sender()
        if isinstance(action, QAction):
            self.steps.setCurrentRow(int(action.data()))

    # -- drag and drop (Qt overrides) -----------------------------------------------------

    def dragEnterEvent(self, event: QDragEnterEvent) -> None:  # noqa: N802 - Qt override
        """Panels that take drops (dataset, evaluate) get them first; an image file dropped
        anywhere else lands here."""
        path = dropped_path(event.mimeData())
        if path is not None and Path(path).is_file():
            event.acceptProposedAction()
        else:
            event.ignore()

    def dropEvent(self, event: QDropEvent) -> None:  # noqa: N802 - Qt override
        path = dropped_path(event.mimeData())
        if path is None or not Path(path).is_file():
            event.ignore()
            return
        event.acceptProposedAction()
        self.steps.setCurrentRow(self.PAGES.index("Evaluate"))
        self.evaluate_panel.accept_drop(path)

    # -- window state ---------------------------------------------------------------------

    def _restore_settings(self) -> None:
        geometry = self.settings.value("window/geometry")
        if geometry is not None:
            self.restoreGeometry(geometry)
        else:
            self.resize(1280, 820)

    def closeEvent(self, event: QCloseEvent) -> None:  # noqa: N802 - Qt override
        if self.session.is_running:
            answer = QMessageBox.question(
                self, "Training in progress",
                "A training run is in progress. Stop it and close? The run folder keeps every "
                "completed epoch and can be resumed.",
                QMessageBox.StandardButton.Yes | QMessageBox.StandardButton.No,
                QMessageBox.StandardButton.No)
            if answer != QMessageBox.StandardButton.Yes:
                event.ignore()
                return
            self.stop_and_wait()
        # background sweeps, evaluations and downloads end at their next batch or chunk rather
        # than run on unseen (a download's partial file stays, for the next one to resume)
        self.train_gate.drop()
        self.weights_download.cancel()
        self.weights_download.wait(STOP_WAIT_MS)
        self.evaluate_panel.stop_evaluation()
        if self.lr_panel.finder_dialog is not None:
            self.lr_panel.finder_dialog.close()
        self.settings.setValue("window/geometry", self.saveGeometry())
        super().closeEvent(event)

    def stop_and_wait(self, milliseconds: int = STOP_WAIT_MS) -> bool:
        """Stop a running fit and wait for its thread or processes (events keep flowing
        meanwhile); processes that have not ended by then are killed, so none outlives the
        window."""
        if not self.session.is_running:
            return True
        self.session.stop()
        self.statusBar().showMessage("Stopping after this batch…")
        deadline = time.monotonic() + milliseconds / 1000
        while self.session.is_running and time.monotonic() < deadline:
            QApplication.processEvents()
            self.session.wait(50)
        if self.session.is_running and self.session.kill():
            log.warning("the training processes did not stop within %.0f s; killed them",
                        milliseconds / 1000)
            self.session.wait(KILL_WAIT_MS)
        QApplication.processEvents()
        return not self.session.is_running

    def _device_text(self) -> str:
        return "device: detecting…"

    def showEvent(self, event: object) -> None:  # noqa: N802 - Qt override
        super().showEvent(event)  # type: ignore[arg-type]
        QTimer.singleShot(0, self._update_device_label)

    @Slot()
    def _update_device_label(self) -> None:
        from studio.engine.runtime import device_label, pick_device

        try:
            self.status_device.setText(f"device: {device_label(pick_device('auto'))}")
        except StudioError:
            self.status_device.setText("device: cpu")
