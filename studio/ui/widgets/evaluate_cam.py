"""Class-activation maps on the Evaluate page: the "Show CAM" controls, and the maps computed in
the thread pool a few at a time, kept, and drawn as overlays at any size and opacity.

The maps come from studio.engine.cam with the models of the page's PredictorCache. A map is
asked for by the gallery (for each thumbnail it paints) and by the prediction view; until it
arrives they show the plain picture. Changing the opacity redraws the overlays from the kept
maps: nothing is computed again.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image
from PySide6.QtCore import QObject, Qt, QTimer, Signal, Slot
from PySide6.QtGui import QIcon, QImage, QPixmap
from PySide6.QtWidgets import QCheckBox, QComboBox, QHBoxLayout, QLabel, QSlider, QWidget

from studio.engine.cam import (
    CAM_CLASSES,
    DEFAULT_OPACITY,
    INSTALL_HINT,
    Explanation,
    grad_cam_installed,
)
from studio.engine.errors import StudioError
from studio.engine.evaluate import ImageResult
from studio.engine.runs import CheckpointIdentity, checkpoint_identity
from studio.ui.models.gallery import THUMBNAIL_SIZE, GalleryModel
from studio.ui.predictors import PredictorCache
from studio.ui.tasks import BackgroundTask
from studio.ui.widgets.evaluate_views import PREVIEW_SIZE, PredictionView

MAPS_PER_JOB = 4  # a job returns after this many maps, so the first thumbnails come soon
KEPT_MAPS = 256  # maps kept: ~50 MB at 224 px
KEPT_PIXMAPS = 512


@dataclass(frozen=True, slots=True)
class CamSource:
    """Which loaded checkpoint a map comes from."""

    run_dir: str
    checkpoint: str
    identity: CheckpointIdentity


def cam_source(run_dir: str, checkpoint: str) -> CamSource:
    return CamSource(run_dir, checkpoint, checkpoint_identity(run_dir, checkpoint))


MapKey = tuple[CheckpointIdentity, str, str | None]  # (checkpoint, image path, class or None)
Request = tuple[CamSource, str, str | None]


def compute_maps(predictors: PredictorCache, requests: list[Request]
                 ) -> list[tuple[MapKey, Explanation | None, str]]:
    """Maps for ``requests`` (pool thread, no Qt): (key, map or None, why not). A missing
    grad-cam package or an unloadable run is raised: it stops every request alike."""
    done = []
    for source, path, class_name in requests:
        explainer = predictors.explainer(source.run_dir, source.checkpoint)
        key = (source.identity, path, class_name)
        try:
            done.append((key, explainer.explain(path, class_name), ""))
        except StudioError as error:  # this image only: unreadable, or no class of the run
            done.append((key, None, str(error)))
    return done


def overlay_pixmap(explanation: Explanation, size: int, opacity: float) -> QPixmap:
    """The map over the image the model saw, fitted in ``size`` pixels (GUI thread)."""
    pixels = explanation.overlay(opacity)
    image = Image.fromarray(pixels, "RGB")
    longest = max(image.width, image.height)
    if longest != size:
        scale = size / longest
        image = image.resize((max(1, round(image.width * scale)),
                              max(1, round(image.height * scale))),
                             Image.Resampling.LANCZOS if scale < 1 else Image.Resampling.NEAREST)
    data = image.tobytes()
    qimage = QImage(data, image.width, image.height, 3 * image.width,
                    QImage.Format.Format_RGB888).copy()
    return QPixmap.fromImage(qimage)


class CamMaps(QObject):
    """Maps asked for, computed in the background, and kept (least recently used dropped)."""

    arrived = Signal()  # a batch of maps was kept
    failed = Signal(str)  # a sentence: no map can be made (grad-cam missing, run unloadable)

    def __init__(self, predictors: PredictorCache, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self._predictors = predictors
        self._maps: OrderedDict[MapKey, Explanation | None] = OrderedDict()
        self._why: dict[MapKey, str] = {}
        self._pixmaps: OrderedDict[tuple[MapKey, int], QPixmap] = OrderedDict()
        self._pending: dict[MapKey, Request] = {}  # ordered: asked for, not yet computing
        self._in_flight: list[MapKey] = []
        self.opacity = DEFAULT_OPACITY
        self._task = BackgroundTask(self)
        self._task.succeeded.connect(self._on_task_succeeded)
        self._task.failed.connect(self._on_task_failed)
        self._timer = QTimer(self)
        self._timer.setSingleShot(True)
        self._timer.setInterval(0)  # after a view has asked for everything it paints
        self._timer.timeout.connect(self._on_timer_timeout)

    @property
    def busy(self) -> bool:
        return bool(self._pending or self._in_flight)

    def set_opacity(self, opacity: float) -> None:
        self.opacity = opacity
        self._pixmaps.clear()

    def forget_requests(self) -> None:
        """Another listing is shown: what the old one asked for is not needed any more."""
        self._pending.clear()

    def pixmap(self, source: CamSource, path: str, class_name: str | None,
               size: int) -> QPixmap | None:
        """The overlay, or None while it is computed (it is asked for) or cannot be made."""
        key = (source.identity, path, class_name)
        if key not in self._maps:
            if key not in self._pending and key not in self._in_flight:
                self._pending[key] = (source, path, class_name)
                self._timer.start()
            return None
        self._maps.move_to_end(key)
        explanation = self._maps[key]
        if explanation is None:
            return None
        cached = self._pixmaps.get((key, size))
        if cached is None:
            cached = overlay_pixmap(explanation, size, self.opacity)
            self._pixmaps[(key, size)] = cached
            while len(self._pixmaps) > KEPT_PIXMAPS:
                self._pixmaps.popitem(last=False)
        return cached

    def why_not(self, source: CamSource, path: str, class_name: str | None) -> str:
        """Why a map could not be made ("" when it was, or is still coming)."""
        return self._why.get((source.identity, path, class_name), "")

    def icon(self, source: CamSource, path: str, class_name: str | None,
             size: int) -> QIcon | None:
        pixmap = self.pixmap(source, path, class_name, size)
        return QIcon(pixmap) if pixmap is not None else None

    # -- background -----------------------------------------------------------------------

    @Slot()
    def _on_timer_timeout(self) -> None:
        if self._task.running or not self._pending:
            return
        keys = list(self._pending)[:MAPS_PER_JOB]
        requests = [self._pending.pop(key) for key in keys]
        self._in_flight = keys
        predictors = self._predictors
        self._task.start(lambda: compute_maps(predictors, requests))

    @Slot(object)
    def _on_task_succeeded(self, done: list[tuple[MapKey, Explanation | None, str]]) -> None:
        for key, explanation, why in done:
            self._maps[key] = explanation
            if why:
                self._why[key] = why
        while len(self._maps) > KEPT_MAPS:
            dropped, _ = self._maps.popitem(last=False)
            self._why.pop(dropped, None)
        self._in_flight = []
        self.arrived.emit()
        if self._pending:
            self._timer.start()

    @Slot(str)
    def _on_task_failed(self, message: str) -> None:
        for key in [*self._in_flight, *self._pending]:  # the same cause would stop them all
            self._maps[key] = None
            self._why[key] = message
        self._in_flight, self._pending = [], {}
        self.failed.emit(message)
        self.arrived.emit()


class CamControls(QWidget):
    """"Show CAM", which class it explains, and how strongly it covers the image."""

    changed = Signal()

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.show_check = QCheckBox("Show CAM")
        self.show_check.setToolTip("Colour each image by where it raised the score of a class "
                                   "(Grad-CAM), over the picture the model saw: resized and "
                                   "centre-cropped")
        self.class_combo = QComboBox()
        self.class_combo.addItem("for the predicted class", "predicted")
        self.class_combo.addItem("for the true class", "true")
        self.class_combo.setToolTip("Explain the model's answer, or what made it see (or miss) "
                                    "the true class; a dropped image's true class is its "
                                    "folder's name")
        self.opacity_slider = QSlider(Qt.Orientation.Horizontal)
        self.opacity_slider.setRange(0, 100)
        self.opacity_slider.setValue(round(100 * DEFAULT_OPACITY))
        self.opacity_slider.setFixedWidth(120)
        self.opacity_slider.setToolTip("How strongly the map covers the image")
        self.opacity_label = QLabel()
        layout = QHBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self.show_check)
        layout.addWidget(self.class_combo)
        layout.addSpacing(12)
        layout.addWidget(QLabel("Opacity:"))
        layout.addWidget(self.opacity_slider)
        layout.addWidget(self.opacity_label)
        layout.addStretch(1)
        self.show_check.toggled.connect(self._on_show_check_toggled)
        self.class_combo.currentIndexChanged.connect(self._on_class_combo_index_changed)
        self.opacity_slider.valueChanged.connect(self._on_opacity_slider_value_changed)
        self._update()

    @property
    def shown(self) -> bool:
        return self.show_check.isChecked()

    @property
    def which(self) -> str:
        value = str(self.class_combo.currentData())
        return value if value in CAM_CLASSES else "predicted"

    @property
    def opacity(self) -> float:
        return self.opacity_slider.value() / 100

    def turn_off(self) -> None:
        """Untick without telling (the caller says why)."""
        self.show_check.blockSignals(True)
        self.show_check.setChecked(False)
        self.show_check.blockSignals(False)
        self._update()

    @Slot(bool)
    def _on_show_check_toggled(self, checked: bool) -> None:
        self._changed()

    @Slot(int)
    def _on_class_combo_index_changed(self, index: int) -> None:
        self._changed()

    @Slot(int)
    def _on_opacity_slider_value_changed(self, value: int) -> None:
        self._changed()

    def _changed(self) -> None:
        self._update()
        self.changed.emit()

    def _update(self) -> None:
        self.opacity_label.setText(f"{self.opacity_slider.value()} %")
        self.class_combo.setEnabled(self.shown)
        self.opacity_slider.setEnabled(self.shown)


class CamViews:
    """The maps in the gallery and the prediction view: a mixin of EvaluatePanel (it uses the
    panel's CAM controls and maps, gallery model, prediction view and message line)."""

    cam_controls: CamControls
    cam_maps: CamMaps
    gallery_model: GalleryModel
    prediction_view: PredictionView
    _cam_source: CamSource | None
    _prediction_cam: tuple[CamSource, str] | None

    def _gallery_overlay(self, result: ImageResult) -> QIcon | None:
        """The thumbnail's overlay for the chosen class, once computed (None until then)."""
        source, labels = self._cam_source, self.gallery_model.labels
        if source is None or not labels:
            return None
        index = result.predicted if self.cam_controls.which == "predicted" else result.true
        return self.cam_maps.icon(source, result.path, labels[index], THUMBNAIL_SIZE)

    def _show_prediction_cam(self, run_dir: str, checkpoint: str, path: str) -> None:
        self._prediction_cam = (cam_source(run_dir, checkpoint), path)
        self._refresh_prediction_cam()

    def _refresh_prediction_cam(self) -> None:
        """The predicted image with its map when CAM is shown (a dropped image's true class is
        the name of its folder)."""
        if not self.cam_controls.shown or self._prediction_cam is None:
            self.prediction_view.show_overlay(None)
            return
        source, path = self._prediction_cam
        class_name = None if self.cam_controls.which == "predicted" else Path(path).parent.name
        pixmap = self.cam_maps.pixmap(source, path, class_name, PREVIEW_SIZE)
        self.prediction_view.show_overlay(pixmap)
        why = self.cam_maps.why_not(source, path, class_name)
        if pixmap is None and why and self.cam_controls.which == "true":
            self._say(f"No map of {Path(path).name}'s true class: {why}.", error=True)

    @Slot()
    def _on_cam_controls_changed(self) -> None:
        controls = self.cam_controls
        if controls.shown and not grad_cam_installed():
            controls.turn_off()
            self._say(f"Class-activation maps need the grad-cam package; install it with "
                      f"{INSTALL_HINT}.", error=True)
            return
        self.cam_maps.set_opacity(controls.opacity)
        self.gallery_model.set_overlay(self._gallery_overlay if controls.shown else None)
        self._refresh_prediction_cam()

    @Slot()
    def _on_cam_maps_arrived(self) -> None:
        if self.cam_controls.shown:
            self.gallery_model.refresh_decorations()
            self._refresh_prediction_cam()

    @Slot(str)
    def _on_cam_maps_failed(self, message: str) -> None:
        self._say(f"No class-activation map could be made: {message}", error=True)


def pixels_of(pixmap: QPixmap) -> np.ndarray:
    """A pixmap's RGB pixels (tests and screenshots compare them)."""
    image = pixmap.toImage().convertToFormat(QImage.Format.Format_RGB888)
    width, height, stride = image.width(), image.height(), image.bytesPerLine()
    data = np.frombuffer(image.constBits(), dtype=np.uint8, count=stride * height)
    return data.reshape(height, stride)[:, :3 * width].reshape(height, width, 3).copy()
