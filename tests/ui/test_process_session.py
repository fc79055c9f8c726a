"""Several processes: a run launched as a child process (torchrun, CPU processes with gloo) speaks
through the same TrainingSession signals as a run in a thread; it stops, refuses and dies cleanly.

Each real launch costs ~10-15 s on 2 cores (torch imports in three processes), so there are
four; the line handling and the kill path use small stand-in child processes instead.
"""

from __future__ import annotations

import os
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from PySide6.QtCore import QSettings, Qt

from studio.engine.config import DataConfig, FreezeSpec, ModelConfig, RunConfig, TrainConfig
from studio.engine.events import EpochEnded, FitEnded, FitStarted, Outcome, event_to_line
from studio.ui import devices
from studio.ui.devices import DeviceInfo
from studio.ui.main_window import MainWindow
from studio.ui.process_run import ProcessRun, process_tree
from studio.ui.project import ProjectModel
from studio.ui.session import TrainingSession
from studio.ui.widgets.curves_panel import CurvesPanel
from studio.ui.widgets.training_panel import TrainingPanel

RUN_TIMEOUT_MS = 120_000


def alive(pid: int) -> bool:
    """True while ``pid`` runs (a zombie nobody reaped yet counts as ended)."""
    stat = Path(f"/proc/{pid}/stat")
    if Path("/proc/self/stat").exists():
        try:
            text = stat.read_text()
        except OSError:
            return False
        return text[text.rfind(")") + 2:][:1] not in ("Z", "X")
    try:
        os.kill(pid, 0)
    except OSError:
        return False
    return True


def tiny_config(data: Path, epochs: int = 2, device: str = "cpu") -> RunConfig:
    """Two CPU processes on a head-only resnet18 at 16 px: the frozen part is cached, so an
    epoch takes a fraction of a second and the launch dominates."""
    return RunConfig(
        data=DataConfig(root=str(data), image_size=16, augment="none"),
        model=ModelConfig(backbone="resnet18", weights="none"),
        freeze=FreezeSpec(preset="head_only"),
        train=TrainConfig(epochs=epochs, batch_size=4, workers=0, device=device,
                          precision="fp32", processes=2))


@pytest.fixture(scope="module")
def data(make_tiny_dataset: Callable[..., Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_dataset(tmp_path_factory.mktemp("processes") / "data", per_class=8, size=16)


@pytest.fixture(autouse=True)
def known_device(monkeypatch: pytest.MonkeyPatch) -> None:
    """The Train page's device probe: a CPU machine (tests that care say otherwise)."""
    monkeypatch.setattr(devices, "_device_info",
                        DeviceInfo("CPU", "fp32", cuda=False, mps=False))


def curve_data(panel: CurvesPanel, label: str) -> tuple[np.ndarray, np.ndarray]:
    drawn = next(d for d in panel._drawn if d.label == label)
    x, y = drawn.curve.getData()
    return (np.array([]), np.array([])) if x is None else (x, y)


def temporary_configs() -> set[Path]:
    return set(Path(tempfile.gettempdir()).glob("studio-run-*.toml"))


# -- real runs --------------------------------------------------------------------------------


def test_two_cpu_processes_train_and_plot_like_one(qtbot, data: Path, tmp_path: Path) -> None:
    session = TrainingSession()
    curves = CurvesPanel()
    qtbot.addWidget(curves)
    curves.show()
    session.fit_started.connect(curves.on_fit_started)  # as MainWindow connects them
    session.stage_started.connect(curves.on_stage_started)
    session.batch_ended.connect(curves.on_batch_ended)
    session.epoch_ended.connect(curves.on_epoch_ended)
    session.finished.connect(curves.on_fit_ended)
    started: list[FitStarted] = []
    epochs: list[EpochEnded] = []
    running: list[bool] = []
    session.fit_started.connect(started.append)
    session.epoch_ended.connect(epochs.append)
    session.running_changed.connect(running.append)
    before = temporary_configs()

    with qtbot.waitSignal(session.finished, timeout=RUN_TIMEOUT_MS) as finished:
        session.start(tiny_config(data), tmp_path / "run")
        assert session.is_running and not session.can_pause

    result: FitEnded = finished.args[0]
    assert result.outcome is Outcome.COMPLETED, result.message
    assert result.epochs_completed == 2
    assert not session.is_running and running == [True, False]
    assert [s.processes for s in started] == [2]
    assert [e.epoch for e in epochs] == [1, 2]
    assert all(e.val_images == started[0].val_images > 0 for e in epochs)  # every image once
    assert (tmp_path / "run" / "checkpoints" / "best.pt").is_file()
    assert temporary_configs() <= before  # the config handed to the child is gone
    qtbot.waitUntil(lambda: len(curve_data(curves, "val accuracy")[0]) == 2, timeout=5_000)
    assert list(curve_data(curves, "val accuracy")[0]) == [1.0, 2.0]
    assert len(curve_data(curves, "loss (batch)")[0]) > 0


@pytest.fixture
def window(qtbot, tmp_path: Path) -> Iterator[MainWindow]:
    settings = QSettings(str(tmp_path / "settings.ini"), QSettings.Format.IniFormat)
    settings.setValue("paths/runs_dir", str(tmp_path / "runs"))
    window = MainWindow(settings=settings)
    qtbot.addWidget(window)
    window.show()
    yield window
    window.stop_and_wait()


def test_stop_ends_every_process_and_keeps_the_last_epoch(
        window: MainWindow, qtbot, data: Path) -> None:
    project, panel = window.project, window.training_panel
    project.update("model", backbone="resnet18", weights="none")
    project.update("data", image_size=16, augment="none")
    project.update("train", epochs=300, batch_size=4, workers=0, device="cpu",
                   precision="fp32", processes=2)
    window.dataset_panel.load_folder(str(data))
    qtbot.waitUntil(lambda: project.scan is not None and project.description is not None
                    and project.description.num_classes == 3, timeout=60_000)
    project.set_freeze(FreezeSpec(preset="head_only"))

    with qtbot.waitSignal(window.session.epoch_ended, timeout=RUN_TIMEOUT_MS):
        qtbot.mouseClick(panel.train_button, Qt.MouseButton.LeftButton)
        assert not panel.pause_button.isEnabled()  # several processes cannot pause
        assert "cannot pause" in panel.pause_button.toolTip()
        assert panel.stop_button.isEnabled()
    launcher = window.session.process_id
    assert launcher is not None
    ranks = process_tree(launcher)
    assert len(ranks) >= 2  # torchrun's two training processes
    window.session.pause()  # does nothing here
    assert not window.session.is_paused

    with qtbot.waitSignal(window.session.finished, timeout=60_000) as finished:
        qtbot.mouseClick(panel.stop_button, Qt.MouseButton.LeftButton)

    result: FitEnded = finished.args[0]
    assert result.outcome is Outcome.CANCELLED, result.message
    assert result.epochs_completed >= 1 and result.best_epoch is not None  # rank 0's own word
    assert (Path(result.run_dir) / "checkpoints" / "last.pt").is_file()
    assert not window.session.is_running
    assert not [pid for pid in [launcher, *ranks] if alive(pid)]
    assert panel.result_label.text().startswith("Stopped by you after")
    assert panel.train_button.isEnabled() and not panel.pause_button.isEnabled()


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_a_refused_start_ends_the_run_with_the_cli_sentence(qtbot, data: Path,
                                                            tmp_path: Path) -> None:
    session = TrainingSession()
    before = temporary_configs()
    with qtbot.waitSignal(session.finished, timeout=RUN_TIMEOUT_MS) as finished:
        session.start(tiny_config(data, device="cuda"), tmp_path / "run")

    result: FitEnded = finished.args[0]
    assert result.outcome is Outcome.FAILED
    assert result.message.startswith("device 'cuda' was asked for"), result.message
    assert "\n" not in result.message and not result.message.startswith("error")
    assert result.run_dir == str(tmp_path / "run") and result.monitor == "val_acc"
    assert not session.is_running
    assert temporary_configs() <= before


def test_a_child_that_cannot_start_ends_the_run_with_a_sentence(
        qtbot, data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "executable", str(tmp_path / "no-python-here"))
    session = TrainingSession()
    running: list[bool] = []
    session.running_changed.connect(running.append)
    before = temporary_configs()
    with qtbot.waitSignal(session.finished, timeout=10_000) as finished:
        session.start(tiny_config(data), tmp_path / "run")
    result: FitEnded = finished.args[0]
    assert result.outcome is Outcome.FAILED
    assert result.message.startswith("the training process could not be started")
    assert running == [True, False] and not session.is_running
    assert temporary_configs() <= before


# -- stand-in child processes -----------------------------------------------------------------

REPLAY = """
import sys, time
lines = open(sys.argv[1], encoding="utf-8").read().split("\\n")
for line in lines[:-1]:
    half = len(line) // 2
    sys.stdout.write(line[:half]); sys.stdout.flush()  # a line in two pieces
    sys.stdout.write(line[half:] + "\\n"); sys.stdout.flush()
sys.stdout.write(lines[-1]); sys.stdout.flush()  # the last one without its newline
print(sys.argv[2], file=sys.stderr)
sys.exit(int(sys.argv[3]))
"""


def replay(qtbot, tmp_path: Path, lines: list[str], stderr: str = "",
           exit_code: int = 0) -> tuple[FitEnded, list[EpochEnded]]:
    script = tmp_path / "events.txt"
    script.write_text("\n".join(lines), encoding="utf-8")
    run = ProcessRun(["-c", REPLAY, str(script), stderr, str(exit_code)], str(tmp_path / "run"),
                     "val_loss")
    epochs: list[EpochEnded] = []
    run.epoch_ended.connect(epochs.append)
    with qtbot.waitSignal(run.ended, timeout=30_000) as ended:
        run.start()
    assert run.wait(0) and not run.running
    return ended.args[0], epochs


def epoch_line(epoch: int) -> str:
    return event_to_line("on_epoch_end", EpochEnded(epoch, 0.5, 0.8, 0.6, float("nan"),
                                                    {"head": 1e-3}, 1.0, 100.0, False, 6))


def test_event_lines_in_pieces_become_events_and_the_result(qtbot, tmp_path: Path) -> None:
    end = FitEnded(Outcome.COMPLETED, "completed 2 epochs", 2, 1, 0.6, "val_loss", "r", 3.0)
    result, epochs = replay(qtbot, tmp_path, [epoch_line(1), "not an event", epoch_line(2),
                                              event_to_line("on_fit_end", end)])
    assert [e.epoch for e in epochs] == [1, 2]
    assert epochs[0].val_images == 6 and np.isnan(epochs[0].val_acc)
    assert result == end


def test_a_crash_without_a_sentence_says_the_exit_code(qtbot, tmp_path: Path) -> None:
    result, _ = replay(qtbot, tmp_path, [epoch_line(1), ""], "Traceback: boom", exit_code=3)
    assert result.outcome is Outcome.FAILED
    assert result.message == ("the training processes ended with exit code 3; the details are "
                              "in the log")
    assert result.epochs_completed == 1 and result.monitor == "val_loss"


def test_the_last_error_line_is_the_message(qtbot, tmp_path: Path) -> None:
    result, _ = replay(qtbot, tmp_path, [""], "error: rank 1 exited with code 1; resume it",
                       exit_code=1)
    assert (result.outcome, result.message) == (Outcome.FAILED, "rank 1 exited with code 1; "
                                                                "resume it")


STUBBORN = """
import signal, subprocess, sys, time
signal.signal(signal.SIGTERM, signal.SIG_IGN)
code = "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(600)"
child = subprocess.Popen([sys.executable, "-c", code], start_new_session=True)  # as torchrun
with open(sys.argv[1] + ".tmp", "w") as out:
    out.write(str(child.pid))
import os; os.replace(sys.argv[1] + ".tmp", sys.argv[1])
time.sleep(600)
"""


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")
def test_kill_ends_processes_that_ignore_a_stop(qtbot, tmp_path: Path) -> None:
    pid_file = tmp_path / "child.pid"
    run = ProcessRun(["-c", STUBBORN, str(pid_file)], str(tmp_path / "run"))
    run.start()
    qtbot.waitUntil(pid_file.exists, timeout=30_000)
    child = int(pid_file.read_text())
    run.terminate()
    assert not run.wait(200)  # SIGTERM is ignored: it keeps running
    with qtbot.waitSignal(run.ended, timeout=10_000) as ended:
        run.kill()
    assert ended.args[0].outcome is Outcome.CANCELLED
    qtbot.waitUntil(lambda: not alive(child), timeout=10_000)


# -- the Train page ---------------------------------------------------------------------------


def test_the_processes_field_edits_the_config_and_says_what_it_means(qtbot, monkeypatch) -> None:
    project = ProjectModel(RunConfig(train=TrainConfig(device="cpu")))
    panel = TrainingPanel(project, with_shortcuts=False)
    qtbot.addWidget(panel)
    processes = panel.widgets["train.processes"]
    assert processes.value() == 1 and panel.processes_hint.text() == "one process"
    assert panel.widgets["train.processes"].maximum() == max(1, os.cpu_count() or 1)
    panel.widgets["train.processes"].setValue(2)
    assert project.config.train.processes == min(2, panel.widgets["train.processes"].maximum())
    if project.config.train.processes == 2:
        assert panel.processes_hint.text() == "2 CPU processes (gloo), a batch each"

    monkeypatch.setattr(devices, "_device_info",
                        DeviceInfo("NVIDIA H100", "bf16", cuda=True, mps=False, gpus=2))
    gpu_project = ProjectModel(RunConfig(train=TrainConfig(device="auto", processes=2)))
    gpu_panel = TrainingPanel(gpu_project, with_shortcuts=False)
    qtbot.addWidget(gpu_panel)
    assert gpu_panel.widgets["train.processes"].maximum() == 2  # one process per GPU
    assert gpu_panel.processes_hint.text() == "2 GPUs (NCCL), a batch each"
    gpu_panel.set_running(True, pausable=False)
    assert not gpu_panel.pause_button.isEnabled() and gpu_panel.stop_button.isEnabled()
    gpu_panel.set_running(False)
    gpu_panel.set_running(True)
    assert gpu_panel.pause_button.isEnabled()
