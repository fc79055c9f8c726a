"""WeightsDownload: one pretrained-weights download at a time, in a QThread, with a cancel event.

The engine's ``download_weights`` runs in a parentless worker moved to a thread (house style);
its progress reaches the GUI thread at most ~10 times a second, with the speed worked out here.
The Backbone page shows it; a TrainGate holds the window's Train until the weights are in.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from dataclasses import dataclass
from typing import Any

from PySide6.QtCore import QObject, QThread, Signal, Slot

from studio.engine.config import ModelConfig
from studio.engine.downloads import DownloadCancelled, download_weights, hub_cache_path
from studio.engine.errors import StudioError
from studio.ui.text import sentence

log = logging.getLogger(__name__)

EMIT_EVERY_S = 0.1
SPEED_WINDOW_S = 3.0


@dataclass(frozen=True, slots=True)
class DownloadState:
    """How far a download is: what the progress bar shows."""

    file_name: str
    done: int
    total: int | None
    bytes_per_second: float


@dataclass(frozen=True, slots=True)
class DownloadResult:
    """How a download ended: ``outcome`` is 'completed', 'cancelled' or 'failed'."""

    weights: Any
    outcome: str
    message: str  # a sentence from the engine when it did not complete, else ""
    path: str

    @property
    def ok(self) -> bool:
        return self.outcome == "completed"


class DownloadWorker(QObject):
    """Lives in the download thread; ``run`` fetches one file."""

    progressed = Signal(object)  # DownloadState
    finished = Signal(object)  # DownloadResult

    def __init__(self, weights: Any, cancel: threading.Event) -> None:
        super().__init__()  # no parent: moveToThread needs that
        self._weights, self._cancel = weights, cancel
        self._name = hub_cache_path(weights).name
        self._recent: deque[tuple[float, int]] = deque()
        self._emitted = 0.0

    def _on_progress(self, done: int, total: int | None) -> None:
        now = time.monotonic()
        self._recent.append((now, done))
        while len(self._recent) > 2 and now - self._recent[0][0] > SPEED_WINDOW_S:
            self._recent.popleft()
        if now - self._emitted < EMIT_EVERY_S and done != total:
            return
        self._emitted = now
        then, before = self._recent[0]
        speed = (done - before) / (now - then) if now > then else 0.0
        self.progressed.emit(DownloadState(self._name, done, total, speed))

    @Slot()
    def run(self) -> None:
        path = str(hub_cache_path(self._weights))
        try:
            download_weights(self._weights, None, self._on_progress, self._cancel)
        except DownloadCancelled as error:
            result = DownloadResult(self._weights, "cancelled", str(error), path)
        except StudioError as error:
            result = DownloadResult(self._weights, "failed", str(error), path)
        except Exception as error:  # a bug: one sentence here, the traceback in the log
            log.exception("weights download failed")
            result = DownloadResult(self._weights, "failed", f"the download failed unexpectedly "
                                    f"({type(error).__name__}: {error}); the details are in "
                                    f"the log", path)
        else:
            result = DownloadResult(self._weights, "completed", "", path)
        self.finished.emit(result)


class WeightsDownload(QObject):
    """Start and cancel one download at a time, from the GUI thread; signals arrive there."""

    started = Signal(object)  # the weights enum member
    progressed = Signal(object)  # DownloadState
    finished = Signal(object)  # DownloadResult, after the thread has ended

    def __init__(self, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self._cancel = threading.Event()
        self._thread: QThread | None = None
        self._worker: DownloadWorker | None = None
        self._weights: Any | None = None
        self._result: DownloadResult | None = None

    @property
    def is_running(self) -> bool:
        return self._thread is not None

    @property
    def weights(self) -> Any | None:
        """The weights being downloaded, or None."""
        return self._weights

    def start(self, weights: Any) -> bool:
        """Download ``weights`` unless a download runs already (False then)."""
        if self.is_running:
            return False
        self._cancel.clear()
        self._result = None
        thread = QThread()
        thread.setObjectName("studio-download")
        worker = DownloadWorker(weights, self._cancel)
        worker.moveToThread(thread)
        worker.progressed.connect(self.progressed)
        worker.finished.connect(self._on_worker_finished)
        thread.started.connect(worker.run)
        thread.finished.connect(self._on_thread_finished)
        self._thread, self._worker, self._weights = thread, worker, weights
        thread.start()
        self.started.emit(weights)
        return True

    def cancel(self) -> None:
        """Stop at the next chunk; the partial file stays for the next download to resume."""
        self._cancel.set()

    def wait(self, milliseconds: int = 30_000) -> bool:
        """Block until the thread has ended (for closing the window); True when it has."""
        thread = self._thread
        return True if thread is None else thread.wait(milliseconds)

    @Slot(object)
    def _on_worker_finished(self, result: DownloadResult) -> None:
        self._result = result
        if self._thread is not None:
            self._thread.quit()

    @Slot()
    def _on_thread_finished(self) -> None:
        thread, worker = self._thread, self._worker
        self._thread = self._worker = self._weights = None
        if worker is not None:
            worker.deleteLater()
        if thread is not None:
            thread.deleteLater()
        if self._result is not None:
            self.finished.emit(self._result)


class TrainGate(QObject):
    """Holds a Train press until uncached pretrained weights are in: ``released`` then (train
    now), or ``refused`` with a sentence when their download failed or was cancelled."""

    released = Signal()
    refused = Signal(str)

    def __init__(self, download: WeightsDownload, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self._download = download
        self.waiting = False
        download.finished.connect(self._on_download_finished)

    def hold(self, config: ModelConfig) -> str | None:
        """None when ``config`` can train now; else why it waits, the download started."""
        from studio.engine.downloads import weights_to_download

        weights = weights_to_download(config)
        if weights is None:
            return None
        download = self._download
        if download.is_running and download.weights is not weights:
            return (f"Another download ({hub_cache_path(download.weights).name}) is running; "
                    f"wait for it or cancel it on the Backbone page, then press Train again.")
        download.start(weights)  # returns at once when these weights are on their way already
        self.waiting = True
        return (f"Downloading the pretrained weights of {config.backbone} first; training "
                f"starts when they are in (progress and Cancel on the Backbone page).")

    def drop(self) -> None:
        """Forget a waiting Train press (the window closes)."""
        self.waiting = False

    @Slot(object)
    def _on_download_finished(self, result: DownloadResult) -> None:
        if not self.waiting:
            return
        self.waiting = False
        if result.ok:
            self.released.emit()
        else:
            self.refused.emit(sentence(f"training did not start: {result.message}"))
