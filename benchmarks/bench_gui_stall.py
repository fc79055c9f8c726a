"""How responsive is the window while a real training run goes? (a script, not a test)

Builds a window with the TrainingPanel and the CurvesPanel wired to a real TrainingSession,
trains a tiny resnet18 (no pretrained weights, 32 px) on the bundled sample dataset, and meanwhile
runs a 5 ms heartbeat QTimer on the GUI thread. The gaps between heartbeats are how long the
event loop could not answer (a paint, a click, a resize would have waited as long). Prints the
p50 / p99 / worst gap for the idle window, the run's setup (dataset scan, model build) and the
training itself, and the training speed with and without the window (headless fits in fresh
processes before and after). ``--synthetic SECONDS`` feeds the panels fake events and trains
nothing: the window's own cost. ``--top N`` lists the longest gaps and the event before each.

    QT_QPA_PLATFORM=offscreen python benchmarks/bench_gui_stall.py [--epochs 5] [--threads N]
        [--workers 0] [--switch-interval-ms 5] [--no-baseline] [--no-panels]
        [--synthetic SECONDS] [--top N]

The gaps include the benchmark's own 200 wake-ups a second; throughput on a shared machine is
noisy, so compare it only between runs made back to back.

Aims (issue 4): p99 under 30 ms, worst under 100 ms on the development machine.
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from PySide6.QtCore import QElapsedTimer, QEventLoop, QObject, Qt, QTimer, Signal  # noqa: E402
from PySide6.QtWidgets import QApplication, QHBoxLayout, QWidget  # noqa: E402

from studio.engine.config import DataConfig, ModelConfig, RunConfig, TrainConfig  # noqa: E402
from studio.engine.events import (  # noqa: E402
    BatchEnded,
    EpochEnded,
    FitEnded,
    FitStarted,
    Outcome,
)
from studio.resources import sample_dataset  # noqa: E402
from studio.ui.project import ProjectModel  # noqa: E402
from studio.ui.session import TrainingSession  # noqa: E402
from studio.ui.widgets.curves_panel import CurvesPanel  # noqa: E402
from studio.ui.widgets.training_panel import TrainingPanel  # noqa: E402

HEARTBEAT_MS = 5
AIM_P99_MS, AIM_WORST_MS = 30.0, 100.0


class Heartbeat:
    """A precise GUI-thread timer that records the gap before every tick, per phase."""

    def __init__(self, interval_ms: int = HEARTBEAT_MS) -> None:
        self.phase = "idle"
        self.gaps: dict[str, list[float]] = {}
        self.log: list[tuple[float, float, str]] = []  # (when the tick came, gap ms, phase)
        self._clock = QElapsedTimer()
        self._timer = QTimer()
        self._timer.setTimerType(Qt.TimerType.PreciseTimer)
        self._timer.setInterval(interval_ms)
        self._timer.timeout.connect(self._on_timer_timeout)

    def start(self) -> None:
        self._clock.start()
        self._timer.start()

    def stop(self) -> None:
        self._timer.stop()

    def enter(self, phase: str) -> None:
        self.phase = phase
        self._clock.restart()  # a gap belongs to the phase it ends in; start the phase fresh

    def _on_timer_timeout(self) -> None:
        gap = self._clock.nsecsElapsed() / 1e6
        self._clock.restart()
        self.gaps.setdefault(self.phase, []).append(gap)
        self.log.append((time.monotonic(), gap, self.phase))


class SyntheticSession(QObject):
    """Stands in for TrainingSession with no training at all: it emits what the trainer would
    (20 batch events a second, six LR groups) from a GUI timer, so the gaps it leaves are the
    window's own cost of taking in events and painting them."""

    fit_started = Signal(object)
    stage_started = Signal(object)
    batch_ended = Signal(object)
    epoch_ended = Signal(object)
    checkpoint_saved = Signal(object)
    finished = Signal(object)
    running_changed = Signal(bool)
    paused_changed = Signal(bool)

    STEPS = 100
    GROUPS = ("stem", "layer1", "layer2", "layer3", "layer4", "fc")

    def __init__(self, seconds: float) -> None:
        super().__init__()
        self._total = max(1, round(seconds * 20))
        self._count = 0
        self._timer = QTimer(self)
        self._timer.setInterval(50)
        self._timer.timeout.connect(self._on_timer_timeout)

    def start(self, config: RunConfig, run_dir: Path) -> None:
        epochs = -(-self._total // self.STEPS)
        self._epochs = epochs
        self.running_changed.emit(True)
        self.fit_started.emit(FitStarted(str(run_dir), epochs, 1, self.STEPS, 3200, 800,
                                         tuple("abcde"), "cpu", "fp32", False, 10, 10))
        self._timer.start()

    def stop(self) -> None:
        self._total = self._count

    def wait(self, milliseconds: int = 0) -> bool:
        return True

    def _on_timer_timeout(self) -> None:
        self._count += 1
        epoch, step = divmod(self._count - 1, self.STEPS)
        epoch, step = epoch + 1, step + 1
        lr = {name: 1e-3 * 0.5 ** index for index, name in enumerate(reversed(self.GROUPS))}
        loss = 2.0 / (1 + 0.01 * self._count) + 0.1 * math.sin(self._count)
        self.batch_ended.emit(BatchEnded(epoch, step, self.STEPS, self._count, loss, 0.7, lr,
                                         600.0, 60.0))
        if step == self.STEPS or self._count >= self._total:
            self.epoch_ended.emit(EpochEnded(epoch, loss, 0.7, loss, 0.7, lr, 5.0, 600.0,
                                             True))
        if self._count >= self._total:
            self._timer.stop()
            self.running_changed.emit(False)
            self.finished.emit(FitEnded(Outcome.COMPLETED, "completed", epoch, epoch, 0.7,
                                        "val_acc", "", self._count / 20))


def pyside_steals_references() -> bool:
    """PySide6 6.12.0 on Python 3.11 loses a reference to None on every void Qt call and to True
    on every signal emission (3.12+ made them immortal, so it goes unnoticed there); the process
    aborts with "none_dealloc" after a few thousand calls. 6.11.3 does not."""
    from PySide6.QtCore import QObject

    probe = QObject()
    before = sys.getrefcount(None)
    for _ in range(20):
        probe.setObjectName("probe")
    return sys.getrefcount(None) < before


def make_immortal() -> None:
    """What Python 3.12 does for None/True/False: a reference count no leak can exhaust."""
    import ctypes

    for constant in (None, True, False):
        ctypes.c_ssize_t.from_address(id(constant)).value += 1 << 40


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


def make_config(args: argparse.Namespace) -> RunConfig:
    return RunConfig(data=DataConfig(root=str(sample_dataset()), image_size=args.image_size),
                     model=ModelConfig(backbone="resnet18", weights="none"),
                     train=TrainConfig(epochs=args.epochs, batch_size=args.batch_size,
                                       workers=args.workers, device="cpu", precision="fp32"))


def headless_images_per_second(config: RunConfig) -> float:
    """The same fit without any window: what training does on its own."""
    from studio.engine.events import Callback
    from studio.engine.trainer import Trainer

    speeds: list[float] = []

    class Speed(Callback):
        def on_epoch_end(self, event: EpochEnded) -> None:
            speeds.append(event.images_per_second)

    with tempfile.TemporaryDirectory(prefix="bench-headless-") as folder:
        Trainer(config, Path(folder) / "run", [Speed()]).fit()
    return statistics.fmean(speeds[1:] or speeds)  # the first epoch warms caches up


def headless_in_a_fresh_process(argv: list[str]) -> float:
    """Run the headless fit in its own interpreter, as ``studio train`` would. In this process
    it would leave an OpenMP thread team on the main thread, and a later fit on the training
    thread then runs 15–25 % slower (measured): the comparison would blame the window."""
    result = subprocess.run([sys.executable, __file__, "--headless", *argv],
                            capture_output=True, text=True, check=True)
    return float(result.stdout.strip().splitlines()[-1])


def run_event_loop(seconds: float, until: Signal | None = None) -> None:
    """Run a real, blocking event loop, as the app's exec() does. (A Python loop around
    processEvents() would spin: it takes a core and the GIL, and halved training speed.)"""
    loop = QEventLoop()
    QTimer.singleShot(round(seconds * 1000), loop.quit)
    if until is not None:
        until.connect(loop.quit)
    loop.exec()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--workers", type=int, default=0, help="DataLoader worker processes")
    parser.add_argument("--threads", type=int, default=0,
                        help="torch.set_num_threads for training (0: torch's default)")
    parser.add_argument("--switch-interval-ms", type=float, default=0.0,
                        help="sys.setswitchinterval in ms (0: Python's default of 5 ms)")
    parser.add_argument("--no-baseline", action="store_true",
                        help="skip the headless fits (one before, one after the window's)")
    parser.add_argument("--no-panels", action="store_true",
                        help="an empty window: isolates what the panels' painting costs")
    parser.add_argument("--synthetic", type=float, default=0.0, metavar="SECONDS",
                        help="no training: feed the panels synthetic events at the trainer's "
                             "rate for SECONDS, to measure the window's own cost")
    parser.add_argument("--heartbeat-ms", type=int, default=HEARTBEAT_MS,
                        help="heartbeat interval; 0 measures no gaps, only training speed")
    parser.add_argument("--headless", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--top", type=int, default=0,
                        help="list the N longest gaps with the training event just before each")
    args = parser.parse_args()
    trainer_argv = [f"--epochs={args.epochs}", f"--batch-size={args.batch_size}",
                    f"--image-size={args.image_size}", f"--workers={args.workers}",
                    f"--threads={args.threads}"]

    if pyside_steals_references():
        import PySide6

        print(f"warning: PySide6 {PySide6.__version__} on Python {sys.version.split()[0]} "
              f"drops references to None/True on Qt calls and would abort this run; making "
              f"them immortal (as Python 3.12 does) for the benchmark. Use PySide6 < 6.12 on "
              f"Python 3.11, or Python 3.12+.")
        make_immortal()

    import torch  # loaded up front, as the window's device probe does shortly after start-up

    if args.threads:
        torch.set_num_threads(args.threads)
    if args.switch_interval_ms:
        sys.setswitchinterval(args.switch_interval_ms / 1000)
    config = make_config(args)
    if args.headless:
        print(headless_images_per_second(config))
        return 0
    with_baseline = not (args.no_baseline or args.synthetic)
    baselines = [headless_in_a_fresh_process(trainer_argv)] if with_baseline else []

    _app = QApplication.instance() or QApplication(sys.argv)  # kept alive until the end
    project = ProjectModel(config)
    window = QWidget()
    window.setWindowTitle("Finetune Studio – stall benchmark")
    training = TrainingPanel(project)
    curves = CurvesPanel()
    layout = QHBoxLayout(window)
    if not args.no_panels:
        layout.addWidget(training)
        layout.addWidget(curves, 1)
    else:
        training.hide()
        curves.hide()
    window.resize(1280, 800)
    window.show()

    session = SyntheticSession(args.synthetic) if args.synthetic else TrainingSession()
    events = {"batches": 0, "speeds": [], "result": None, "first_batch": None}
    timeline: list[tuple[float, str]] = []  # when each training event reached the GUI thread

    def on_batch(event: BatchEnded) -> None:
        timeline.append((time.monotonic(), f"batch {event.epoch}.{event.step}"))
        events["batches"] += 1
        if events["first_batch"] is None:
            events["first_batch"] = time.monotonic()
            heartbeat.enter("training")

    def on_epoch(event: EpochEnded) -> None:
        timeline.append((time.monotonic(), f"epoch {event.epoch} end"))
        events["speeds"].append(event.images_per_second)

    def on_fit_started(event: FitStarted) -> None:
        heartbeat.enter("first batch")

    def on_finished(event: FitEnded) -> None:
        events["result"] = event
        heartbeat.enter("after")

    # The window's wiring: session events feed both panels on the GUI thread.
    session.fit_started.connect(training.on_fit_started)
    session.fit_started.connect(curves.on_fit_started)
    session.stage_started.connect(curves.on_stage_started)
    session.batch_ended.connect(training.on_batch_ended)
    session.batch_ended.connect(curves.on_batch_ended)
    session.epoch_ended.connect(training.on_epoch_ended)
    session.epoch_ended.connect(curves.on_epoch_ended)
    session.finished.connect(training.on_fit_ended)
    session.finished.connect(curves.on_fit_ended)
    session.running_changed.connect(training.set_running)
    session.paused_changed.connect(training.set_paused)
    training.stop_requested.connect(session.stop)
    # Bench bookkeeping.
    session.fit_started.connect(on_fit_started)
    session.batch_ended.connect(on_batch)
    session.epoch_ended.connect(on_epoch)
    session.finished.connect(on_finished)
    session.checkpoint_saved.connect(
        lambda event: timeline.append((time.monotonic(), f"checkpoint {event.kind}")))
    if args.synthetic:
        session.fit_started.connect(lambda event: heartbeat.enter("first batch"))

    heartbeat = Heartbeat(max(1, args.heartbeat_ms))
    if args.heartbeat_ms:
        heartbeat.start()
    run_event_loop(1.0)  # the idle window, for reference

    folder = tempfile.TemporaryDirectory(prefix="bench-gui-")
    heartbeat.enter("setup")
    began = time.monotonic()
    session.start(config, Path(folder.name) / "run")
    run_event_loop(600, until=session.finished)
    finished = events["result"] is not None
    seconds = time.monotonic() - began
    heartbeat.stop()
    session.wait()
    folder.cleanup()
    if not finished:
        print("the training run did not finish within 10 minutes")
        return 1

    result: FitEnded = events["result"]
    print(f"\nGUI event loop while training ({args.heartbeat_ms} ms heartbeat; gap = time between "
          f"ticks)")
    print(f"  machine: {os.cpu_count()} CPU cores, torch threads {torch.get_num_threads()}, "
          f"workers {args.workers}, switch interval {sys.getswitchinterval() * 1000:.1f} ms")
    what = ("synthetic events, no training" if args.synthetic else
            f"resnet18 at {args.image_size} px, batch {args.batch_size}, {args.epochs} epochs")
    print(f"  run: {what}, {events['batches']} batch events, outcome {result.outcome.value}, "
          f"{seconds:.1f} s, {curves.redraw_count} curve redraws")
    print()
    print(f"  {'phase':<12} {'ticks':>6} {'p50 ms':>8} {'p99 ms':>8} {'worst ms':>9}")
    for phase in ("idle", "setup", "first batch", "training"):
        gaps = heartbeat.gaps.get(phase, [])
        if gaps:
            print(f"  {phase:<12} {len(gaps):>6} {percentile(gaps, 50):>8.1f} "
                  f"{percentile(gaps, 99):>8.1f} {max(gaps):>9.1f}")
    train_gaps = heartbeat.gaps.get("training", [])
    if args.top:
        print(f"\n  the {args.top} longest gaps while training, after which event:")
        longest = sorted((entry for entry in heartbeat.log if entry[2] == "training"),
                         key=lambda entry: -entry[1])[: args.top]
        for when, gap, _ in sorted(longest):
            before = [(at, name) for at, name in timeline if at <= when - gap / 1000]
            at, name = before[-1] if before else (when, "-")
            print(f"  {gap:7.1f} ms, starting {(when - gap / 1000 - at) * 1000:6.0f} ms after "
                  f"{name}")
    print()
    with_gui = statistics.fmean(events["speeds"][1:] or events["speeds"] or [0.0])
    if with_baseline:  # before and after: on a shared machine one alone can mislead
        baselines.append(headless_in_a_fresh_process(trainer_argv))
    baseline = statistics.fmean(baselines) if baselines else 0.0
    print(f"  training speed with the window: {with_gui:,.0f} img/s"
          + (f"   headless: {baseline:,.0f} img/s (before {baselines[0]:,.0f}, after "
             f"{baselines[1]:,.0f}); the window costs {1 - with_gui / baseline:.0%}"
             if baselines else ""))
    if train_gaps:
        p99, worst = percentile(train_gaps, 99), max(train_gaps)
        verdict = "meets" if p99 < AIM_P99_MS and worst < AIM_WORST_MS else "misses"
        print(f"  aim p99 < {AIM_P99_MS:.0f} ms, worst < {AIM_WORST_MS:.0f} ms while training: "
              f"{verdict} it (p99 {p99:.1f} ms, worst {worst:.1f} ms)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
