"""Short background jobs (scan a folder, describe a model) off the GUI thread.

A job is a plain function; its result or its StudioError message comes back as a signal on the
GUI thread. Long training runs use TrainingSession instead (a QThread with a stop event).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from PySide6.QtCore import QObject, QRunnable, QThreadPool, Signal

from studio.engine.errors import StudioError, os_error_sentence
from studio.engine.logs import log_unexpected

log = logging.getLogger(__name__)


class _Relay(QObject):
    """Carries one job's outcome from a pool thread to the GUI thread (queued signals)."""

    succeeded = Signal(int, object)
    failed = Signal(int, str)
    progressed = Signal(int, int, int)


class _Job(QRunnable):
    def __init__(self, function: Callable[..., Any], relay: _Relay, generation: int,
                 with_progress: bool) -> None:
        super().__init__()
        self.function, self.relay, self.generation = function, relay, generation
        self.with_progress = with_progress
        self.setAutoDelete(True)

    def _progress(self, done: int, total: int) -> None:
        self.relay.progressed.emit(self.generation, done, total)

    def run(self) -> None:
        try:
            self._run()
        except RuntimeError:  # the relay was deleted (window closed): nobody wants the result
            log.debug("background job finished after its task was deleted")

    def _run(self) -> None:
        try:
            result = self.function(self._progress) if self.with_progress else self.function()
        except StudioError as error:
            self.relay.failed.emit(self.generation, str(error))
        except OSError as error:  # a folder or file the user chose
            log.info("background job stopped by an OS error", exc_info=True)
            self.relay.failed.emit(self.generation, os_error_sentence(error, "reading or writing"))
        except Exception as error:  # a bug: say so in one sentence, keep the traceback in the log
            self.relay.failed.emit(self.generation, log_unexpected(log, "the job failed", error))
        else:
            self.relay.succeeded.emit(self.generation, result)


class BackgroundTask(QObject):
    """Runs jobs in the global thread pool; a newer job supersedes an older one, whose result
    is dropped. Signals arrive on the GUI thread."""

    succeeded = Signal(object)
    failed = Signal(str)
    progressed = Signal(int, int)
    running_changed = Signal(bool)

    def __init__(self, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self._generation = 0
        self._running = False
        self._relay = _Relay(self)  # a GUI-thread object: bound-method slots run queued here
        self._relay.succeeded.connect(self._on_relay_succeeded)
        self._relay.failed.connect(self._on_relay_failed)
        self._relay.progressed.connect(self._on_relay_progressed)

    @property
    def running(self) -> bool:
        return self._running

    def start(self, function: Callable[..., Any], with_progress: bool = False) -> None:
        """Run ``function()`` (or ``function(progress)`` with ``with_progress``) in the pool."""
        self._generation += 1
        self._set_running(True)
        QThreadPool.globalInstance().start(
            _Job(function, self._relay, self._generation, with_progress))

    def _on_relay_progressed(self, generation: int, done: int, total: int) -> None:
        if generation == self._generation:
            self.progressed.emit(done, total)

    def _on_relay_succeeded(self, generation: int, result: Any) -> None:
        if generation == self._generation:
            self._set_running(False)
            self.succeeded.emit(result)

    def _on_relay_failed(self, generation: int, message: str) -> None:
        if generation == self._generation:
            self._set_running(False)
            self.failed.emit(message)

    def _set_running(self, running: bool) -> None:
        if running != self._running:
            self._running = running
            self.running_changed.emit(running)
