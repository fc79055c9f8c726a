"""ProcessRun: one `studio train` child process (torchrun under it) whose JSON event lines on
stdout become the same signals the in-process Trainer's events become.

A run of several processes cannot live in a thread of the window: torchrun starts one process
per GPU (or CPU processes), and rank 0 prints every event as a JSON line. This object starts
that command with a QProcess, buffers partial lines, turns each line back into its event and
emits it, and when the process has ended emits ``ended`` with the run's FitEnded, made up from
the exit code and the last ``error:`` line of stderr when the process never sent one.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from PySide6.QtCore import QObject, QProcess, QProcessEnvironment, Signal, Slot

from studio.engine.config import RunConfig
from studio.engine.events import EpochEnded, FitEnded, Outcome, event_from_line

log = logging.getLogger(__name__)

EXIT_CANCELLED = 130  # `studio train` stopped by a signal: every rank finished its batch
STDERR_KEPT = 50  # lines of stderr logged as a warning when a run fails without a sentence

# hook of a JSON line -> the signal it becomes (on_fit_end is the result, kept for `ended`)
HOOK_SIGNALS = {
    "on_fit_start": "fit_started", "on_stage_start": "stage_started",
    "on_batch_end": "batch_ended", "on_epoch_end": "epoch_ended",
    "on_checkpoint": "checkpoint_saved", "on_warning": "warning_issued",
    "on_cache": "cache_reported", "on_layer_stats": "layer_stats_sampled",
}


class ProcessRun(QObject):
    """Runs ``python -m studio ARGUMENTS`` and relays its events; lives on the GUI thread."""

    fit_started = Signal(object)
    stage_started = Signal(object)
    batch_ended = Signal(object)
    epoch_ended = Signal(object)
    checkpoint_saved = Signal(object)
    warning_issued = Signal(object)
    cache_reported = Signal(object)
    layer_stats_sampled = Signal(object)
    ended = Signal(object)  # FitEnded, once the process has exited

    def __init__(self, arguments: list[str], run_dir: str, monitor: str = "val_acc",
                 config_file: str | None = None, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self._arguments, self._run_dir, self._monitor = arguments, run_dir, monitor
        self._config_file = config_file  # a temporary file, deleted when the process ends
        self._stdout = bytearray()
        self._stderr = bytearray()
        self._stderr_tail: collections.deque[str] = collections.deque(maxlen=STDERR_KEPT)
        self._last_error = ""
        self._result: FitEnded | None = None
        self._epochs_completed = 0
        self._terminating = self._killed = self._done = False
        self._started_at = 0.0
        process = QProcess(self)
        process.setProgram(sys.executable)
        process.setArguments(arguments)
        process.setProcessEnvironment(_child_environment())
        process.readyReadStandardOutput.connect(self._on_process_ready_read_standard_output)
        process.readyReadStandardError.connect(self._on_process_ready_read_standard_error)
        process.started.connect(self._on_process_started)
        process.finished.connect(self._on_process_finished)
        process.errorOccurred.connect(self._on_process_error_occurred)
        self._process = process

    @classmethod
    def for_config(cls, config: RunConfig, run_dir: str, parent: QObject | None = None,
                   rerun_of: str | None = None) -> ProcessRun:
        """A new run of ``config`` into ``run_dir`` (its train.processes launches torchrun).
        With ``rerun_of`` the run repeats that run exactly: ``studio train --rerun`` takes its
        saved config (``config`` is that one) and records where it came from."""
        if rerun_of is not None:
            arguments = ["-m", "studio", "train", "--rerun", rerun_of, "--out", run_dir,
                         "--json-events"]
            return cls(arguments, run_dir, config.train.monitor, parent=parent)
        handle, path = tempfile.mkstemp(prefix="studio-run-", suffix=".toml")
        os.close(handle)
        try:
            config.save(path)
        except BaseException:
            Path(path).unlink(missing_ok=True)
            raise
        arguments = ["-m", "studio", "train", "--config", path, "--out", run_dir,
                     "--json-events"]
        return cls(arguments, run_dir, config.train.monitor, config_file=path, parent=parent)

    @classmethod
    def for_resume(cls, run_dir: str, processes: int,
                   parent: QObject | None = None) -> ProcessRun:
        """Continue the run in ``run_dir`` from its last completed epoch with ``processes``."""
        arguments = ["-m", "studio", "train", "--resume", run_dir, "--nproc-per-node",
                     str(processes), "--json-events"]
        return cls(arguments, run_dir, _saved_monitor(run_dir), parent=parent)

    # -- control --------------------------------------------------------------------------

    @property
    def pid(self) -> int | None:
        """The launcher's process id while it runs (torchrun's ranks are its children)."""
        pid = self._process.processId()
        return pid or None

    @property
    def running(self) -> bool:
        return not self._done

    def start(self) -> None:
        self._started_at = time.monotonic()
        log.debug("starting %s %s", sys.executable, " ".join(self._arguments))
        self._process.start()

    def terminate(self) -> None:
        """Ask every rank to stop after its batch (SIGTERM to the launcher, which hands it on);
        rank 0 then reports the run cancelled. Asked once: a second SIGTERM only confuses
        torchrun's shutdown."""
        if self._terminating or self._done:
            return
        self._terminating = True
        if self._process.state() == QProcess.ProcessState.Running:
            self._process.terminate()
        # still starting: _on_process_started sends it

    def kill(self) -> None:
        """End the launcher and every process under it now (SIGKILL). torchrun starts each rank
        in a session of its own, so killing the launcher alone would leave them training."""
        if self._done:
            return
        self._killed = True
        pid = self.pid
        if pid is not None:
            for child in process_tree(pid):
                with contextlib.suppress(OSError):
                    os.kill(child, signal.SIGKILL)
        self._process.kill()

    def wait(self, milliseconds: int) -> bool:
        """Block until the process has ended and ``ended`` was emitted; True when it has."""
        if self._done:
            return True
        if self._process.state() != QProcess.ProcessState.NotRunning:
            self._process.waitForFinished(milliseconds)
        return self._done

    # -- process signals ------------------------------------------------------------------

    @Slot()
    def _on_process_started(self) -> None:
        if self._terminating:
            self._process.terminate()

    @Slot()
    def _on_process_ready_read_standard_output(self) -> None:
        self._stdout += self._process.readAllStandardOutput().data()
        for line in _complete_lines(self._stdout):
            self._on_stdout_line(line)

    @Slot()
    def _on_process_ready_read_standard_error(self) -> None:
        self._stderr += self._process.readAllStandardError().data()
        for line in _complete_lines(self._stderr):
            self._on_stderr_line(line)

    def _on_stdout_line(self, line: str) -> None:
        parsed = event_from_line(line)
        if parsed is None:
            if line.strip():
                log.debug("training process: %s", line)
            return
        hook, event = parsed
        if hook == "on_fit_end":
            self._result = event
            return
        if isinstance(event, EpochEnded):
            self._epochs_completed = max(self._epochs_completed, event.epoch)
        getattr(self, HOOK_SIGNALS[hook]).emit(event)

    def _on_stderr_line(self, line: str) -> None:
        log.debug("training process: %s", line)
        self._stderr_tail.append(line)
        if line.startswith("error: "):
            self._last_error = line.removeprefix("error: ").strip()

    @Slot(int, QProcess.ExitStatus)
    def _on_process_finished(self, exit_code: int, status: QProcess.ExitStatus) -> None:
        self._on_process_ready_read_standard_output()
        self._on_process_ready_read_standard_error()
        for buffer, handle in ((self._stdout, self._on_stdout_line),
                               (self._stderr, self._on_stderr_line)):
            if buffer:  # a last line without its newline
                handle(bytes(buffer).decode("utf-8", errors="replace"))
                buffer.clear()
        crashed = status == QProcess.ExitStatus.CrashExit
        log.debug("training process ended: exit code %s%s", exit_code,
                  " (crashed or killed)" if crashed else "")
        self._end(self._result or self._made_up_result(None if crashed else exit_code))

    @Slot(QProcess.ProcessError)
    def _on_process_error_occurred(self, error: QProcess.ProcessError) -> None:
        if error != QProcess.ProcessError.FailedToStart:
            log.debug("training process: %s", self._process.errorString())
            return  # finished follows
        reason = self._process.errorString()
        self._end(self._ended(Outcome.FAILED, f"the training process could not be started "
                                              f"({sys.executable}: {reason})"))

    # -- the result -----------------------------------------------------------------------

    def _made_up_result(self, exit_code: int | None) -> FitEnded:
        """The FitEnded of a process that ended without sending one: it refused to start,
        crashed, was killed, or was stopped before rank 0 could report."""
        if self._terminating or self._killed or exit_code == EXIT_CANCELLED:
            return self._ended(Outcome.CANCELLED, "the training processes were stopped"
                               + (" (ended at once: they did not stop in time)"
                                  if self._killed else ""))
        if self._last_error:
            return self._ended(Outcome.FAILED, self._last_error)
        how = (f"ended with exit code {exit_code}" if exit_code is not None
               else "were killed")
        if self._stderr_tail:
            log.warning("the training processes %s; their last messages:\n%s", how,
                        "\n".join(self._stderr_tail))
        return self._ended(Outcome.FAILED, f"the training processes {how}; the details are "
                                           f"in the log")

    def _ended(self, outcome: Outcome, message: str) -> FitEnded:
        seconds = time.monotonic() - self._started_at if self._started_at else 0.0
        return FitEnded(outcome, message, self._epochs_completed, None, None, self._monitor,
                        self._run_dir, seconds)

    def _end(self, result: FitEnded) -> None:
        if self._done:
            return
        self._done = True
        if self._config_file:
            with contextlib.suppress(OSError):
                Path(self._config_file).unlink(missing_ok=True)
        self.ended.emit(result)


def _complete_lines(buffer: bytearray) -> list[str]:
    """Take the complete lines out of ``buffer``, leaving a partial last line in it."""
    end = buffer.rfind(b"\n")
    if end < 0:
        return []
    chunk = bytes(buffer[:end])
    del buffer[:end + 1]
    return [line.rstrip("\r") for line in chunk.decode("utf-8", errors="replace").split("\n")]


def _child_environment() -> QProcessEnvironment:
    """This process's environment, with ``studio`` importable (also from a source checkout)."""
    environment = QProcessEnvironment.systemEnvironment()
    source = str(Path(__file__).resolve().parents[2])
    paths = [p for p in environment.value("PYTHONPATH", "").split(os.pathsep) if p]
    if source not in paths:
        environment.insert("PYTHONPATH", os.pathsep.join([source, *paths]))
    environment.insert("PYTHONUNBUFFERED", "1")
    return environment


def _saved_monitor(run_dir: str) -> str:
    from studio.engine.errors import StudioError
    from studio.engine.runs import RunPaths

    try:
        return RunConfig.load(RunPaths(run_dir).config).train.monitor
    except (OSError, StudioError):
        return "val_acc"  # the CLI says what is wrong with the folder


def process_tree(pid: int) -> list[int]:
    """Every process below ``pid`` (children, theirs, …), read from /proc or ``ps``."""
    parents: dict[int, list[int]] = {}
    for child, parent in _parent_ids():
        parents.setdefault(parent, []).append(child)
    found, todo = [], [pid]
    while todo:
        for child in parents.get(todo.pop(), []):
            if child not in found:
                found.append(child)
                todo.append(child)
    return found


def _parent_ids() -> list[tuple[int, int]]:
    proc = Path("/proc")
    if (proc / "self" / "stat").exists():
        pairs = []
        for entry in proc.iterdir():
            if not entry.name.isdigit():
                continue
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue  # it ended meanwhile
            fields = stat[stat.rfind(")") + 2:].split()  # after "pid (name) "
            pairs.append((int(entry.name), int(fields[1])))
        return pairs
    try:
        listing = subprocess.run(["ps", "-A", "-o", "pid=", "-o", "ppid="], check=True,
                                 capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    return [(int(a), int(b)) for a, b in (line.split() for line in listing.splitlines())
            if a.isdigit() and b.isdigit()]
