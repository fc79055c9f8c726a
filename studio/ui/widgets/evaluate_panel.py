"""EvaluatePanel: where a finished run is wrong, not just how often (studio.engine.evaluate).

Evaluate runs a checkpoint over the run's validation images (or another folder of the same
classes) in the thread pool, once; every view here reads the resulting ``Evaluation``: the
summary, a confusion-matrix heatmap (click a cell to see its images), per-class metrics sortable
by any column, the top losses, and single-image predictions ("Predict an image…" or a drop).
"Show CAM" colours the gallery and the predicted image by Grad-CAM (evaluate_cam.py).

The parts live beside it: MatrixPane (evaluate_matrix.py), the gallery's model
(ui/models/gallery.py), the prediction view (evaluate_views.py), single-image predictions
(evaluate_predict.py), and the loaded models (ui/predictors.py). The right side is a tab per
view of the evaluation, so a new view is one more tab.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

from PySide6.QtCore import (
    QModelIndex,
    QSize,
    Qt,
    QUrl,
    Signal,
    Slot,
)
from PySide6.QtGui import (
    QDesktopServices,
    QPalette,
)
from PySide6.QtWidgets import (
    QAbstractItemView,
    QCheckBox,
    QComboBox,
    QFileDialog,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QListView,
    QProgressBar,
    QPushButton,
    QSplitter,
    QStyle,
    QTabWidget,
    QVBoxLayout,
    QWidget,
)

from studio.engine.evaluate import (
    Evaluation,
    EvaluationCancelled,
    ImageResult,
    evaluate_run,
)
from studio.ui.models.gallery import PATH_ROLE, THUMBNAIL_SIZE, GalleryModel
from studio.ui.predictors import PredictorCache
from studio.ui.tasks import BackgroundTask
from studio.ui.text import sentence
from studio.ui.widgets.calibration_view import CalibrationView
from studio.ui.widgets.evaluate_cam import CamControls, CamMaps, CamSource, CamViews, cam_source
from studio.ui.widgets.evaluate_cleaning import GalleryCleaning
from studio.ui.widgets.evaluate_matrix import MatrixPane
from studio.ui.widgets.evaluate_predict import ImagePredictions
from studio.ui.widgets.evaluate_views import (
    ERROR_STYLE,
    PredictionView,
    line,
    summary_html,
)
from studio.ui.widgets.export_panel import run_has_checkpoint

EMPTY_SUMMARY = ("Evaluate a run to see its accuracy, where it confuses classes and the "
                 "images it gets most wrong.")


# ---------------------------------------------------------------------------------------------
# The panel


class EvaluatePanel(ImagePredictions, CamViews, GalleryCleaning, QWidget):
    """Evaluate a run, explore its mistakes, and predict single images."""

    evaluation_finished = Signal(object)  # Evaluation
    prediction_finished = Signal(object)  # ImagePrediction
    dataset_changed = Signal(str)  # a gallery image was relabelled or removed in this dataset

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self._evaluation: Evaluation | None = None
        self._stop: threading.Event | None = None
        self.predictors = PredictorCache()
        self._cam_source: CamSource | None = None  # the evaluation's checkpoint
        self._prediction_cam: tuple[CamSource, str] | None = None  # (checkpoint, image)
        self._shown: tuple[Any, ...] = ()
        self.evaluate_task = BackgroundTask(self)
        self.predict_task = BackgroundTask(self)
        self.setAcceptDrops(True)
        self._make_run_widgets()
        self._make_result_widgets()
        self._build_layout()
        self._connect()
        self._build_gallery_cleaning()
        self._update_enabled()

    # -- construction ---------------------------------------------------------------------

    def _make_run_widgets(self) -> None:
        style = self.style()
        self.run_edit = QLineEdit()
        self.run_edit.setPlaceholderText("a run folder (it holds config.toml and checkpoints/)")
        self.run_edit.setToolTip("The training run to evaluate; a finished run is filled in here")
        self.run_edit.setAcceptDrops(False)  # a dropped folder goes to the panel instead
        self.run_browse = QPushButton("Browse…")
        self.run_browse.setToolTip("Pick a run folder written by Train or `studio train`")
        self.checkpoint_combo = QComboBox()
        self.checkpoint_combo.addItem("best (highest validation metric)", "best")
        self.checkpoint_combo.addItem("last (the final epoch)", "last")
        self.checkpoint_combo.setToolTip("Which checkpoint of the run to evaluate")
        self.other_check = QCheckBox("Another folder:")
        self.other_check.setToolTip("Evaluate a held-out folder with the run's class names "
                                    "(its test/ split if it has one, else all its images) "
                                    "instead of the run's validation images")
        self.other_edit = QLineEdit()
        self.other_edit.setPlaceholderText("a folder with one subfolder per class")
        self.other_edit.setToolTip("A folder of images sorted into the run's class names")
        self.other_edit.setAcceptDrops(False)
        self.other_browse = QPushButton("Browse…")
        self.other_browse.setToolTip("Pick a held-out folder to evaluate")

        self.evaluate_button = QPushButton(
            style.standardIcon(QStyle.StandardPixmap.SP_MediaPlay), "Evaluate")
        self.evaluate_button.setObjectName("evaluateButton")
        self.evaluate_button.setToolTip("Run the checkpoint over the images and compute the "
                                        "metrics (in the background)")
        self.stop_button = QPushButton(
            style.standardIcon(QStyle.StandardPixmap.SP_MediaStop), "Stop")
        self.stop_button.setToolTip("Stop the evaluation after the current batch")
        self.predict_button = QPushButton(
            style.standardIcon(QStyle.StandardPixmap.SP_FileIcon), "Predict an image…")
        self.predict_button.setToolTip("Choose an image file and see the run's top-5 classes "
                                       "for it; you can also drop a file on this page")
        self.progress = QProgressBar()
        self.progress.setVisible(False)
        self.progress.setFormat("%v of %m images")
        self.status_label = QLabel("Train a run (or pick a run folder) to evaluate it.")
        self.status_label.setWordWrap(True)
        self.status_label.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.status_label.setToolTip("What the panel is doing, or why it could not")

    def _make_result_widgets(self) -> None:
        self.summary_label = QLabel(EMPTY_SUMMARY)
        self.summary_label.setWordWrap(True)
        self.summary_label.setTextFormat(Qt.TextFormat.RichText)
        self.summary_label.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.summary_label.setToolTip("The evaluation at a glance")
        self.notes_label = QLabel()
        self.notes_label.setWordWrap(True)
        self.notes_label.setForegroundRole(QPalette.ColorRole.PlaceholderText)
        self.notes_label.setToolTip("What the evaluation had to decide for you")
        self.notes_label.setVisible(False)

        self.matrix_pane = MatrixPane()
        pane = self.matrix_pane  # its parts, by the names the page's tests and tools use
        self.confusion_model, self.matrix_view = pane.confusion_model, pane.matrix_view
        self.normalised_check = pane.normalised_check
        self.metrics_model, self.metrics_proxy = pane.metrics_model, pane.metrics_proxy
        self.metrics_view, self.averages_table = pane.metrics_view, pane.averages_table

        self.cam_controls = CamControls()
        self.cam_maps = CamMaps(self.predictors, self)
        self.gallery_model = GalleryModel(parent=self)
        self.gallery_view = QListView()
        self.gallery_view.setModel(self.gallery_model)
        self.gallery_view.setViewMode(QListView.ViewMode.IconMode)
        self.gallery_view.setIconSize(QSize(THUMBNAIL_SIZE, THUMBNAIL_SIZE))
        caption_height = 2 * self.gallery_view.fontMetrics().height()
        self.gallery_view.setGridSize(QSize(THUMBNAIL_SIZE + 44,
                                            THUMBNAIL_SIZE + caption_height + 14))
        self.gallery_view.setResizeMode(QListView.ResizeMode.Adjust)
        self.gallery_view.setMovement(QListView.Movement.Static)
        self.gallery_view.setUniformItemSizes(True)
        self.gallery_view.setWordWrap(True)
        self.gallery_view.setLayoutMode(QListView.LayoutMode.Batched)
        self.gallery_view.setBatchSize(200)
        self.gallery_view.setSelectionMode(QAbstractItemView.SelectionMode.SingleSelection)
        self.gallery_view.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.gallery_view.setToolTip("Double-click an image to open it; right-click to relabel "
                                     "or remove it from the dataset")
        self.gallery_title = QLabel("Click a cell of the confusion matrix to see its images.")
        self.gallery_title.setWordWrap(True)
        self.top_losses_button = QPushButton("Top losses")
        self.top_losses_button.setToolTip("The images whose true class got the lowest "
                                          "probability: mistakes, and doubtful answers")
        self.mistakes_button = QPushButton("All mistakes")
        self.mistakes_button.setToolTip("Every misclassified image, highest loss first")
        self.prediction_view = PredictionView()

    def _build_layout(self) -> None:
        run_row = QHBoxLayout()
        run_row.addWidget(QLabel("Run folder:"))
        run_row.addWidget(self.run_edit, 1)
        run_row.addWidget(self.run_browse)
        choice_row = QHBoxLayout()
        choice_row.addWidget(QLabel("Checkpoint:"))
        choice_row.addWidget(self.checkpoint_combo)
        choice_row.addSpacing(16)
        choice_row.addWidget(self.other_check)
        choice_row.addWidget(self.other_edit, 1)
        choice_row.addWidget(self.other_browse)
        buttons = QHBoxLayout()
        buttons.addWidget(self.evaluate_button)
        buttons.addWidget(self.stop_button)
        buttons.addSpacing(16)
        buttons.addWidget(self.predict_button)
        buttons.addSpacing(16)
        buttons.addWidget(self.progress, 3)
        buttons.addStretch(1)  # the buttons keep their size while no progress is shown

        images_page = QWidget()
        images_layout = QVBoxLayout(images_page)
        gallery_head = QHBoxLayout()
        gallery_head.addWidget(self.gallery_title, 1)
        gallery_head.addWidget(self.top_losses_button)
        gallery_head.addWidget(self.mistakes_button)
        images_layout.addLayout(gallery_head)
        images_layout.addWidget(self.gallery_view, 1)
        # a tab per view of the evaluation: a new view (calibration, say) is one more addTab
        self.tabs = QTabWidget()
        self.tabs.addTab(images_page, "Images")
        self.tabs.addTab(self.prediction_view, "Prediction")
        self.calibration_view = CalibrationView()
        self.tabs.addTab(self.calibration_view, "Calibration")
        self.tabs.setTabToolTip(2, "How far the model's confidence can be trusted: the "
                                   "reliability diagram, temperature scaling, an unknown "
                                   "threshold")
        self.images_page = images_page
        right = QWidget()
        right_layout = QVBoxLayout(right)
        right_layout.setContentsMargins(0, 0, 0, 0)
        right_layout.addWidget(self.cam_controls)  # the maps cover every picture on the right
        right_layout.addWidget(self.tabs, 1)

        results = QSplitter(Qt.Orientation.Horizontal)
        results.addWidget(self.matrix_pane)
        results.addWidget(right)
        results.setStretchFactor(0, 1)
        results.setStretchFactor(1, 1)
        results.setSizes([520, 560])
        results.setChildrenCollapsible(False)

        layout = QVBoxLayout(self)
        layout.addLayout(run_row)
        layout.addLayout(choice_row)
        layout.addLayout(buttons)
        layout.addWidget(self.status_label)
        layout.addWidget(line())
        layout.addWidget(self.summary_label)
        layout.addWidget(self.notes_label)
        layout.addWidget(results, 1)

    def _connect(self) -> None:
        self.evaluate_task.succeeded.connect(self._on_evaluate_task_succeeded)
        self.evaluate_task.failed.connect(self._on_evaluate_task_failed)
        self.evaluate_task.progressed.connect(self._on_evaluate_task_progressed)
        self.predict_task.succeeded.connect(self._on_predict_task_succeeded)
        self.predict_task.failed.connect(self._on_predict_task_failed)
        self.run_edit.textChanged.connect(self._on_run_edit_text_changed)
        self.run_browse.clicked.connect(self._on_run_browse_clicked)
        self.other_check.toggled.connect(self._on_other_check_toggled)
        self.other_browse.clicked.connect(self._on_other_browse_clicked)
        self.evaluate_button.clicked.connect(self._on_evaluate_button_clicked)
        self.stop_button.clicked.connect(self._on_stop_button_clicked)
        self.predict_button.clicked.connect(self._on_predict_button_clicked)
        self.matrix_pane.cell_chosen.connect(self._on_matrix_pane_cell_chosen)
        self.cam_controls.changed.connect(self._on_cam_controls_changed)
        self.cam_maps.arrived.connect(self._on_cam_maps_arrived)
        self.cam_maps.failed.connect(self._on_cam_maps_failed)
        self.top_losses_button.clicked.connect(self._on_top_losses_button_clicked)
        self.mistakes_button.clicked.connect(self._on_mistakes_button_clicked)
        self.gallery_view.doubleClicked.connect(self._on_gallery_view_double_clicked)

    # -- public ---------------------------------------------------------------------------

    @property
    def evaluation(self) -> Evaluation | None:
        return self._evaluation

    def set_run_dir(self, run_dir: str) -> None:
        """A run finished: fill it in; the user decides when to evaluate."""
        self.run_edit.setText(run_dir)
        if run_has_checkpoint(run_dir):
            self._say(f"Run {Path(run_dir).name} is ready: press Evaluate to see where it goes "
                      f"wrong.")

    def start_evaluation(self) -> None:
        run_dir = self.run_edit.text().strip()
        if not run_has_checkpoint(run_dir):
            self._say(f"{run_dir or 'No run folder'} has no checkpoint yet; finish at least one "
                      f"epoch of training first.", error=True)
            return
        data: str | None = None
        if self.other_check.isChecked():
            data = self.other_edit.text().strip()
            if not data:
                self._say("Choose the folder of images to evaluate, or untick “Another "
                          "folder”.", error=True)
                return
        checkpoint = str(self.checkpoint_combo.currentData())
        stop = threading.Event()
        self._stop = stop

        def job(progress: Any) -> Evaluation | None:
            try:
                evaluation = evaluate_run(run_dir, data=data, checkpoint=checkpoint,
                                          progress=progress, stop=stop)
                _ = evaluation.calibration  # fitted here, off the GUI thread
                return evaluation
            except EvaluationCancelled:
                return None

        self.progress.setRange(0, 0)  # busy until the images are counted
        self.progress.setVisible(True)
        where = "the images of " + data if data else "its validation images"
        self._say(f"Evaluating the {checkpoint} checkpoint of {Path(run_dir).name} on {where}…")
        self.evaluate_task.start(job, with_progress=True)
        self._update_enabled()

    def stop_evaluation(self) -> None:
        if self._stop is not None and self.evaluate_task.running:
            self._stop.set()
            self._say("Stopping after this batch…")

    def show_evaluation(self, evaluation: Evaluation) -> None:
        """Fill every view from ``evaluation``; the gallery starts with the top losses."""
        self._evaluation = evaluation
        self._shown = ()
        self.matrix_pane.set_evaluation(evaluation)
        self._cam_source = cam_source(evaluation.run_dir, evaluation.checkpoint)
        self.summary_label.setText(summary_html(evaluation))
        notes = [sentence(note) for note in evaluation.notes]
        self.notes_label.setText("Note: " + " ".join(notes) if notes else "")
        self.notes_label.setVisible(bool(notes))
        self.calibration_view.show_calibration(evaluation.calibration)
        self.show_top_losses()
        self._update_enabled()

    def show_cell(self, true: int, predicted: int) -> None:
        """The images of one confusion-matrix cell, in the gallery."""
        evaluation = self._evaluation
        if evaluation is None or ("cell", true, predicted) == self._shown:
            return
        labels = evaluation.labels
        results = evaluation.cell(true, predicted)
        self._show_results(results, ("cell", true, predicted))
        count = len(results)
        images = "image" if count == 1 else "images"
        if true == predicted:
            title = (f"{labels[true]} predicted correctly: {count} {images}, the most "
                     f"confident first.")
        elif count:
            title = (f"True {labels[true]} predicted as {labels[predicted]}: {count} {images}, "
                     f"the most confident first.")
        else:
            title = f"No image of {labels[true]} was predicted as {labels[predicted]}."
        self.gallery_title.setText(title)

    def show_top_losses(self) -> None:
        evaluation = self._evaluation
        if evaluation is None:
            return
        results = evaluation.top_losses()
        self.matrix_pane.clear_selection()
        self._show_results(results, ("top_losses",))
        wrong = sum(not r.correct for r in results)
        self.gallery_title.setText(f"Top losses: the {len(results)} images whose true class got "
                                   f"the lowest probability ({wrong} of them misclassified).")

    def show_mistakes(self) -> None:
        evaluation = self._evaluation
        if evaluation is None:
            return
        results = evaluation.misclassified()
        self.matrix_pane.clear_selection()
        self._show_results(results, ("mistakes",))
        self.gallery_title.setText(f"All {len(results)} misclassified images, highest loss "
                                   f"first." if results else "No image is misclassified.")

    # -- slots: evaluation ----------------------------------------------------------------

    @Slot(object)
    def _on_evaluate_task_succeeded(self, evaluation: Evaluation | None) -> None:
        self.progress.setVisible(False)
        self._update_enabled()
        if evaluation is None:
            self._say("Evaluation stopped; the results shown are unchanged.")
            return
        self.show_evaluation(evaluation)
        epoch = f", epoch {evaluation.epoch}" if evaluation.epoch else ""
        self._say(f"Evaluated {evaluation.images} images with the {evaluation.checkpoint} "
                  f"checkpoint{epoch}. Click a cell of the matrix to see its images.")
        self.evaluation_finished.emit(evaluation)

    @Slot(str)
    def _on_evaluate_task_failed(self, message: str) -> None:
        self.progress.setVisible(False)
        self._update_enabled()
        self._say(message, error=True)

    @Slot(int, int)
    def _on_evaluate_task_progressed(self, done: int, total: int) -> None:
        self.progress.setRange(0, max(1, total))
        self.progress.setValue(done)

    @Slot(str)
    def _on_run_edit_text_changed(self, text: str) -> None:
        self._update_enabled()

    @Slot()
    def _on_run_browse_clicked(self) -> None:
        path = QFileDialog.getExistingDirectory(self, "Choose a run folder", self.run_edit.text())
        if path:
            self.run_edit.setText(path)

    @Slot(bool)
    def _on_other_check_toggled(self, checked: bool) -> None:
        self._update_enabled()

    @Slot()
    def _on_other_browse_clicked(self) -> None:
        path = QFileDialog.getExistingDirectory(self, "Choose a folder to evaluate",
                                                self.other_edit.text())
        if path:
            self.other_edit.setText(path)
            self.other_check.setChecked(True)

    @Slot()
    def _on_evaluate_button_clicked(self) -> None:
        self.start_evaluation()

    @Slot()
    def _on_stop_button_clicked(self) -> None:
        self.stop_evaluation()

    # -- slots: results -------------------------------------------------------------------

    @Slot(int, int)
    def _on_matrix_pane_cell_chosen(self, true: int, predicted: int) -> None:
        self.show_cell(true, predicted)

    @Slot()
    def _on_top_losses_button_clicked(self) -> None:
        self.show_top_losses()

    @Slot()
    def _on_mistakes_button_clicked(self) -> None:
        self.show_mistakes()

    @Slot(QModelIndex)
    def _on_gallery_view_double_clicked(self, index: QModelIndex) -> None:
        path = index.data(PATH_ROLE)
        if path:
            QDesktopServices.openUrl(QUrl.fromLocalFile(str(path)))

    # -- helpers --------------------------------------------------------------------------

    def _show_results(self, results: list[ImageResult], shown: tuple[Any, ...]) -> None:
        assert self._evaluation is not None
        self._shown = shown
        self.cam_maps.forget_requests()  # the old listing's maps are not needed first
        self.gallery_model.set_results(results, self._evaluation.labels)
        self.gallery_view.scrollToTop()
        self.tabs.setCurrentWidget(self.images_page)

    def _say(self, message: str, error: bool = False) -> None:
        self.status_label.setText(sentence(message))
        self.status_label.setStyleSheet(ERROR_STYLE if error else "")

    def _update_enabled(self) -> None:
        running = self.evaluate_task.running
        ready = run_has_checkpoint(self.run_edit.text().strip())
        self.evaluate_button.setEnabled(ready and not running)
        self.stop_button.setEnabled(running)
        self.predict_button.setEnabled(ready)
        other = self.other_check.isChecked()
        self.other_edit.setEnabled(other)
        has_results = self._evaluation is not None
        self.top_losses_button.setEnabled(has_results)
        self.mistakes_button.setEnabled(has_results)
        self.normalised_check.setEnabled(has_results)
