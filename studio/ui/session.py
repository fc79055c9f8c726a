"""TrainingSession: runs the engine's Trainer in a QThread and relays its events as signals.

House style: a parentless worker QObject moved to a QThread; this GUI-thread session owns both
and the stop/pause events. Worker signals are connected to the session's own signals (queued),
so every slot in the window runs on the GUI thread.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path

from PySide6.QtCore import QObject, QThread, Signal, Slot

from studio.engine.config import RunConfig
from studio.engine.errors import StudioError
from studio.engine.events import (
    BatchEnded,
    CacheReport,
    Callback,
    CheckpointSaved,
    EpochEnded,
    FitEnded,
    FitStarted,
    Outcome,
    StageStarted,
    WarningIssued,
)

log = logging.getLogger(__name__)


class TrainingWorker(QObject):
    """Lives in the training thread; ``run`` drives one fit and emits its events."""

    fit_started = Signal(object)
    stage_started = Signal(object)
    batch_ended = Signal(object)
    epoch_ended = Signal(object)
    checkpoint_saved = Signal(object)
    warning_issued = Signal(object)
    cache_reported = Signal(object)
    finished = Signal(object)  # FitEnded

    def __init__(self, config: RunConfig | None, run_dir: str, stop: threading.Event,
                 pause: threading.Event, resume: bool = False) -> None:
        super().__init__()  # no parent: moveToThread needs that
        self._config, self._run_dir, self._resume = config, run_dir, resume
        self._stop, self._pause = stop, pause

    @Slot()
    def run(self) -> None:
        from studio.engine.trainer import Trainer  # torch loads in this thread, not the GUI's

        relay = SignalRelay(self)
        try:
            if self._resume:
                trainer = Trainer.resume_run(self._run_dir, callbacks=[relay])
            else:
                assert self._config is not None
                trainer = Trainer(self._config, self._run_dir, callbacks=[relay])
            result = trainer.fit(self._stop, self._pause)
        except StudioError as error:
            result = FitEnded(Outcome.FAILED, str(error), 0, None, None, "val_acc",
                              self._run_dir, 0.0)
        except Exception as error:  # never let a bug take the window down
            log.exception("training thread failed")
            result = FitEnded(Outcome.FAILED, f"training failed unexpectedly "
                              f"({type(error).__name__}: {error}); the details are in the log",
                              0, None, None, "val_acc", self._run_dir, 0.0)
        self.finished.emit(result)


class SignalRelay(Callback):
    """An engine callback that turns events into the worker's signals."""

    def __init__(self, worker: TrainingWorker) -> None:
        self.worker = worker

    def on_fit_start(self, event: FitStarted) -> None:
        self.worker.fit_started.emit(event)

    def on_stage_start(self, event: StageStarted) -> None:
        self.worker.stage_started.emit(event)

    def on_batch_end(self, event: BatchEnded) -> None:
        self.worker.batch_ended.emit(event)

    def on_epoch_end(self, event: EpochEnded) -> None:
        self.worker.epoch_ended.emit(event)

    def on_checkpoint(self, event: CheckpointSaved) -> None:
        self.worker.checkpoint_saved.emit(event)

    def on_warning(self, event: WarningIssued) -> None:
        self.worker.warning_issued.emit(event)

    def on_cache(self, event: CacheReport) -> None:
        self.worker.cache_reported.emit(event)


class TrainingSession(QObject):
    """Start, pause, resume and stop one training run at a time, from the GUI thread."""

    fit_started = Signal(object)
    stage_started = Signal(object)
    batch_ended = Signal(object)
    epoch_ended = Signal(object)
    checkpoint_saved = Signal(object)
    warning_issued = Signal(object)
    cache_reported = Signal(object)
    finished = Signal(object)  # FitEnded, after the thread has ended
    running_changed = Signal(bool)
    paused_changed = Signal(bool)

    def __init__(self, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self._stop = threading.Event()
        self._pause = threading.Event()
        self._thread: QThread | None = None
        self._worker: TrainingWorker | None = None
        self._result: FitEnded | None = None

    @property
    def is_running(self) -> bool:
        return self._thread is not None

    @property
    def is_paused(self) -> bool:
        return self._pause.is_set()

    @property
    def stop_requested(self) -> bool:
        return self._stop.is_set()

    def start(self, config: RunConfig, run_dir: str | Path) -> None:
        self._launch(config, str(run_dir), resume=False)

    def resume_run(self, run_dir: str | Path) -> None:
        self._launch(None, str(run_dir), resume=True)

    def _launch(self, config: RunConfig | None, run_dir: str, resume: bool) -> None:
        if self._thread is not None:
            raise RuntimeError("a training run is already going")
        self._stop.clear()
        self._pause.clear()
        self._result = None
        thread = QThread()
        thread.setObjectName("studio-training")
        worker = TrainingWorker(config, run_dir, self._stop, self._pause, resume)
        worker.moveToThread(thread)
        for name in ("fit_started", "stage_started", "batch_ended", "epoch_ended",
                     "checkpoint_saved", "warning_issued", "cache_reported"):
            getattr(worker, name).connect(getattr(self, name))
        worker.finished.connect(self._on_worker_finished)
        thread.started.connect(worker.run)
        thread.finished.connect(self._on_thread_finished)
        self._thread, self._worker = thread, worker
        thread.start()
        self.running_changed.emit(True)

    def stop(self) -> None:
        """Ask the run to stop; it answers within one batch (a paused run wakes to stop)."""
        self._stop.set()
        if self._pause.is_set():
            self._pause.clear()
            self.paused_changed.emit(False)

    def pause(self) -> None:
        if self._thread is not None and not self._pause.is_set():
            self._pause.set()
            self.paused_changed.emit(True)

    def resume(self) -> None:
        if self._pause.is_set():
            self._pause.clear()
            self.paused_changed.emit(False)

    def wait(self, milliseconds: int = 30_000) -> bool:
        """Block until the thread has ended (for closing the window); True when it has."""
        thread = self._thread
        return True if thread is None else thread.wait(milliseconds)

    @Slot(object)
    def _on_worker_finished(self, result: FitEnded) -> None:
        self._result = result
        if self._thread is not None:
            self._thread.quit()

    @Slot()
    def _on_thread_finished(self) -> None:
        thread, worker = self._thread, self._worker
        self._thread = self._worker = None
        if worker is not None:
            worker.deleteLater()
        if thread is not None:
            thread.deleteLater()
        self.running_changed.emit(False)
        if self._pause.is_set():
            self._pause.clear()
            self.paused_changed.emit(False)
        if self._result is not None:
            self.finished.emit(self._result)
