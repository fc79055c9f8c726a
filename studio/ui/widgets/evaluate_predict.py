"""Single-image predictions on the Evaluate page: "Predict an image…", a dropped file or folder,
with the models the page's PredictorCache (ui/predictors.py) keeps loaded. A mixin of
EvaluatePanel (it uses the panel's run line, checkpoint box, tabs, prediction view, predict task
and message line), kept apart so the panel's file stays about evaluating a run.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from PySide6.QtCore import QMimeData, Slot
from PySide6.QtGui import QDragEnterEvent, QDropEvent
from PySide6.QtWidgets import QFileDialog

from studio.engine.evaluate import ImagePrediction
from studio.ui.text import sentence
from studio.ui.thumbnails import Thumbnail, make_thumbnail
from studio.ui.widgets.evaluate_views import PREVIEW_SIZE, TOP_K
from studio.ui.widgets.export_panel import run_has_checkpoint

if TYPE_CHECKING:
    from PySide6.QtWidgets import QCheckBox, QComboBox, QLineEdit, QTabWidget

    from studio.ui.predictors import PredictorCache
    from studio.ui.tasks import BackgroundTask
    from studio.ui.widgets.evaluate_views import PredictionView

IMAGE_FILTER = ("Images (*.png *.jpg *.jpeg *.bmp *.gif *.tif *.tiff *.webp *.ppm *.pgm);;"
                "All files (*)")


def dropped_path(mime: QMimeData | None) -> str | None:
    """The one local file or folder being dragged, or None for anything else."""
    if mime is None or not mime.hasUrls():
        return None
    urls = [url for url in mime.urls() if url.isLocalFile()]
    return urls[0].toLocalFile() if len(urls) == 1 else None


class ImagePredictions:
    """Predicting single images from the chosen run's checkpoint (the panel's ``_say``,
    ``set_run_dir`` and ``prediction_finished`` signal are used)."""

    run_edit: QLineEdit
    checkpoint_combo: QComboBox
    other_edit: QLineEdit
    other_check: QCheckBox
    tabs: QTabWidget
    prediction_view: PredictionView
    predict_task: BackgroundTask
    predictors: PredictorCache
    _prediction_cam: Any

    def predict_file(self, path: str) -> None:
        """Top-5 classes of one image file, from the run's model (loaded once, kept)."""
        run_dir = self.run_edit.text().strip()
        if not run_has_checkpoint(run_dir):
            self._say("Choose a trained run folder first: the prediction comes from its "
                      "checkpoint.", error=True)
            return
        checkpoint = str(self.checkpoint_combo.currentData())
        predictors = self.predictors
        loaded = predictors.loaded(run_dir, checkpoint)

        def job() -> tuple[str, str, ImagePrediction, Thumbnail | None]:
            prediction = predictors.predictor(run_dir, checkpoint).predict(path, k=TOP_K)
            return run_dir, checkpoint, prediction, make_thumbnail("", path, PREVIEW_SIZE)

        loading = "" if loaded else f" (loading the {checkpoint} checkpoint first)"
        self._say(f"Predicting {Path(path).name}{loading}…")
        self.predict_task.start(job)

    def accept_drop(self, path: str) -> bool:
        """A dropped image is predicted; a dropped run folder is filled in; another folder
        becomes the held-out folder to evaluate."""
        target = Path(path)
        if target.is_file():
            self.tabs.setCurrentWidget(self.prediction_view)
            self.predict_file(path)
            return True
        if target.is_dir():
            if run_has_checkpoint(path):
                self.set_run_dir(path)
            else:
                self.other_edit.setText(path)
                self.other_check.setChecked(True)
                self._say(f"{target.name} will be evaluated instead of the run's validation "
                          f"images; press Evaluate.")
            return True
        return False

    @Slot()
    def _on_predict_button_clicked(self) -> None:
        start = self.run_edit.text().strip() or str(Path.home())
        path, _ = QFileDialog.getOpenFileName(self, "Predict an image", start, IMAGE_FILTER)
        if path:
            self.tabs.setCurrentWidget(self.prediction_view)
            self.predict_file(path)

    @Slot(object)
    def _on_predict_task_succeeded(self, outcome: tuple[Any, ...]) -> None:
        run_dir, checkpoint, prediction, thumb = outcome
        self.prediction_view.show_prediction(prediction, thumb)
        self._show_prediction_cam(run_dir, checkpoint, prediction.path)
        self.tabs.setCurrentWidget(self.prediction_view)
        name, probability = prediction.top[0]
        self._say(f"{Path(prediction.path).name}: {name} ({probability:.1%}).")
        self.prediction_finished.emit(prediction)

    @Slot(str)
    def _on_predict_task_failed(self, message: str) -> None:
        self._prediction_cam = None
        self.prediction_view.clear(sentence(message))
        self.tabs.setCurrentWidget(self.prediction_view)
        self._say(message, error=True)

    # -- drag and drop (Qt overrides) -----------------------------------------------------

    def dragEnterEvent(self, event: QDragEnterEvent) -> None:  # noqa: N802 - Qt override
        if dropped_path(event.mimeData()) is not None:
            event.acceptProposedAction()
        else:
            event.ignore()

    def dropEvent(self, event: QDropEvent) -> None:  # noqa: N802 - Qt override
        path = dropped_path(event.mimeData())
        if path is not None and self.accept_drop(path):
            event.acceptProposedAction()
        else:
            event.ignore()
