"""LRFinderDialog: sweep the learning rate over a few hundred training batches, plot the loss
against it, and apply the suggested base rate (engine: studio.engine.lr_finder).

The sweep trains the project's model as configured (weights, freeze choices, groups) in the
thread pool and restores it afterwards; nothing is written. The curve is drawn against the
*base* learning rate, so applying a suggestion sets ``optim.lr`` and scales every group's rate
by the same factor, keeping discriminative ratios. Like the curves panel, the sweep only appends
points; a ~10 Hz GUI timer redraws when something changed.
"""

from __future__ import annotations

import dataclasses
import math
import threading
from typing import Any

import numpy as np
import pyqtgraph as pg
from PySide6.QtCore import Qt, QTimer, Signal, Slot
from PySide6.QtGui import QHideEvent, QPalette
from PySide6.QtWidgets import (
    QDialog,
    QDialogButtonBox,
    QHBoxLayout,
    QLabel,
    QProgressBar,
    QPushButton,
    QSpinBox,
    QStyle,
    QVBoxLayout,
    QWidget,
)

from studio.engine.errors import ConfigError
from studio.engine.lr_finder import END_LR, START_LR, STEPS, LRFinderResult, find_lr
from studio.ui.models.groups import format_number
from studio.ui.project import ProjectModel
from studio.ui.tasks import BackgroundTask
from studio.ui.text import sentence
from studio.ui.widgets.curves_panel import (
    AXIS_COLOR,
    TEXT_COLOR,
    TRAIN_COLOR,
    VAL_COLOR,
    LearningRateAxis,
    TickGrid,
)

ERROR_STYLE = "color: #c62828;"
REDRAW_INTERVAL_MS = 100
MIN_STEPS, MAX_STEPS = 10, 1000
CURRENT_COLOR = (120, 120, 120)
LABEL_FILL = (255, 255, 255, 210)  # line labels stay readable over the curve
INTRO = ("Trains the model as set up here for a few hundred batches while the learning rate "
         "grows from {start} to {end}, and plots the loss. Nothing is saved: the model is put "
         "back afterwards. A good base rate is where the loss falls fastest, before its "
         "minimum.")


def rounded(value: float) -> float:
    """A suggestion to two significant digits: 3.2e-4, not 3.1622776e-4."""
    return float(f"{value:.2g}")


class LRFinderWidget(QWidget):
    """Steps, Run/Stop, progress, the loss-vs-rate plot, the suggestion and Apply."""

    finder_finished = Signal(object)  # LRFinderResult
    suggestion_applied = Signal(float)  # the new base learning rate

    def __init__(self, project: ProjectModel, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self._project = project
        self._result: LRFinderResult | None = None
        self._points: list[tuple[float, float]] = []  # (lr, smoothed loss), appended by the job
        self._drawn = 0
        self._stop: threading.Event | None = None
        self.start_lr, self.end_lr = START_LR, END_LR
        self.task = BackgroundTask(self)
        self._redraw_timer = QTimer(self)
        self._redraw_timer.setSingleShot(True)
        self._redraw_timer.setInterval(REDRAW_INTERVAL_MS)
        self._make_widgets()
        self._build_layout()
        self._connect()
        self._update_enabled()

    # -- construction ---------------------------------------------------------------------

    def _make_widgets(self) -> None:
        style = self.style()
        self.intro_label = QLabel(INTRO.format(start=format_number(self.start_lr),
                                               end=format_number(self.end_lr)))
        self.intro_label.setWordWrap(True)
        self.intro_label.setForegroundRole(QPalette.ColorRole.PlaceholderText)
        self.steps_spin = QSpinBox()
        self.steps_spin.setRange(MIN_STEPS, MAX_STEPS)
        self.steps_spin.setValue(STEPS)
        self.steps_spin.setSuffix(" steps")
        self.steps_spin.setToolTip("Training batches in the sweep: more gives a smoother curve "
                                   "and takes longer")
        self.run_button = QPushButton(style.standardIcon(QStyle.StandardPixmap.SP_MediaPlay),
                                      "Run sweep")
        self.run_button.setToolTip("Start the sweep (in the background)")
        self.stop_button = QPushButton(style.standardIcon(QStyle.StandardPixmap.SP_MediaStop),
                                       "Stop")
        self.stop_button.setToolTip("End the sweep after this batch and keep its curve")
        self.progress = QProgressBar()
        self.progress.setFormat("%v of %m steps")
        self.progress.setVisible(False)

        self.plot_widget = pg.PlotWidget(background="w",
                                         axisItems={"bottom": LearningRateAxis("bottom")})
        self.plot_widget.setMinimumSize(420, 260)
        self.plot_widget.setToolTip("Smoothed training loss against the base learning rate "
                                    "(log scale); drag a box to zoom, right-click to reset")
        self.plot = self.plot_widget.getPlotItem()
        for name in ("left", "bottom"):
            axis = self.plot.getAxis(name)
            axis.setPen(pg.mkPen(AXIS_COLOR))
            axis.setTextPen(pg.mkPen(TEXT_COLOR))
            axis.enableAutoSIPrefix(False)
        self.plot.setLabel("left", "training loss", color="#3c3c3c")
        self.plot.setLabel("bottom", "base learning rate", color="#3c3c3c")
        self.plot.setLogMode(x=True, y=False)
        self.plot.addItem(TickGrid(self.plot), ignoreBounds=True)
        self.plot.getViewBox().setMouseMode(pg.ViewBox.RectMode)
        self.plot.hideButtons()
        self.plot.addLegend(offset=(-8, 8), brush=pg.mkBrush(255, 255, 255, 215),
                            pen=pg.mkPen(220, 220, 220), labelTextColor=TEXT_COLOR,
                            labelTextSize="8pt", verSpacing=-6)
        self.raw_curve = self.plot.plot(pen=_pen(TRAIN_COLOR, 1, 45), antialias=False,
                                        name="per batch")
        self.curve = self.plot.plot(pen=_pen(TRAIN_COLOR, 2.2), antialias=True,
                                    name="smoothed")
        self.suggestion_line = pg.InfiniteLine(angle=90, movable=False,
                                               pen=_pen(VAL_COLOR, 2, 255, Qt.PenStyle.DashLine))
        self.suggestion_line.label = pg.InfLineLabel(self.suggestion_line, "", position=0.92,
                                                     color=VAL_COLOR, anchors=[(0, 0), (0, 0)],
                                                     fill=LABEL_FILL)
        self.current_line = pg.InfiniteLine(angle=90, movable=False,
                                            pen=_pen(CURRENT_COLOR, 1, 200, Qt.PenStyle.DotLine))
        self.current_line.label = pg.InfLineLabel(self.current_line, "current", position=0.08,
                                                  color=CURRENT_COLOR, anchors=[(0, 1), (0, 1)],
                                                  fill=LABEL_FILL)
        for line in (self.suggestion_line, self.current_line):
            line.setVisible(False)
            self.plot.addItem(line, ignoreBounds=True)

        self.result_label = QLabel("Run the sweep to see the loss against the learning rate.")
        self.result_label.setWordWrap(True)
        self.result_label.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.result_label.setToolTip("What the sweep found")
        self.apply_button = QPushButton("Apply suggestion")
        self.apply_button.setToolTip("Set the base learning rate to the suggestion and scale "
                                     "every group's rate by the same factor")
        self.error_label = QLabel()
        self.error_label.setWordWrap(True)
        self.error_label.setStyleSheet(ERROR_STYLE)
        self.error_label.setToolTip("Why the sweep or the change did not happen")
        self.error_label.setVisible(False)

    def _build_layout(self) -> None:
        controls = QHBoxLayout()
        steps_label = QLabel("Sweep over")
        steps_label.setBuddy(self.steps_spin)
        controls.addWidget(steps_label)
        controls.addWidget(self.steps_spin)
        controls.addWidget(self.run_button)
        controls.addWidget(self.stop_button)
        controls.addWidget(self.progress, 3)
        controls.addStretch(1)
        result = QHBoxLayout()
        result.addWidget(self.result_label, 1)
        result.addWidget(self.apply_button, 0, Qt.AlignmentFlag.AlignTop)
        layout = QVBoxLayout(self)
        layout.addWidget(self.intro_label)
        layout.addLayout(controls)
        layout.addWidget(self.plot_widget, 1)
        layout.addLayout(result)
        layout.addWidget(self.error_label)

    def _connect(self) -> None:
        self.task.succeeded.connect(self._on_task_succeeded)
        self.task.failed.connect(self._on_task_failed)
        self.task.progressed.connect(self._on_task_progressed)
        self._redraw_timer.timeout.connect(self._on_redraw_timer_timeout)
        self.run_button.clicked.connect(self._on_run_button_clicked)
        self.stop_button.clicked.connect(self._on_stop_button_clicked)
        self.apply_button.clicked.connect(self._on_apply_button_clicked)
        self._project.config_changed.connect(self._on_project_config_changed)
        self._project.scan_changed.connect(self._on_project_scan_changed)

    # -- public ---------------------------------------------------------------------------

    @property
    def result(self) -> LRFinderResult | None:
        return self._result

    def start(self) -> None:
        """Sweep the project's current config on its scanned dataset, in the background."""
        if self.task.running:
            return
        scan = self._project.scan
        if scan is None:
            self._show_error("Choose a dataset folder first (step 1): the sweep trains on its "
                             "images.")
            return
        config = self._project.config
        steps, start_lr, end_lr = self.steps_spin.value(), self.start_lr, self.end_lr
        stop = threading.Event()
        points: list[tuple[float, float]] = []
        self._stop, self._points, self._drawn, self._result = stop, points, -1, None

        def job(progress: Any) -> LRFinderResult:
            def on_step(step: int, total: int, lr: float, loss: float) -> None:
                points.append((lr, loss))  # read on the GUI thread by the redraw timer
                progress(step, total)

            return find_lr(config, scan=scan, steps=steps, start_lr=start_lr, end_lr=end_lr,
                           stop=stop, progress=on_step)

        self._show_error("")
        self.raw_curve.setData([], [])
        self.curve.setData([], [])
        self.suggestion_line.setVisible(False)
        self._show_current(config.optim.lr)
        self.plot.enableAutoRange()
        self.progress.setRange(0, steps)
        self.progress.setValue(0)
        self.progress.setVisible(True)
        self.result_label.setText(f"Sweeping {steps} steps from {format_number(start_lr)} to "
                                  f"{format_number(end_lr)}…")
        self.task.start(job, with_progress=True)
        self._update_enabled()

    def stop(self) -> None:
        if self._stop is not None and self.task.running:
            self._stop.set()
            self.result_label.setText("Stopping after this batch…")

    def apply_suggestion(self) -> bool:
        """Base rate := the suggestion; every group's rate × (suggestion / old base rate)."""
        result = self._result
        if result is None or result.suggestion is None:
            return False
        suggestion = rounded(result.suggestion)
        optim = self._project.config.optim
        factor = suggestion / optim.lr
        groups = tuple(dataclasses.replace(g, lr=g.lr * factor) for g in optim.groups)
        try:
            self._project.update("optim", lr=suggestion, groups=groups)
        except ConfigError as error:
            self._show_error(sentence(f"the suggestion was not applied: {error}"))
            return False
        self._show_error("")
        self._show_current(suggestion)
        self.suggestion_applied.emit(suggestion)
        return True

    # -- slots ----------------------------------------------------------------------------

    @Slot()
    def _on_run_button_clicked(self) -> None:
        self.start()

    @Slot()
    def _on_stop_button_clicked(self) -> None:
        self.stop()

    @Slot()
    def _on_apply_button_clicked(self) -> None:
        self.apply_suggestion()

    @Slot(int, int)
    def _on_task_progressed(self, step: int, steps: int) -> None:
        self.progress.setValue(step)
        if not self._redraw_timer.isActive():
            self._redraw_timer.start()

    @Slot()
    def _on_redraw_timer_timeout(self) -> None:
        if self._result is not None or len(self._points) == self._drawn:
            return
        points = list(self._points)  # a snapshot: the job may append meanwhile
        self._drawn = len(points)
        lrs = np.array([p[0] for p in points], dtype=np.float64)
        losses = np.array([p[1] for p in points], dtype=np.float64)
        self.curve.setData(lrs, losses)

    @Slot(object)
    def _on_task_succeeded(self, result: LRFinderResult) -> None:
        self._result = result
        self._redraw_timer.stop()
        self.progress.setVisible(False)
        self._draw_result(result)
        self.result_label.setText(_result_text(result, self._project.config.optim.lr))
        self._update_enabled()
        self.finder_finished.emit(result)

    @Slot(str)
    def _on_task_failed(self, message: str) -> None:
        self._redraw_timer.stop()
        self.progress.setVisible(False)
        self.result_label.setText("The sweep did not run.")
        self._show_error(sentence(message))
        self._update_enabled()

    @Slot(object)
    def _on_project_config_changed(self, config: object) -> None:
        if self.current_line.isVisible():
            self._show_current(self._project.config.optim.lr)

    @Slot(object)
    def _on_project_scan_changed(self, scan: object) -> None:
        self._update_enabled()

    # -- helpers --------------------------------------------------------------------------

    def _draw_result(self, result: LRFinderResult) -> None:
        lrs = np.asarray(result.lrs, dtype=np.float64)
        smoothed = np.asarray(result.smoothed, dtype=np.float64)
        self.raw_curve.setData(lrs, np.asarray(result.losses, dtype=np.float64))
        self.curve.setData(lrs, smoothed)
        if result.suggestion is not None:
            suggestion = rounded(result.suggestion)
            self.suggestion_line.setVisible(True)  # first: a hidden label ignores its text
            self.suggestion_line.setValue(math.log10(suggestion))
            self.suggestion_line.label.setFormat(f" suggested {format_number(suggestion)}")
        if len(smoothed):
            # The fall is what matters: show up to the highest loss before the minimum, not
            # the divergence at the end that would flatten everything else.
            lowest = int(np.argmin(smoothed))
            top = float(np.max(smoothed[: lowest + 1]))
            bottom = float(smoothed[lowest])
            span = max(top - bottom, 1e-3)
            self.plot.setXRange(math.log10(lrs[0]), math.log10(lrs[-1]), padding=0.02)
            self.plot.setYRange(bottom - 0.1 * span, top + 0.25 * span, padding=0)

    def _show_current(self, lr: float) -> None:
        self.current_line.setVisible(True)  # first: a hidden label ignores its text
        self.current_line.setValue(math.log10(lr))
        self.current_line.label.setFormat(f" current {format_number(lr)}")

    def _show_error(self, text: str) -> None:
        self.error_label.setText(text)
        self.error_label.setVisible(bool(text))

    def _update_enabled(self) -> None:
        running = self.task.running
        self.run_button.setEnabled(not running and self._project.scan is not None)
        self.steps_spin.setEnabled(not running)
        self.stop_button.setEnabled(running)
        result = self._result
        self.apply_button.setEnabled(not running and result is not None
                                     and result.suggestion is not None)


class LRFinderDialog(QDialog):
    """The finder in its own window, beside the learning-rate page; closing it stops a sweep."""

    def __init__(self, project: ProjectModel, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setWindowTitle("Find a learning rate")
        self.finder = LRFinderWidget(project)
        buttons = QDialogButtonBox(QDialogButtonBox.StandardButton.Close)
        buttons.rejected.connect(self.reject)
        layout = QVBoxLayout(self)
        layout.addWidget(self.finder, 1)
        layout.addWidget(buttons)
        self.resize(680, 520)

    def hideEvent(self, event: QHideEvent) -> None:  # noqa: N802 - Qt override
        self.finder.stop()
        super().hideEvent(event)


def _result_text(result: LRFinderResult, current: float) -> str:
    steps = len(result.lrs)
    if result.ended == "diverged":
        last = format_number(result.lrs[-1]) if result.lrs else format_number(START_LR)
        opening = f"The loss diverged near {last}, so the sweep ended after {steps} steps. "
    elif result.ended == "stopped":
        opening = f"Stopped after {steps} steps. "
    else:
        opening = ""
    if result.suggestion is None:
        return opening + ("The curve is too short to suggest a rate (it needs at least 8 "
                          "steps with a falling loss); run more steps.")
    suggestion = format_number(rounded(result.suggestion))
    return opening + (f"Suggested base learning rate: {suggestion}, where the smoothed loss "
                      f"falls fastest. The current one is "
                      f"{format_number(current)}.")


def _pen(color: tuple[int, ...], width: float, alpha: int = 255,
         style: Qt.PenStyle = Qt.PenStyle.SolidLine) -> Any:
    pen = pg.mkPen((*color[:3], alpha), width=width, style=style)
    pen.setCosmetic(True)
    return pen

