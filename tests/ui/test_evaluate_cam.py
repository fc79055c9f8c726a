"""Class-activation maps on the Evaluate page: "Show CAM" colours the gallery's thumbnails and
the predicted image, the opacity slider changes how strongly, and the class choice matters."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from PySide6.QtCore import Qt
from PySide6.QtGui import QIcon

from studio.engine.evaluate import Evaluation, evaluate_run
from studio.ui.models.gallery import LOADED_ROLE, THUMBNAIL_SIZE
from studio.ui.widgets.evaluate_cam import pixels_of
from studio.ui.widgets.evaluate_panel import EvaluatePanel

pytest.importorskip("pytorch_grad_cam")


@pytest.fixture()
def panel(qtbot) -> EvaluatePanel:
    panel = EvaluatePanel()
    qtbot.addWidget(panel)
    panel.resize(1200, 800)
    panel.show()
    qtbot.waitExposed(panel)
    return panel


@pytest.fixture(scope="module")
def evaluation(trained_run: Path) -> Evaluation:
    return evaluate_run(trained_run, device="cpu")


def first_icon(panel: EvaluatePanel) -> np.ndarray:
    icon = panel.gallery_model.index(0, 0).data(Qt.ItemDataRole.DecorationRole)
    assert isinstance(icon, QIcon)
    return pixels_of(icon.pixmap(THUMBNAIL_SIZE, THUMBNAIL_SIZE))


def wait_for_maps(qtbot, panel: EvaluatePanel) -> None:
    panel.gallery_model.index(0, 0).data(Qt.ItemDataRole.DecorationRole)  # as a view paints
    qtbot.waitUntil(lambda: not panel.cam_maps.busy, timeout=30_000)


def test_show_cam_colours_the_gallery_and_opacity_takes_effect(panel, qtbot,
                                                               evaluation: Evaluation) -> None:
    panel.set_run_dir(evaluation.run_dir)
    panel.show_evaluation(evaluation)
    first = panel.gallery_model.index(0, 0)
    first.data(Qt.ItemDataRole.DecorationRole)
    qtbot.waitUntil(lambda: first.data(LOADED_ROLE), timeout=10_000)
    plain = first_icon(panel)
    controls = panel.cam_controls
    assert not controls.opacity_slider.isEnabled()  # nothing to weigh until maps are shown

    controls.show_check.setChecked(True)
    wait_for_maps(qtbot, panel)
    with_cam = first_icon(panel)
    assert with_cam.shape == plain.shape
    assert np.abs(with_cam.astype(int) - plain.astype(int)).mean() > 5  # visibly coloured

    controls.opacity_slider.setValue(100)  # the map alone: redrawn, not computed again
    assert not panel.cam_maps.busy
    full = first_icon(panel)
    assert np.abs(full.astype(int) - with_cam.astype(int)).mean() > 2
    controls.opacity_slider.setValue(0)  # the picture the model saw (its crop), uncoloured
    bare = np.abs(first_icon(panel).astype(int) - plain.astype(int)).mean()
    assert bare < np.abs(full.astype(int) - plain.astype(int)).mean() / 4

    controls.opacity_slider.setValue(100)
    controls.class_combo.setCurrentIndex(controls.class_combo.findData("true"))
    wait_for_maps(qtbot, panel)  # a mistake's true class has a map of its own
    assert first_icon(panel).shape == plain.shape

    controls.show_check.setChecked(False)
    assert np.array_equal(first_icon(panel), plain)


def test_the_predicted_image_shows_its_map(panel, qtbot, trained_run: Path,
                                           tmp_path: Path) -> None:
    panel.set_run_dir(str(trained_run))
    panel.cam_controls.show_check.setChecked(True)
    panel.cam_controls.opacity_slider.setValue(80)
    folder = tmp_path / "red"
    folder.mkdir()
    red = folder / "red.png"
    Image.new("RGB", (40, 24), (220, 30, 30)).save(red)
    with qtbot.waitSignal(panel.prediction_finished, timeout=60_000):
        panel.predict_file(str(red))
    label = panel.prediction_view.image_label
    qtbot.waitUntil(lambda: not panel.cam_maps.busy, timeout=30_000)
    qtbot.waitUntil(lambda: "Grad-CAM" in label.toolTip(), timeout=10_000)
    shown = pixels_of(label.pixmap())
    assert not (shown == np.array([220, 30, 30])).all(axis=-1).all()  # coloured by the map

    panel.cam_controls.class_combo.setCurrentIndex(1)  # true: the folder's name, red
    qtbot.waitUntil(lambda: not panel.cam_maps.busy, timeout=30_000)
    assert "Grad-CAM" in label.toolTip()
    panel.cam_controls.show_check.setChecked(False)
    plain = pixels_of(label.pixmap())
    assert (plain == np.array([220, 30, 30])).all(axis=-1).mean() > 0.9


def test_without_grad_cam_the_toggle_says_what_to_install(panel, monkeypatch) -> None:
    import studio.ui.widgets.evaluate_cam as cam

    monkeypatch.setattr(cam, "grad_cam_installed", lambda: False)
    panel.cam_controls.show_check.setChecked(True)
    assert not panel.cam_controls.shown
    text = panel.status_label.text()
    assert "pip install 'finetune-studio[explain]'" in text and text.count(".") <= 3


def test_a_run_that_cannot_be_loaded_is_one_sentence(panel, qtbot, tmp_path: Path) -> None:
    image = tmp_path / "a.png"
    Image.new("RGB", (20, 20), (1, 2, 3)).save(image)
    evaluation = Evaluation(["a", "b"], [str(image)], [0], np.array([[0.2, 0.8]]),
                            run_dir=str(tmp_path / "gone"), checkpoint="best")
    panel.show_evaluation(evaluation)
    with qtbot.waitSignal(panel.cam_maps.failed, timeout=10_000):
        panel.cam_controls.show_check.setChecked(True)
        panel.gallery_model.index(0, 0).data(Qt.ItemDataRole.DecorationRole)
    assert "No class-activation map could be made" in panel.status_label.text()
    assert "does not exist" in panel.status_label.text()


def test_the_predictor_cache_keys_by_the_checkpoint_the_engine_names(trained_run: Path,
                                                                      tmp_path: Path) -> None:
    import os
    import shutil

    from studio.engine.runs import RunPaths
    from studio.ui.predictors import PredictorCache

    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    cache = PredictorCache(keep=2, device="cpu")
    assert not cache.loaded(str(run), "best")
    first = cache.predictor(str(run), "best")
    assert cache.loaded(str(run), "best") and cache.predictor(str(run), "best") is first
    assert cache.explainer(str(run), "best") is cache.explainer(str(run), "best")
    best = RunPaths(run).checkpoint("best")
    stamp = best.stat().st_mtime_ns + 10**9
    os.utime(best, ns=(stamp, stamp))  # a resumed run rewrote it
    assert not cache.loaded(str(run), "best")
    assert cache.predictor(str(run), "best") is not first
    cache.predictor(str(run), "last")
    assert len(cache) == 2  # the oldest, the checkpoint before it was rewritten, went
