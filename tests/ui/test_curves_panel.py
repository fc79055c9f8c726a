"""CurvesPanel: events become plotted points, redraws are throttled, the last run stays faint."""

from __future__ import annotations

import numpy as np
import pytest
from PySide6.QtCore import QPointF

from studio.engine.events import BatchEnded, EpochEnded, FitEnded, FitStarted, Outcome
from studio.ui.widgets.curves_panel import CurvesPanel, GrowingSeries

GROUPS = ("backbone", "head")


def fit_started(epochs: int = 3, steps: int = 50) -> FitStarted:
    return FitStarted("/tmp/run", epochs, 1, steps, 1000, 200, ("cat", "dog"), "cpu", "fp32",
                      False, 100, 100)


def batch(epoch: int, step: int, steps: int = 50, loss: float = 1.0,
          groups: tuple[str, ...] = GROUPS) -> BatchEnded:
    lr = {name: 1e-3 * (index + 1) for index, name in enumerate(groups)}
    return BatchEnded(epoch, step, steps, (epoch - 1) * steps + step, loss, 0.5, lr, 500.0, 9.0)


def epoch_ended(epoch: int, val_acc: float = 0.8, is_best: bool = True) -> EpochEnded:
    return EpochEnded(epoch, 0.7, 0.75, 0.6, val_acc, {"head": 1e-3}, 3.0, 400.0, is_best)


def feed_run(panel: CurvesPanel, epochs: int = 2, steps: int = 50, loss: float = 1.0) -> None:
    panel.on_fit_started(fit_started(epochs, steps))
    for epoch in range(1, epochs + 1):
        for step in range(1, steps + 1):
            panel.on_batch_ended(batch(epoch, step, steps, loss))
        panel.on_epoch_ended(epoch_ended(epoch, 0.5 + 0.1 * epoch))


def curve_data(panel: CurvesPanel, label: str) -> tuple[np.ndarray, np.ndarray]:
    drawn = next(d for d in panel._drawn if d.label == label)
    x, y = drawn.curve.getData()
    return (np.array([]), np.array([])) if x is None else (x, y)


def faint_curves(panel: CurvesPanel, plot: str) -> list[tuple[np.ndarray, np.ndarray]]:
    curves = [d.curve.getData() for d in panel._drawn if d.previous and d.plot == plot]
    return [(x, y) for x, y in curves if x is not None and len(x)]


@pytest.fixture
def panel(qtbot) -> CurvesPanel:
    widget = CurvesPanel()
    qtbot.addWidget(widget)
    widget.resize(800, 700)
    widget.show()
    return widget


def test_growing_series_keeps_every_point_across_growth() -> None:
    series = GrowingSeries(capacity=4)
    for i in range(1000):
        series.append(i, 2 * i)
    assert len(series) == 1000
    assert series.x[-1] == 999 and series.y[-1] == 1998
    assert np.array_equal(series.y, 2 * series.x)


def test_batches_and_epochs_become_plotted_points(qtbot, panel: CurvesPanel) -> None:
    feed_run(panel, epochs=2, steps=50)
    qtbot.waitUntil(lambda: len(curve_data(panel, "loss (batch)")[0]) == 100, timeout=2000)

    x, y = curve_data(panel, "loss (batch)")
    assert x[0] == pytest.approx(0.02) and x[49] == pytest.approx(1.0)  # fractional epochs
    assert x[-1] == pytest.approx(2.0)
    assert len(curve_data(panel, "loss (smoothed)")[0]) == 100
    assert list(curve_data(panel, "val loss")[0]) == [1.0, 2.0]
    x, y = curve_data(panel, "val accuracy")
    assert list(x) == [1.0, 2.0] and y == pytest.approx([60.0, 70.0])  # percent
    assert len(curve_data(panel, "lr head")[0]) == 100


def test_smoothed_loss_follows_a_step_but_lags_it(qtbot, panel: CurvesPanel) -> None:
    panel.on_fit_started(fit_started(1, 40))
    for step in range(1, 41):
        panel.on_batch_ended(batch(1, step, 40, loss=2.0 if step <= 20 else 0.0))
    qtbot.waitUntil(lambda: len(curve_data(panel, "loss (smoothed)")[0]) == 40, timeout=2000)
    smooth = curve_data(panel, "loss (smoothed)")[1]
    assert smooth[0] == pytest.approx(2.0)  # bias-corrected: no dip towards 0 at the start
    assert 0.0 < smooth[20] < 2.0 and smooth[-1] < 0.5


def test_a_flood_of_batches_is_accepted_quickly_with_few_redraws(qtbot, panel) -> None:
    panel.on_fit_started(fit_started(1, 5000))
    before = panel.redraw_count
    for step in range(1, 5001):
        panel.on_batch_ended(batch(1, step, 5000, loss=1.0 / step))
    qtbot.waitUntil(lambda: len(curve_data(panel, "loss (batch)")[0]) == 5000, timeout=3000)
    assert panel.redraw_count - before <= 3  # throttled, not one redraw per event
    redraws = panel.redraw_count
    qtbot.wait(250)  # nothing changed since: the timer does not redraw again
    assert panel.redraw_count == redraws


def test_clip_to_view_and_peak_downsampling_are_on(panel: CurvesPanel) -> None:
    for plot in (panel.loss_plot, panel.accuracy_plot, panel.lr_plot):
        assert plot.ctrl.clipToViewCheck.isChecked()
        assert plot.ctrl.autoDownsampleCheck.isChecked()
        assert plot.ctrl.peakRadio.isChecked()


def test_the_previous_run_is_drawn_faintly_after_a_new_start(qtbot, panel) -> None:
    feed_run(panel, epochs=2, steps=20, loss=3.0)
    panel.on_fit_ended(FitEnded(Outcome.COMPLETED, "completed 2 epochs", 2, 2, 0.7, "val_acc",
                                "/tmp/run", 1.0))
    assert faint_curves(panel, "loss") == []

    panel.on_fit_started(fit_started(2, 20))
    panel.on_batch_ended(batch(1, 1, 20, loss=1.0))
    qtbot.waitUntil(lambda: len(faint_curves(panel, "loss")) == 3, timeout=2000)

    assert len(curve_data(panel, "loss (batch)")[0]) == 1  # the new run starts empty
    smooth_x, smooth_y = faint_curves(panel, "loss")[0]
    assert len(smooth_x) == 40 and smooth_y[-1] == pytest.approx(3.0)
    assert len(faint_curves(panel, "accuracy")) == 2
    assert len(faint_curves(panel, "lr")) == len(GROUPS)
    previous = next(d for d in panel._drawn if d.previous and d.plot == "loss")
    assert previous.curve.opts["pen"].color().alpha() < 100
    assert "previous run" in legend_names(panel.loss_legend)


def legend_names(legend) -> list[str]:
    return [label.text for _, label in legend.items]


def test_lr_legend_lists_the_groups(qtbot, panel: CurvesPanel) -> None:
    groups = ("stem", "layer1", "layer4", "head")
    panel.on_fit_started(fit_started(1, 10))
    panel.on_batch_ended(batch(1, 1, 10, groups=groups))
    assert legend_names(panel.lr_legend) == list(groups)
    assert panel.lr_plot.ctrl.logYCheck.isChecked()


def test_clear_forgets_both_runs(qtbot, panel: CurvesPanel) -> None:
    feed_run(panel, epochs=1, steps=10)
    panel.on_fit_started(fit_started(1, 10))
    panel.on_batch_ended(batch(1, 1, 10))
    panel.clear()
    assert len(curve_data(panel, "loss (batch)")[0]) == 0
    assert faint_curves(panel, "loss") == []
    assert legend_names(panel.lr_legend) == []
    assert "previous run" not in legend_names(panel.loss_legend)


def test_hovering_near_a_point_reads_its_value(qtbot, panel: CurvesPanel) -> None:
    feed_run(panel, epochs=2, steps=10)
    panel.on_fit_ended(FitEnded(Outcome.COMPLETED, "done", 2, 2, 0.7, "val_acc", "/tmp", 1.0))
    panel.accuracy_plot.getViewBox().autoRange()
    view = panel.accuracy_plot.getViewBox()
    scene_point = view.mapViewToScene(QPointF(2.0, 70.0))
    panel._on_plot_mouse_moved("accuracy", (scene_point,))
    text = panel._readout.text()
    assert "val accuracy" in text and "70.0 %" in text and "epoch <b>2</b>" in text
