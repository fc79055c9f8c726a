"""The real window, driven as a person would: data, freeze, LR, train, stop, save, reopen."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from PySide6.QtCore import QModelIndex, QSettings, Qt
from PySide6.QtWidgets import QMessageBox

from studio.engine.events import FitEnded, Outcome
from studio.resources import sample_dataset
from studio.ui.main_window import MainWindow

BACKBONE = "mobilenet_v3_small"


@pytest.fixture(autouse=True)
def one_thread() -> Iterator[None]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the window's thread and the training thread share 2 cores
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def window(qtbot, tmp_path: Path) -> Iterator[MainWindow]:
    settings = QSettings(str(tmp_path / "settings.ini"), QSettings.Format.IniFormat)
    settings.setValue("paths/runs_dir", str(tmp_path / "runs"))
    window = MainWindow(settings=settings)
    qtbot.addWidget(window)
    window.show()
    yield window
    window.stop_and_wait()


def load_sample(window: MainWindow, qtbot, epochs: int = 1) -> None:
    """What a person does first: pick a small backbone and the sample folder."""
    project = window.project
    project.update("model", backbone=BACKBONE, weights="none")
    project.update("data", image_size=32)
    project.update("train", epochs=epochs, batch_size=16, workers=0, precision="fp32")
    window.dataset_panel.load_folder(str(sample_dataset()))
    qtbot.waitUntil(lambda: project.scan is not None and project.description is not None
                    and project.description.backbone == BACKBONE
                    and project.description.num_classes == 5, timeout=60_000)


def plotted_points(window: MainWindow) -> int:
    total = 0
    for item in window.curves_panel.loss_plot.listDataItems():
        x, _ = item.getData()
        total += 0 if x is None else len(x)
    return total


def test_sample_freeze_lr_train_and_see_curves(window: MainWindow, qtbot) -> None:
    load_sample(window, qtbot)
    assert "5 classes" in window.status_data.text()

    window.steps.setCurrentRow(2)
    qtbot.mouseClick(window.layers_panel.head_only_button, Qt.MouseButton.LeftButton)
    frozen = window.project.frozen()
    head = window.project.description.head
    assert frozen and all(not name.startswith(head + ".") for name in frozen)
    assert "Trainable" in window.layers_panel.summary_label.text()

    window.steps.setCurrentRow(3)
    qtbot.mouseClick(window.lr_panel.stage_button, Qt.MouseButton.LeftButton)
    groups = window.project.config.optim.groups
    assert groups and groups[-1].name == "head"
    model = window.lr_panel.model
    head_row = next(r for r in range(model.rowCount()) if model.index(r, 0).data() == "head")
    lr_column = next(c for c in range(model.columnCount())
                     if "rate" in str(model.headerData(c, Qt.Orientation.Horizontal)).lower())
    assert model.setData(model.index(head_row, lr_column), "0.01", Qt.ItemDataRole.EditRole)
    assert window.project.config.optim.groups[-1].lr == pytest.approx(0.01)
    assert not model.setData(model.index(head_row, lr_column), "-3", Qt.ItemDataRole.EditRole)
    assert window.project.config.optim.groups[-1].lr == pytest.approx(0.01)

    with qtbot.waitSignal(window.session.finished, timeout=120_000) as finished:
        qtbot.mouseClick(window.training_panel.train_button, Qt.MouseButton.LeftButton)
    result: FitEnded = finished.args[0]
    assert result.outcome is Outcome.COMPLETED, result.message
    assert (Path(result.run_dir) / "checkpoints" / "last.pt").is_file()
    qtbot.waitUntil(lambda: plotted_points(window) > 0, timeout=10_000)
    assert window.pages.currentIndex() == window.PAGES.index("Train")
    assert window.training_panel.cache_label.text().startswith("Feature cache: ")


def test_stop_mid_epoch_gives_cancelled(window: MainWindow, qtbot) -> None:
    load_sample(window, qtbot, epochs=5)
    with qtbot.waitSignal(window.session.batch_ended, timeout=60_000):
        qtbot.mouseClick(window.training_panel.train_button, Qt.MouseButton.LeftButton)
    with qtbot.waitSignal(window.session.finished, timeout=60_000) as finished:
        qtbot.mouseClick(window.training_panel.stop_button, Qt.MouseButton.LeftButton)
    assert finished.args[0].outcome is Outcome.CANCELLED
    assert not window.session.is_running


def test_train_without_a_dataset_says_what_to_do(window: MainWindow, qtbot) -> None:
    qtbot.mouseClick(window.training_panel.train_button, Qt.MouseButton.LeftButton)
    assert not window.session.is_running
    assert "dataset" in window.training_panel.error_label.text().lower()


def test_save_and_reopen_a_project(window: MainWindow, qtbot, tmp_path: Path) -> None:
    load_sample(window, qtbot)
    window.project.update("train", epochs=7)
    qtbot.mouseClick(window.layers_panel.head_only_button, Qt.MouseButton.LeftButton)
    path = tmp_path / "digits.toml"
    assert window.save_project(str(path))
    assert "digits.toml" in window.windowTitle()

    settings = QSettings(str(tmp_path / "settings.ini"), QSettings.Format.IniFormat)
    again = MainWindow(settings=settings)
    qtbot.addWidget(again)
    assert again.open_project(str(path))
    assert again.project.config == window.project.config
    assert again.recent_menu.actions()[0].data() == str(path.resolve())
    qtbot.waitUntil(lambda: again.project.scan is not None, timeout=60_000)


def test_a_bad_project_file_is_a_message_not_a_crash(window: MainWindow, qtbot,
                                                     tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    shown: list[str] = []
    monkeypatch.setattr(QMessageBox, "warning",
                        lambda parent, title, text: shown.append(text))
    path = tmp_path / "broken.toml"
    path.write_text("schema_version = 1\n[train]\nepochs = -4\n", encoding="utf-8")
    assert not window.open_project(str(path))
    assert shown and "epochs" in shown[0] and "broken.toml" in shown[0]


def test_closing_during_training_asks_then_stops_cleanly(window: MainWindow, qtbot,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    load_sample(window, qtbot, epochs=5)
    monkeypatch.setattr(QMessageBox, "question",
                        lambda *args, **kwargs: QMessageBox.StandardButton.Yes)
    with qtbot.waitSignal(window.session.batch_ended, timeout=60_000):
        qtbot.mouseClick(window.training_panel.train_button, Qt.MouseButton.LeftButton)
    assert window.close()
    assert not window.session.is_running


def test_a_backbone_change_rebuilds_the_tree_and_keeps_choices(window: MainWindow,
                                                               qtbot) -> None:
    load_sample(window, qtbot)
    window.project.update("freeze", preset="head_only")
    window.project.update("model", backbone="resnet18")
    qtbot.waitUntil(lambda: window.project.description.backbone == "resnet18", timeout=30_000)
    tree = window.layers_panel.model
    assert tree.rowCount(QModelIndex()) > 0
    names = {tree.index(r, 0).data() for r in range(tree.rowCount(QModelIndex()))}
    assert {"conv1", "layer4", "fc"} <= names
    assert window.project.config.freeze.preset == "head_only"


def test_demo_opens_with_the_sample_and_a_small_backbone(qtbot, tmp_path: Path) -> None:
    from studio.ui.app import build_window

    settings = QSettings(str(tmp_path / "settings.ini"), QSettings.Format.IniFormat)
    window = build_window(demo=True, settings=settings)
    qtbot.addWidget(window)
    project = window.project
    qtbot.waitUntil(lambda: project.scan is not None and project.description is not None,
                    timeout=60_000)
    assert project.scan.classes == ("0", "1", "2", "3", "4")
    assert project.config.model.backbone == "resnet18"
    assert project.config.data.root == str(sample_dataset())

    # "Train head only" on the demo trains on cached features: the backbone runs once per image
    project.update("model", weights="none")  # nothing can be downloaded here
    project.update("data", image_size=32)
    project.update("train", epochs=2, workers=0, precision="fp32")
    qtbot.waitUntil(lambda: project.description is not None
                    and project.description.backbone == "resnet18", timeout=60_000)
    window.steps.setCurrentRow(2)
    qtbot.mouseClick(window.layers_panel.head_only_button, Qt.MouseButton.LeftButton)
    qtbot.waitUntil(lambda: window._readiness_problem() is None, timeout=30_000)
    with qtbot.waitSignal(window.session.finished, timeout=120_000) as finished:
        qtbot.mouseClick(window.training_panel.train_button, Qt.MouseButton.LeftButton)
    assert finished.args[0].outcome is Outcome.COMPLETED, finished.args[0].message
    assert window.training_panel.cache_label.text().startswith("Feature cache: on, 300 images")


def test_a_finished_run_exports_to_verified_onnx_from_the_export_page(window: MainWindow,
                                                                      qtbot) -> None:
    load_sample(window, qtbot)
    panel = window.export_panel
    assert not panel.export_button.isEnabled()  # nothing trained yet
    with qtbot.waitSignal(window.session.finished, timeout=120_000) as finished:
        qtbot.mouseClick(window.training_panel.train_button, Qt.MouseButton.LeftButton)
    run_dir = finished.args[0].run_dir
    assert panel.run_edit.text() == run_dir and panel.export_button.isEnabled()

    window.steps.setCurrentRow(window.PAGES.index("Export"))
    onnx = next(b for b in panel.format_group.buttons() if b.property("format") == "onnx")
    onnx.setChecked(True)
    with qtbot.waitSignal(panel.export_finished, timeout=120_000) as exported:
        qtbot.mouseClick(panel.export_button, Qt.MouseButton.LeftButton)
    report = exported.args[0]
    assert report.verified
    assert panel.table.rowCount() == 1 and panel.table.item(0, 6).text() == "✓ yes"
    assert "Verified" in panel.status_label.text()
    assert (Path(report.out_dir) / "export_report.json").is_file()
