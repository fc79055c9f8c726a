"""CalibrationView: a reliability diagram (pyqtgraph) and what calibration found.

Bars are the accuracy of each confidence bin (15 equal-width bins of the top probability): the
model as it is drawn as outlines, after temperature scaling filled. A perfectly calibrated model
has its bars on the diagonal. Hovering a bin tells its range, image count, mean confidence and
accuracy; a label gives ECE before and after, the temperature, and the unknown threshold with
the share of images it keeps (drawn as a dashed line). Shows an engine ``Calibration``; owns no
data and computes nothing.
"""

from __future__ import annotations

import pyqtgraph as pg
from PySide6.QtCore import QPointF, Qt, Slot
from PySide6.QtWidgets import QLabel, QVBoxLayout, QWidget

from studio.engine.calibration import Calibration, ReliabilityBin

RAW_COLOR = (127, 127, 127)
CALIBRATED_COLOR = (31, 119, 180)
DIAGONAL_COLOR = (230, 97, 1)
THRESHOLD_COLOR = (214, 39, 40)
TEXT_COLOR = (60, 60, 60)
AXIS_COLOR = (150, 150, 150)


class CalibrationView(QWidget):
    """The reliability diagram of one evaluation; ``show_calibration`` fills it."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.calibration: Calibration | None = None
        self.plot_widget = pg.PlotWidget(self, background="w")
        self.plot_widget.setMinimumHeight(160)
        self.plot_widget.setToolTip("Accuracy of each confidence bin: outlined as the model is, "
                                    "filled after temperature scaling; the diagonal is perfect "
                                    "calibration")
        plot = self.plot_widget.getPlotItem()
        for name in ("left", "bottom"):
            axis = plot.getAxis(name)
            axis.setPen(pg.mkPen(AXIS_COLOR))
            axis.setTextPen(pg.mkPen(TEXT_COLOR))
        plot.setLabel("left", "accuracy", color="#3c3c3c")
        plot.setLabel("bottom", "top-class probability", color="#3c3c3c")
        plot.setXRange(0, 1, padding=0.02)
        plot.setYRange(0, 1, padding=0.02)
        plot.setMouseEnabled(x=False, y=False)
        plot.hideButtons()
        plot.setMenuEnabled(False)
        self.legend = plot.addLegend(offset=(8, 8), labelTextColor=TEXT_COLOR)
        self.diagonal = pg.PlotDataItem([0, 1], [0, 1], name="perfect calibration",
                                        pen=pg.mkPen(DIAGONAL_COLOR, width=1.5,
                                                     style=Qt.PenStyle.DashLine))
        self.raw_bars = pg.BarGraphItem(x=[], height=[], width=0.0,
                                        pen=pg.mkPen(RAW_COLOR, width=1.5), brush=None)
        self.calibrated_bars = pg.BarGraphItem(x=[], height=[], width=0.0, pen=pg.mkPen("w"),
                                               brush=pg.mkBrush(*CALIBRATED_COLOR, 170))
        self.threshold_line = pg.InfiniteLine(angle=90, movable=False,
                                              pen=pg.mkPen(THRESHOLD_COLOR, width=1.5,
                                                           style=Qt.PenStyle.DotLine))
        plot.addItem(self.calibrated_bars)
        plot.addItem(self.raw_bars)
        plot.addItem(self.diagonal)
        plot.addItem(self.threshold_line, ignoreBounds=True)
        self.legend.addItem(self.raw_bars, "as the model is")
        self.legend.addItem(self.calibrated_bars, "after temperature scaling")
        self.threshold_line.hide()
        self.summary_label = QLabel(self)
        self.summary_label.setWordWrap(True)
        self.threshold_label = QLabel(self)
        self.threshold_label.setWordWrap(True)
        self.hover_label = QLabel(self)
        self.hover_label.setStyleSheet("color: #555")
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self.plot_widget, 1)
        layout.addWidget(self.summary_label)
        layout.addWidget(self.threshold_label)
        layout.addWidget(self.hover_label)
        self.plot_widget.scene().sigMouseMoved.connect(self._on_scene_mouse_moved)
        self.clear()

    # -- what the Evaluate page calls ---------------------------------------------------

    def show_calibration(self, calibration: Calibration | None) -> None:
        """Draw ``calibration`` (an ``Evaluation.calibration``); None empties the view."""
        self.calibration = calibration
        if calibration is None or not calibration.images:
            self.clear()
            return
        self._draw_bars(self.raw_bars, calibration.bins)
        self._draw_bars(self.calibrated_bars, calibration.bins_calibrated)
        self.summary_label.setText(
            f"Expected calibration error {calibration.ece:.3f} → "
            f"{calibration.ece_calibrated:.3f} after dividing the logits by the temperature "
            f"{calibration.temperature:.3f} ({len(calibration.bins)} equal-width bins, "
            f"{calibration.images} images)")
        self.threshold_label.setText(self.threshold_text(calibration))
        if calibration.unknown_threshold is not None:
            self.threshold_line.setValue(calibration.unknown_threshold)
            self.threshold_line.show()
        else:
            self.threshold_line.hide()
        self.hover_label.setText("Hover a bar for its images.")

    def clear(self) -> None:
        self.calibration = None
        for bars in (self.raw_bars, self.calibrated_bars):
            bars.setOpts(x=[], height=[], width=0.0)
        self.threshold_line.hide()
        self.summary_label.setText("Evaluate a run to see how far its probabilities can be "
                                   "trusted.")
        self.threshold_label.setText("")
        self.hover_label.setText("")

    @staticmethod
    def threshold_text(calibration: Calibration) -> str:
        if calibration.unknown_threshold is None or calibration.coverage is None:
            return (f"No threshold reaches precision {calibration.target_precision:.2f} on these "
                    f"images, so nothing would be answered as unknown.")
        return (f"Unknown below {calibration.unknown_threshold:.3f} (calibrated top "
                f"probability): {calibration.coverage:.1%} of the images are answered, at "
                f"precision {calibration.precision or 0:.3f} for a target of "
                f"{calibration.target_precision:.2f}.")

    def bin_text(self, index: int) -> str:
        """What hovering bin ``index`` says: its range, counts, confidence and accuracy."""
        if self.calibration is None:
            return ""
        raw = self.calibration.bins[index]
        cal = self.calibration.bins_calibrated[index]
        return (f"{raw.low:.2f}–{raw.high:.2f}: as the model is {_bin_figures(raw)}; "
                f"after scaling {_bin_figures(cal)}")

    # -- drawing and hovering -------------------------------------------------------------

    @staticmethod
    def _draw_bars(item: pg.BarGraphItem, bins: tuple[ReliabilityBin, ...]) -> None:
        filled = [b for b in bins if b.count]
        width = (bins[0].high - bins[0].low) * 0.9 if bins else 0.0
        item.setOpts(x=[(b.low + b.high) / 2 for b in filled],
                     height=[b.accuracy for b in filled], width=width)

    @Slot(object)
    def _on_scene_mouse_moved(self, position: QPointF) -> None:
        if self.calibration is None:
            return
        view = self.plot_widget.getPlotItem().getViewBox()
        if not view.sceneBoundingRect().contains(position):
            return
        x = view.mapSceneToView(position).x()
        bins = len(self.calibration.bins)
        if 0.0 <= x <= 1.0:
            self.hover_label.setText(self.bin_text(min(int(x * bins), bins - 1)))


def _bin_figures(rb: ReliabilityBin) -> str:
    if not rb.count:
        return "no images"
    images = "1 image" if rb.count == 1 else f"{rb.count} images"
    return f"{images}, mean confidence {rb.confidence:.3f}, accuracy {rb.accuracy:.3f}"
