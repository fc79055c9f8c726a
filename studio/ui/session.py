"""TrainingSession: runs the engine's Trainer in a QThread and relays its events as signals.

House style: a parentless worker QObject moved to a QThread; this GUI-thread session owns both
and the stop/pause events. Worker signals are connected to the session's own signals (queued),
so every slot in the window runs on the GUI thread.

A run of several processes (``train.processes`` > 1) cannot run in a thread: it runs as a
`studio train` child process (a :class:`~studio.ui.process_run.ProcessRun`) whose events arrive
as JSON lines and leave this session as the very same signals, so the window has one path.
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
    LayerStats,
    Outcome,
    StageStarted,
    WarningIssued,
)
from studio.engine.logs import log_unexpected
from studio.ui.process_run import ProcessRun

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
    layer_stats_sampled = Signal(object)  # LayerStats, at most twice a second
    finished = Signal(object)  # FitEnded

    def __init__(self, config: RunConfig | None, run_dir: str, stop: threading.Event,
                 pause: threading.Event, resume: bool = False,
                 rerun_of: str | None = None) -> None:
        super().__init__()  # no parent: moveToThread needs that
        self._config, self._run_dir, self._resume = config, run_dir, resume
        self._stop, self._pause = stop, pause
        self._rerun_of = rerun_of  # the run this one repeats, for its run.json

    @Slot()
    def run(self) -> None:
        from studio.engine.trainer import Trainer  # torch loads in this thread, not the GUI's

        relay = SignalRelay(self)
        try:
            if self._resume:
                trainer = Trainer.resume_run(self._run_dir, callbacks=[relay])
            else:
                assert self._config is not None
                trainer = Trainer(self._config, self._run_dir, callbacks=[relay],
                                  rerun_of=self._rerun_of)
            result = trainer.fit(self._stop, self._pause)
        except StudioError as error:
            result = FitEnded(Outcome.FAILED, str(error), 0, None, None, "val_acc",
                              self._run_dir, 0.0)
        except Exception as error:  # never let a bug take the window down
            result = FitEnded(Outcome.FAILED, log_unexpected(log, "training failed", error),
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

    def on_layer_stats(self, event: LayerStats) -> None:
        self.worker.layer_stats_sampled.emit(event)


RELAYED = ("fit_started", "stage_started", "batch_ended", "epoch_ended", "checkpoint_saved",
           "warning_issued", "cache_reported", "layer_stats_sampled")


class TrainingSession(QObject):
    """Start, pause, resume and stop one training run at a time, from the GUI thread: in a
    thread for one process, as a child process (torchrun) for several."""

    fit_started = Signal(object)
    stage_started = Signal(object)
    batch_ended = Signal(object)
    epoch_ended = Signal(object)
    checkpoint_saved = Signal(object)
    warning_issued = Signal(object)
    cache_reported = Signal(object)
    layer_stats_sampled = Signal(object)  # LayerStats, at most twice a second
    finished = Signal(object)  # FitEnded, after the thread has ended
    running_changed = Signal(bool)
    paused_changed = Signal(bool)

    def __init__(self, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self._stop = threading.Event()
        self._pause = threading.Event()
        self._thread: QThread | None = None
        self._worker: TrainingWorker | None = None
        self._process: ProcessRun | None = None
        self._result: FitEnded | None = None

    @property
    def is_running(self) -> bool:
        return self._thread is not None or self._process is not None

    @property
    def can_pause(self) -> bool:
        """False while several processes train: they can only be stopped (and resumed later)."""
        return self._process is None

    @property
    def process_id(self) -> int | None:
        """The child process of a multi-process run while it runs (torchrun's ranks are below
        it); None for a run in a thread."""
        return self._process.pid if self._process is not None else None

    @property
    def is_paused(self) -> bool:
        return self._pause.is_set()

    @property
    def stop_requested(self) -> bool:
        return self._stop.is_set()

    def start(self, config: RunConfig, run_dir: str | Path, rerun_of: str | Path | None = None
              ) -> None:
        """Train ``config`` into ``run_dir``; ``rerun_of`` names the run it repeats exactly
        (recorded in run.json)."""
        rerun = str(rerun_of) if rerun_of is not None else None
        if config.train.processes > 1:
            self._check_idle()
            self._launch_process(ProcessRun.for_config(config, str(run_dir), self,
                                                       rerun_of=rerun))
        else:
            self._launch(config, str(run_dir), resume=False, rerun_of=rerun)

    def resume_run(self, run_dir: str | Path, processes: int = 1) -> None:
        """Continue a run from its last completed epoch, in this process or with ``processes``
        processes."""
        if processes > 1:
            self._check_idle()
            self._launch_process(ProcessRun.for_resume(str(run_dir), processes, self))
        else:
            self._launch(None, str(run_dir), resume=True)

    def _check_idle(self) -> None:
        if self.is_running:
            raise RuntimeError("a training run is already going")

    def _launch_process(self, run: ProcessRun) -> None:
        self._stop.clear()
        self._pause.clear()
        self._result = None
        for name in RELAYED:
            getattr(run, name).connect(getattr(self, name))
        run.ended.connect(self._on_process_run_ended)
        self._process = run
        self.running_changed.emit(True)  # first: Qt may report a failed start inside start()
        run.start()

    def _launch(self, config: RunConfig | None, run_dir: str, resume: bool,
                rerun_of: str | None = None) -> None:
        self._check_idle()
        self._stop.clear()
        self._pause.clear()
        self._result = None
        thread = QThread()
        thread.setObjectName("studio-training")
        worker = TrainingWorker(config, run_dir, self._stop, self._pause, resume, rerun_of)
        worker.moveToThread(thread)
        for name in RELAYED:
            getattr(worker, name).connect(getattr(self, name))
        worker.finished.connect(self._on_worker_finished)
        thread.started.connect(worker.run)
        thread.finished.connect(self._on_thread_finished)
        self._thread, self._worker = thread, worker
        thread.start()
        self.running_changed.emit(True)

    def stop(self) -> None:
        """Ask the run to stop; it answers within one batch (a paused run wakes to stop).
        Several processes get SIGTERM and every rank finishes its batch (up to ~30 s)."""
        self._stop.set()
        if self._process is not None:
            self._process.terminate()
        if self._pause.is_set():
            self._pause.clear()
            self.paused_changed.emit(False)

    def kill(self) -> bool:
        """End a multi-process run at once (every process under it too), for closing the
        window when it did not stop in time; True when there was one. A thread cannot be
        killed: it is left to stop."""
        if self._process is None:
            return False
        self._stop.set()
        self._process.kill()
        return True

    def pause(self) -> None:
        """Pause after the current batch; not possible while several processes train."""
        if self._thread is not None and not self._pause.is_set():
            self._pause.set()
            self.paused_changed.emit(True)

    def resume(self) -> None:
        if self._pause.is_set():
            self._pause.clear()
            self.paused_changed.emit(False)

    def wait(self, milliseconds: int = 30_000) -> bool:
        """Block until the thread or process has ended (for closing the window); True when it
        has."""
        if self._process is not None:
            return self._process.wait(milliseconds)
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

    @Slot(object)
    def _on_process_run_ended(self, result: FitEnded) -> None:
        run = self._process
        self._process = None
        if run is not None:
            run.deleteLater()
        self.running_changed.emit(False)
        self.finished.emit(result)
