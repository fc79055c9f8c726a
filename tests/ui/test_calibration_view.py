"""The reliability diagram as a user meets it: bars per confidence bin, ECE before and after
with the temperature, the unknown threshold and its coverage, and a bin's counts on hover."""

from __future__ import annotations

import numpy as np
from PySide6.QtCore import QPointF
from pytestqt.qtbot import QtBot

from studio.engine.calibration import Calibration, calibrate
from studio.ui.widgets.calibration_view import CalibrationView


def over_confident(n: int = 600, seed: int = 0) -> Calibration:
    rng = np.random.default_rng(seed)
    means = np.array([[0.0, 0.0], [3.0, 0.0], [1.5, 2.6]])
    targets = rng.integers(0, 3, n)
    x = means[targets] + rng.standard_normal((n, 2))
    return calibrate(5 * (x @ means.T - 0.5 * (means**2).sum(axis=1)), targets)


def test_the_view_draws_both_diagrams_and_says_what_calibration_found(qtbot: QtBot) -> None:
    view = CalibrationView()
    qtbot.addWidget(view)
    view.show()
    calibration = over_confident()
    view.show_calibration(calibration)
    raw_x = view.raw_bars.opts["x"]
    assert len(raw_x) == sum(1 for b in calibration.bins if b.count)
    assert list(view.calibrated_bars.opts["height"]) == [
        b.accuracy for b in calibration.bins_calibrated if b.count]
    summary = view.summary_label.text()
    assert f"{calibration.ece:.3f} → {calibration.ece_calibrated:.3f}" in summary
    assert f"{calibration.temperature:.3f}" in summary and "15 equal-width bins" in summary
    assert calibration.unknown_threshold is not None and calibration.coverage is not None
    assert f"{calibration.unknown_threshold:.3f}" in view.threshold_label.text()
    assert f"{calibration.coverage:.1%}" in view.threshold_label.text()
    assert view.threshold_line.isVisible()
    assert view.threshold_line.value() == calibration.unknown_threshold


def test_hovering_a_bin_tells_its_counts(qtbot: QtBot) -> None:
    view = CalibrationView()
    qtbot.addWidget(view)
    view.resize(500, 400)
    view.show()
    qtbot.waitExposed(view)
    calibration = over_confident()
    view.show_calibration(calibration)
    top = calibration.bins[-1]
    assert f"{top.count} images" in view.bin_text(14)
    box = view.plot_widget.getPlotItem().getViewBox()
    scene_point = box.mapViewToScene(QPointF(0.97, 0.5))
    view._on_scene_mouse_moved(scene_point)
    assert view.hover_label.text() == view.bin_text(14)
    assert view.hover_label.text().startswith("0.93–1.00")


def test_no_reachable_threshold_and_clearing(qtbot: QtBot) -> None:
    view = CalibrationView()
    qtbot.addWidget(view)
    logits = np.log(np.array([[0.9, 0.1], [0.8, 0.2], [0.3, 0.7], [0.6, 0.4]]))
    calibration = calibrate(logits, np.array([1, 1, 1, 0]), target_precision=0.99)
    view.show_calibration(calibration)
    assert "No threshold reaches precision 0.99" in view.threshold_label.text()
    assert not view.threshold_line.isVisible()
    view.show_calibration(None)
    assert view.calibration is None and len(view.raw_bars.opts["x"]) == 0
    assert "Evaluate a run" in view.summary_label.text()
