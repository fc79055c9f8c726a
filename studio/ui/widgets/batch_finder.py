""""Find" beside the Train page's batch size: the largest batch that fits on the CUDA GPU, less a
margin, found by trial steps in the background (studio.engine.batch_finder). A mixin of
TrainingPanel, which owns the project, the device probe's answer and the form."""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Any

from PySide6.QtCore import Slot
from PySide6.QtWidgets import QLabel, QPushButton

from studio.ui.tasks import BackgroundTask
from studio.ui.text import sentence

if TYPE_CHECKING:
    from studio.ui.devices import DeviceInfo
    from studio.ui.project import ProjectModel

FIND_TIP = ("Train a few real steps on the GPU with growing batches and set the batch size to "
            "90 % of the largest that fits (a multiple of 8). Takes seconds to a minute.")
NO_GPU_TIP = "Finding the batch size needs a CUDA GPU; on this machine it is limited by time, " \
             "not memory."


def _find(config: Any, scan: Any, stop: threading.Event) -> Any:
    from studio.engine.batch_finder import find_batch_size  # imports torch: off the GUI thread

    return find_batch_size(config, scan, stop=stop)


class BatchSizeFinder:
    """The Find button and the line under the batch size that says what it found."""

    _project: ProjectModel
    _device_info: DeviceInfo | None

    def _build_batch_finder(self) -> None:
        self.find_batch_button = QPushButton("Find")
        self.find_batch_button.setToolTip(FIND_TIP)
        self.find_batch_button.clicked.connect(self._on_find_batch_button_clicked)
        self.batch_hint = QLabel()
        self.batch_hint.setWordWrap(True)
        self.batch_hint.setVisible(False)
        self._find_stop = threading.Event()
        self._find_task = BackgroundTask(self)  # type: ignore[arg-type]
        self._find_task.succeeded.connect(self._on_find_task_succeeded)
        self._find_task.failed.connect(self._on_find_task_failed)
        self._find_task.running_changed.connect(self._on_find_task_running_changed)
        self._show_finder_device()

    def _show_finder_device(self) -> None:
        """Find needs CUDA: off (saying why) until the probe finds a GPU, and for CPU runs."""
        info, device = self._device_info, self._project.config.train.device
        usable = info is not None and info.cuda and device in ("auto", "cuda")
        if not self._find_task.running:
            self.find_batch_button.setEnabled(usable)
        self.find_batch_button.setToolTip(FIND_TIP if usable else NO_GPU_TIP)

    def _on_find_batch_button_clicked(self) -> None:
        if self._find_task.running:
            self._find_stop.set()
            return
        self._find_stop = threading.Event()
        config, scan, stop = self._project.config, self._project.scan, self._find_stop
        self._say_batch("Finding the batch size: trial steps on the GPU…")
        self._find_task.start(lambda: _find(config, scan, stop))

    @Slot(object)
    def _on_find_task_succeeded(self, found: Any) -> None:
        if found.ended in ("found", "whole_split"):
            self._project.update("train", batch_size=found.batch_size)
        self._say_batch(sentence(found.message))

    @Slot(str)
    def _on_find_task_failed(self, message: str) -> None:
        self._say_batch(sentence(f"the batch size was not found: {message}"))

    @Slot(bool)
    def _on_find_task_running_changed(self, running: bool) -> None:
        self.find_batch_button.setText("Stop" if running else "Find")
        if not running:
            self._show_finder_device()

    def _say_batch(self, text: str) -> None:
        self.batch_hint.setText(text)
        self.batch_hint.setVisible(bool(text))
