"""CurvesPanel: live loss, accuracy and learning-rate curves of a training run (pyqtgraph).

Painting is decoupled from training (house style 6): the event slots only append to growable
numpy buffers and mark them dirty; a ~10 Hz single-shot GUI timer hands the dirty buffers to
pyqtgraph. A burst of thousands of events therefore costs thousands of cheap appends and one
redraw. The last run's buffers are kept and drawn faintly behind a new run for comparison.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from functools import partial

import numpy as np
import pyqtgraph as pg
from PySide6.QtCore import QPointF, QRectF, Qt, QTimer, Slot
from PySide6.QtGui import QPainter
from PySide6.QtWidgets import QLabel, QVBoxLayout, QWidget

from studio.engine.events import BatchEnded, EpochEnded, FitEnded, FitStarted, StageStarted

REDRAW_INTERVAL_MS = 100  # at most ~10 redraws a second, only when something changed
EMA_BETA = 0.9  # smoothing of the per-batch loss (bias-corrected, like TensorBoard's)
PREVIOUS_ALPHA = 60  # how faint the previous run's curves are (0–255)
HOVER_RADIUS_PX = 40  # the nearest point farther than this is not reported

TRAIN_COLOR = (31, 119, 180)
TRAIN_EPOCH_COLOR = (16, 52, 110)
VAL_COLOR = (230, 97, 1)
BEST_COLOR = (245, 190, 20)
TEXT_COLOR = (60, 60, 60)
AXIS_COLOR = (150, 150, 150)
GROUP_COLORS = (  # Tableau 10: distinct on white, colour-blind friendly enough
    (31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189),
    (140, 86, 75), (227, 119, 194), (127, 127, 127), (188, 189, 34), (23, 190, 207),
)


class GrowingSeries:
    """x/y points in numpy arrays that double when full, so an append is amortised O(1).

    ``x`` and ``y`` are views of the filled part; ``version`` changes on every edit so a
    redraw can skip series that did not change.
    """

    def __init__(self, capacity: int = 256) -> None:
        self._x = np.empty(capacity, dtype=np.float64)
        self._y = np.empty(capacity, dtype=np.float64)
        self._size = 0
        self.version = 0

    def __len__(self) -> int:
        return self._size

    @property
    def x(self) -> np.ndarray:
        return self._x[: self._size]

    @property
    def y(self) -> np.ndarray:
        return self._y[: self._size]

    def append(self, x: float, y: float) -> None:
        if self._size == len(self._x):
            self._x = np.concatenate([self._x, np.empty_like(self._x)])
            self._y = np.concatenate([self._y, np.empty_like(self._y)])
        self._x[self._size] = x
        self._y[self._size] = y
        self._size += 1
        self.version += 1

    def clear(self) -> None:
        """Start over in new arrays: a curve may still hold a view of the old ones."""
        self._x = np.empty(256, dtype=np.float64)
        self._y = np.empty(256, dtype=np.float64)
        self._size = 0
        self.version += 1


@dataclass
class RunCurves:
    """Every series of one run. The panel keeps two: the current run and the previous one."""

    batch_loss: GrowingSeries = field(default_factory=GrowingSeries)
    smooth_loss: GrowingSeries = field(default_factory=GrowingSeries)
    train_loss: GrowingSeries = field(default_factory=GrowingSeries)
    val_loss: GrowingSeries = field(default_factory=GrowingSeries)
    train_acc: GrowingSeries = field(default_factory=GrowingSeries)
    val_acc: GrowingSeries = field(default_factory=GrowingSeries)
    best: GrowingSeries = field(default_factory=GrowingSeries)
    lr: dict[str, GrowingSeries] = field(default_factory=dict)
    ema: float = 0.0
    ema_count: int = 0

    def is_empty(self) -> bool:
        return not (len(self.batch_loss) or len(self.train_loss) or len(self.val_loss))

    def last_x(self) -> float:
        ends = [s.x[-1] for s in (self.batch_loss, self.train_loss) if len(s)]
        return max(ends, default=0.0)


@dataclass
class _Drawn:
    """A plotted curve, which run's series it shows, and the series version it last showed."""

    curve: pg.PlotDataItem
    previous: bool  # a faint curve of the previous run
    attribute: str  # a RunCurves series, or a group name for learning rates
    label: str  # for the hover read-out; "" = not reported
    plot: str  # "loss", "accuracy" or "lr"
    scale: float = 1.0  # 100 for accuracies shown as percent
    positive_only: bool = False  # log axes: zeros and negatives are not drawn
    drawn_version: int = -1


class TickGrid(pg.GraphicsObject):
    """Light grid lines at the axes' ticks, without text.

    ``PlotItem.showGrid`` makes each axis span the whole view, so every curve update replays the
    axis picture, tick labels and all: it doubled the cost of a redraw (~30 ms instead of ~15 ms
    on the 2-core development machine, a GUI-thread stall each time). These lines cost ~1 ms.
    """

    LEVEL_ALPHAS = (40, 18)  # major ticks, then minor ticks

    def __init__(self, plot: pg.PlotItem) -> None:
        super().__init__()
        self._plot = plot
        self._pens = []
        for alpha in self.LEVEL_ALPHAS:
            pen = pg.mkPen(0, 0, 0, alpha)
            pen.setCosmetic(True)
            self._pens.append(pen)
        self.setZValue(-100)
        plot.getViewBox().sigRangeChanged.connect(self._on_view_range_changed)

    def _on_view_range_changed(self, *_: object) -> None:
        self.prepareGeometryChange()

    def boundingRect(self) -> QRectF:  # noqa: N802 (Qt override)
        return self._plot.getViewBox().viewRect()

    def paint(self, painter: QPainter, *_: object) -> None:
        view = self._plot.getViewBox()
        rect = view.viewRect()
        spans = (("bottom", rect.left(), rect.right(), view.width()),
                 ("left", rect.top(), rect.bottom(), view.height()))
        for name, low, high, pixels in spans:
            low, high = min(low, high), max(low, high)
            if pixels <= 0 or not high > low:
                continue
            levels = self._plot.getAxis(name).tickValues(low, high, pixels)
            for (_, values), pen in zip(levels, self._pens, strict=False):
                painter.setPen(pen)
                for value in values:
                    if name == "bottom":
                        painter.drawLine(QPointF(value, rect.top()), QPointF(value, rect.bottom()))
                    else:
                        painter.drawLine(QPointF(rect.left(), value), QPointF(rect.right(), value))


class LearningRateAxis(pg.AxisItem):
    """Log-axis ticks written the way learning rates are spoken: 1e-3, 3e-4, 0.1, 1."""

    def logTickStrings(self, values: list[float], scale: float,  # noqa: N802 (Qt-style override)
                       spacing: float) -> list[str]:
        return [_format_lr(10.0 ** value * scale) for value in values]


def _format_lr(value: float) -> str:
    if value >= 0.1:
        return f"{value:.3g}"
    mantissa, exponent = f"{value:.0e}".split("e")
    return f"{mantissa}e-{int(exponent[1:])}" if exponent.startswith("-") else f"{value:.0e}"


def _pen(color: tuple[int, ...], width: float = 1.0, alpha: int = 255,
         style: Qt.PenStyle = Qt.PenStyle.SolidLine) -> pg.QtGui.QPen:
    pen = pg.mkPen((*color[:3], alpha), width=width, style=style)
    pen.setCosmetic(True)
    return pen


def _style_plot(plot: pg.PlotItem, left: str, units_note: str = "") -> None:
    for name in ("left", "bottom"):
        axis = plot.getAxis(name)
        axis.setPen(pg.mkPen(AXIS_COLOR))
        axis.setTextPen(pg.mkPen(TEXT_COLOR))
        axis.enableAutoSIPrefix(False)  # "0.0001", never "1 (x0.0001)"
    plot.setLabel("left", left + units_note, color="#3c3c3c")
    plot.addItem(TickGrid(plot), ignoreBounds=True)
    plot.setClipToView(True)
    plot.setDownsampling(auto=True, mode="peak")
    plot.getViewBox().setMouseMode(pg.ViewBox.RectMode)  # drag a box to zoom; right-click resets
    plot.setMenuEnabled(True)
    plot.hideButtons()


class CurvesPanel(QWidget):
    """Live curves of the running fit, with the previous run drawn faintly behind it."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.redraw_count = 0  # how many times the curves were handed to pyqtgraph
        self._run = RunCurves()
        self._previous = RunCurves()
        self._epochs = 0
        self._start_epoch = 1
        self._drawn: list[_Drawn] = []
        self._lr_curves: dict[str, _Drawn] = {}
        self._previous_lr_curves: dict[str, _Drawn] = {}
        self._stage_lines: list[tuple[pg.PlotItem, pg.InfiniteLine]] = []

        self._redraw_timer = QTimer(self)
        self._redraw_timer.setSingleShot(True)
        self._redraw_timer.setInterval(REDRAW_INTERVAL_MS)
        self._redraw_timer.timeout.connect(self._on_redraw_timer_timeout)

        self._readout = QLabel(self)
        self._readout.setObjectName("curvesReadout")
        self._readout.setToolTip("The value under the mouse: move over a curve to read it.")
        self._readout.setTextFormat(Qt.TextFormat.RichText)
        self._readout.setMinimumHeight(self._readout.fontMetrics().height() + 6)
        self._show_hint()

        self.loss_widget = self._make_plot_widget("Loss: per batch, smoothed, per epoch. Drag a "
                                                  "box to zoom, right-click to reset.")
        self.accuracy_widget = self._make_plot_widget("Accuracy per epoch, in percent; the "
                                                      "star marks the best validation epoch.")
        self.lr_widget = self._make_plot_widget("Learning rate of every parameter group "
                                                "(log scale).", log_axis=True)
        self.loss_plot = self.loss_widget.getPlotItem()
        self.accuracy_plot = self.accuracy_widget.getPlotItem()
        self.lr_plot = self.lr_widget.getPlotItem()
        self._plots = {"loss": self.loss_plot, "accuracy": self.accuracy_plot, "lr": self.lr_plot}

        _style_plot(self.loss_plot, "Loss")
        _style_plot(self.accuracy_plot, "Accuracy", " (%)")
        _style_plot(self.lr_plot, "Learning rate")
        self.lr_plot.setLogMode(x=False, y=True)
        self.lr_plot.setLabel("bottom", "epoch", color="#3c3c3c")
        for plot in (self.loss_plot, self.accuracy_plot):
            plot.getAxis("bottom").setStyle(showValues=False)  # the x axis is shared
        for plot in (self.accuracy_plot, self.lr_plot):
            plot.setXLink(self.loss_plot)
            plot.getViewBox().setAutoVisible(y=True)
        self.loss_plot.getViewBox().setAutoVisible(y=True)
        for plot in (self.loss_plot, self.accuracy_plot, self.lr_plot):
            plot.getAxis("left").setWidth(62)  # equal widths keep the shared x axes aligned

        # Corners where the curves usually are not: loss falls, accuracy rises.
        legend_style = {"brush": pg.mkBrush(255, 255, 255, 215), "pen": pg.mkPen(220, 220, 220),
                        "labelTextColor": TEXT_COLOR, "labelTextSize": "8pt", "verSpacing": -6}
        self.loss_legend = self.loss_plot.addLegend(offset=(-8, 8), **legend_style)
        self.accuracy_legend = self.accuracy_plot.addLegend(offset=(-8, -8), **legend_style)
        self.lr_legend = self.lr_plot.addLegend(offset=(8, -8), colCount=2, **legend_style)

        self._build_curves()
        self._show_empty_state()

        self._crosshairs: dict[str, pg.InfiniteLine] = {}
        self._markers: dict[str, pg.PlotDataItem] = {}
        self._mouse_proxies: list[pg.SignalProxy] = []
        for key, widget in (("loss", self.loss_widget), ("accuracy", self.accuracy_widget),
                            ("lr", self.lr_widget)):
            plot = self._plots[key]
            line = pg.InfiniteLine(angle=90, movable=False,
                                   pen=_pen(AXIS_COLOR, 1, 160, Qt.PenStyle.DashLine))
            line.setVisible(False)
            plot.addItem(line, ignoreBounds=True)
            # A PlotDataItem, not a ScatterPlotItem: the plot's downsampling menu calls
            # setDownsampling on every data item it holds.
            marker = pg.PlotDataItem(pen=None, symbol="o", symbolSize=11,
                                     symbolPen=pg.mkPen(40, 40, 40, width=1.5),
                                     symbolBrush=pg.mkBrush(255, 255, 255, 0))
            marker.setVisible(False)
            plot.addItem(marker, ignoreBounds=True)
            self._crosshairs[key], self._markers[key] = line, marker
            self._mouse_proxies.append(pg.SignalProxy(
                widget.scene().sigMouseMoved, rateLimit=30,
                slot=partial(self._on_plot_mouse_moved, key)))

        layout = QVBoxLayout(self)
        layout.setContentsMargins(4, 4, 4, 4)
        layout.setSpacing(2)
        layout.addWidget(self._readout)
        layout.addWidget(self.loss_widget, 5)
        layout.addWidget(self.accuracy_widget, 4)
        layout.addWidget(self.lr_widget, 4)

    # -- construction ---------------------------------------------------------------------

    def _make_plot_widget(self, tooltip: str, log_axis: bool = False) -> pg.PlotWidget:
        axes = {"left": LearningRateAxis("left")} if log_axis else None
        widget = pg.PlotWidget(self, background="w", axisItems=axes)
        widget.setToolTip(tooltip)
        widget.setMinimumHeight(120)
        return widget

    def _add(self, plot: str, attribute: str, label: str, name: str | None = None,
             scale: float = 1.0, previous: bool = False, **style: object) -> _Drawn:
        curve = self._plots[plot].plot(name=name, **style)
        if previous:
            curve.setZValue(-1)
        drawn = _Drawn(curve, previous, attribute, label, plot, scale,
                       positive_only=plot == "lr")
        self._drawn.append(drawn)
        return drawn

    def _series(self, drawn: _Drawn) -> GrowingSeries:
        run = self._previous if drawn.previous else self._run
        if drawn.plot == "lr":
            return run.lr.setdefault(drawn.attribute, GrowingSeries())
        return getattr(run, drawn.attribute)

    def _build_curves(self) -> None:
        faint = PREVIOUS_ALPHA
        self._previous_smooth = self._add("loss", "smooth_loss", "", previous=True,
                                          antialias=False, pen=_pen(TRAIN_COLOR, 2, faint))
        self._add("loss", "train_loss", "", previous=True, antialias=True,
                  pen=_pen(TRAIN_EPOCH_COLOR, 1.5, faint, Qt.PenStyle.DashLine))
        self._add("loss", "val_loss", "", previous=True, antialias=True,
                  pen=_pen(VAL_COLOR, 2, faint), connect="finite")
        self._add("accuracy", "train_acc", "", scale=100, previous=True, antialias=True,
                  pen=_pen(TRAIN_COLOR, 2, faint))
        self._add("accuracy", "val_acc", "", scale=100, previous=True, antialias=True,
                  pen=_pen(VAL_COLOR, 2, faint), connect="finite")

        dot = {"symbolSize": 7, "symbolPen": pg.mkPen("w")}
        self._add("loss", "batch_loss", "loss (batch)", "per batch", antialias=False,
                  pen=_pen(TRAIN_COLOR, 1, 70))
        self._add("loss", "smooth_loss", "loss (smoothed)", "smoothed", antialias=False,
                  pen=_pen(TRAIN_COLOR, 2.4))
        self._add("loss", "train_loss", "train loss (epoch)", "train", antialias=True,
                  pen=_pen(TRAIN_EPOCH_COLOR, 1.5, style=Qt.PenStyle.DashLine),
                  symbol="o", symbolBrush=pg.mkBrush(TRAIN_EPOCH_COLOR), **dot)
        self._add("loss", "val_loss", "val loss", "val", antialias=True,
                  pen=_pen(VAL_COLOR, 2), symbol="s", symbolBrush=pg.mkBrush(VAL_COLOR),
                  connect="finite", **dot)
        self._add("accuracy", "train_acc", "train accuracy", "train", scale=100,
                  antialias=True, pen=_pen(TRAIN_COLOR, 2), symbol="o",
                  symbolBrush=pg.mkBrush(TRAIN_COLOR), **dot)
        self._add("accuracy", "val_acc", "val accuracy", "val", scale=100, antialias=True,
                  pen=_pen(VAL_COLOR, 2), symbol="s", symbolBrush=pg.mkBrush(VAL_COLOR),
                  connect="finite", **dot)
        self._add("accuracy", "best", "best val accuracy", "best", scale=100, pen=None,
                  symbol="star", symbolSize=16, symbolPen=pg.mkPen(150, 110, 0),
                  symbolBrush=pg.mkBrush(BEST_COLOR))

    def _lr_curve(self, name: str, previous: bool = False) -> _Drawn:
        """The curve of one parameter group, made when the group first appears."""
        curves = self._previous_lr_curves if previous else self._lr_curves
        drawn = curves.get(name)
        if drawn is None:
            color = GROUP_COLORS[len(curves) % len(GROUP_COLORS)]
            if previous:
                drawn = self._add("lr", name, "", previous=True, antialias=False,
                                  pen=_pen(color, 2, PREVIOUS_ALPHA), connect="finite")
            else:
                drawn = self._add("lr", name, f"lr {name}", name, antialias=False,
                                  pen=_pen(color, 2), connect="finite")
                self.lr_legend.setVisible(True)
            curves[name] = drawn
        return drawn

    # -- event slots ----------------------------------------------------------------------

    @Slot(object)
    def on_fit_started(self, event: FitStarted) -> None:
        """A new fit: the current run becomes the faint previous run (when it has points)."""
        if not self._run.is_empty():
            self._keep_as_previous()
        self._epochs, self._start_epoch = event.epochs, event.start_epoch
        self._clear_stage_lines()
        high = max(float(event.epochs), self._previous.last_x())
        self.loss_plot.setXRange(max(0.0, event.start_epoch - 1.0), max(high, 1.0),
                                 padding=0.02)
        for plot in self._plots.values():
            plot.enableAutoRange(axis="y")
        self.loss_legend.setVisible(True)
        self.accuracy_legend.setVisible(True)
        self.lr_legend.setVisible(bool(self._lr_curves))
        self._show_hint()
        self._schedule_redraw()

    @Slot(object)
    def on_stage_started(self, event: StageStarted) -> None:
        """Mark where a progressive-unfreezing stage begins (stage 0 is the run's own)."""
        if event.index < 1:
            return
        for plot in self._plots.values():
            line = pg.InfiniteLine(event.epoch - 1.0, angle=90, movable=False,
                                   pen=_pen((120, 120, 120), 1, 140, Qt.PenStyle.DotLine))
            if plot is self.loss_plot:  # low in the loss plot: the loss is still high there
                line.label = pg.InfLineLabel(line, f" stage {event.index}", position=0.04,
                                             color=TEXT_COLOR, anchors=[(0, 1), (0, 1)])
            plot.addItem(line, ignoreBounds=True)
            self._stage_lines.append((plot, line))

    @Slot(object)
    def on_batch_ended(self, event: BatchEnded) -> None:
        run = self._run
        x = event.epoch - 1 + event.step / max(1, event.steps)
        run.batch_loss.append(x, event.loss)
        run.ema = EMA_BETA * run.ema + (1.0 - EMA_BETA) * event.loss
        run.ema_count += 1
        run.smooth_loss.append(x, run.ema / (1.0 - EMA_BETA ** run.ema_count))
        for name, lr in event.lr.items():
            self._lr_curve(name)
            run.lr.setdefault(name, GrowingSeries()).append(x, lr)
        self._schedule_redraw()

    @Slot(object)
    def on_epoch_ended(self, event: EpochEnded) -> None:
        run = self._run
        x = float(event.epoch)
        run.train_loss.append(x, event.train_loss)
        run.val_loss.append(x, event.val_loss)
        run.train_acc.append(x, event.train_acc)
        run.val_acc.append(x, event.val_acc)
        if event.is_best and math.isfinite(event.val_acc):
            run.best.clear()
            run.best.append(x, event.val_acc)
        self._schedule_redraw()

    @Slot(object)
    def on_fit_ended(self, event: FitEnded) -> None:
        """Show the final points now rather than on the next tick."""
        self._redraw_timer.stop()
        self._on_redraw_timer_timeout()

    @Slot()
    def clear(self) -> None:
        """Forget the current and the previous run."""
        self._run, self._previous = RunCurves(), RunCurves()
        for drawn in [*self._lr_curves.values(), *self._previous_lr_curves.values()]:
            self._remove(drawn)
        self._lr_curves.clear()
        self._previous_lr_curves.clear()
        for drawn in self._drawn:
            drawn.drawn_version = -1
        for marker in self._markers.values():
            marker.setVisible(False)
        self._clear_stage_lines()
        self.loss_legend.removeItem(self._previous_smooth.curve)
        self._show_empty_state()
        self._redraw_timer.stop()
        self._on_redraw_timer_timeout()

    # -- buffers --------------------------------------------------------------------------

    def _keep_as_previous(self) -> None:
        """The finished run's buffers become the previous run's (no copying); faint curves
        follow because every curve names its run and series rather than holding arrays."""
        self._previous, self._run = self._run, RunCurves()
        for drawn in [*self._lr_curves.values(), *self._previous_lr_curves.values()]:
            self._remove(drawn)
        self._lr_curves.clear()
        self._previous_lr_curves.clear()
        for name in self._previous.lr:
            self._lr_curve(name, previous=True)
        for drawn in self._drawn:
            drawn.drawn_version = -1
        if all(sample.item is not self._previous_smooth.curve
               for sample, _ in self.loss_legend.items):
            self.loss_legend.addItem(self._previous_smooth.curve, "previous run")

    def _remove(self, drawn: _Drawn) -> None:
        plot = self._plots[drawn.plot]
        if drawn.plot == "lr":
            self.lr_legend.removeItem(drawn.curve)
        plot.removeItem(drawn.curve)
        self._drawn.remove(drawn)

    def _clear_stage_lines(self) -> None:
        for plot, line in self._stage_lines:
            plot.removeItem(line)
        self._stage_lines.clear()

    # -- drawing --------------------------------------------------------------------------

    def _schedule_redraw(self) -> None:
        if not self._redraw_timer.isActive():
            self._redraw_timer.start()

    @Slot()
    def _on_redraw_timer_timeout(self) -> None:
        """Hand every series that changed since the last redraw to its curve."""
        changed = [(drawn, series) for drawn in self._drawn
                   if drawn.drawn_version != (series := self._series(drawn)).version]
        if not changed:
            return
        for drawn, series in changed:
            y = series.y
            if drawn.scale != 1.0:
                y = y * drawn.scale
            if drawn.positive_only and len(y) and (y <= 0).any():
                y = np.where(y > 0, y, np.nan)
            drawn.curve.setData(series.x, y)
            drawn.drawn_version = series.version
        self.redraw_count += 1

    # -- hover read-out -------------------------------------------------------------------

    def _show_hint(self) -> None:
        self._readout.setText("<span style='color:#888'>Move the mouse over a curve to read "
                              "its value.</span>")

    def _show_empty_state(self) -> None:
        """Before any run: tidy default ranges, no empty legends, a line saying what comes."""
        self.loss_plot.setXRange(0, 1, padding=0.02)
        self.loss_plot.setYRange(0, 1, padding=0.02)
        self.accuracy_plot.setYRange(0, 100, padding=0.02)
        self.lr_plot.setYRange(-5, -1, padding=0.02)  # log10 view coordinates: 1e-5 … 1e-1
        for legend in (self.loss_legend, self.accuracy_legend, self.lr_legend):
            legend.setVisible(False)
        self._readout.setText("<span style='color:#888'>The curves appear here when training "
                              "starts.</span>")

    def _on_plot_mouse_moved(self, key: str, args: tuple[QPointF]) -> None:
        """Crosshair in all three plots at the mouse's epoch; the nearest point's value."""
        position = args[0]
        plot = self._plots[key]
        view = plot.getViewBox()
        if not view.sceneBoundingRect().contains(position):
            for line in self._crosshairs.values():
                line.setVisible(False)
            self._markers[key].setVisible(False)
            return
        mouse = view.mapSceneToView(position)
        for line in self._crosshairs.values():
            line.setPos(mouse.x())
            line.setVisible(True)
        for other, marker in self._markers.items():
            if other != key:
                marker.setVisible(False)
        nearest = self._nearest(key, mouse.x(), mouse.y())
        marker = self._markers[key]
        if nearest is None:
            marker.setVisible(False)
            self._readout.setText(f"epoch <b>{mouse.x():.2f}</b>")
            return
        drawn, x, y = nearest
        marker.setData([x], [y])  # a data item: the log axis transforms it like the curves
        marker.setVisible(True)
        self._readout.setText(f"<span style='color:#555'>{drawn.label}</span> · "
                              f"epoch <b>{_format_epoch(x)}</b> · <b>{_format_value(key, y)}</b>")

    def _nearest(self, key: str, mouse_x: float, mouse_y: float
                 ) -> tuple[_Drawn, float, float] | None:
        """The point nearest the mouse in screen pixels among this plot's current curves."""
        view = self._plots[key].getViewBox()
        pixel = view.viewPixelSize()
        if not pixel[0] or not pixel[1]:
            return None
        best: tuple[float, _Drawn, float, float] | None = None
        for drawn in self._drawn:
            series = self._series(drawn)
            if drawn.plot != key or not drawn.label or not len(series):
                continue
            xs = series.x
            ys = series.y * drawn.scale
            with np.errstate(divide="ignore", invalid="ignore"):
                view_ys = np.log10(ys) if key == "lr" else ys
            distance = ((xs - mouse_x) / pixel[0]) ** 2 + ((view_ys - mouse_y) / pixel[1]) ** 2
            distance = np.where(np.isfinite(distance), distance, np.inf)
            index = int(np.argmin(distance))
            if best is None or distance[index] < best[0]:
                best = (float(distance[index]), drawn, float(xs[index]), float(ys[index]))
        if best is None or best[0] > HOVER_RADIUS_PX ** 2:
            return None
        return best[1], best[2], best[3]


def _format_epoch(x: float) -> str:
    return f"{x:.0f}" if abs(x - round(x)) < 1e-9 else f"{x:.2f}"


def _format_value(key: str, y: float) -> str:
    if key == "accuracy":
        return f"{y:.1f} %"
    if key == "lr":
        return f"{y:.3g}" if y >= 0.1 else f"{y:.2e}".replace("e-0", "e-")
    return f"{y:.4f}"
