"""The Backbone page's weights box as a user meets it: Download now with a progress bar and
Cancel, Import weights file…, and Train waiting for uncached weights. A local HTTP server stands
in for download.pytorch.org; torch hub's cache is a tmp folder (the hub_home fixture)."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from PySide6.QtCore import QSettings, Qt
from PySide6.QtWidgets import QFileDialog, QLabel, QProgressBar, QPushButton
from torchvision import models

from studio.engine.config import ModelConfig, RunConfig
from studio.engine.downloads import part_path
from studio.engine.events import Outcome
from studio.ui.downloads import DownloadResult, DownloadState
from studio.ui.main_window import MainWindow
from studio.ui.project import ProjectModel
from studio.ui.widgets.backbone_panel import BackbonePanel

WAIT_MS = 20_000  # a bound on waits for signals, never a sleep


@pytest.fixture
def panel(qtbot, served_weights) -> BackbonePanel:
    project = ProjectModel(RunConfig(model=ModelConfig(backbone="squeezenet1_1")))
    widget = BackbonePanel(project)
    qtbot.addWidget(widget)
    widget.show()
    return widget


def child(panel: BackbonePanel, kind: type, name: str):
    widget = panel.findChild(kind, name)
    assert widget is not None, name
    return widget


def click(qtbot, panel: BackbonePanel, name: str) -> None:
    button = child(panel, QPushButton, name)
    assert button.isVisible() and button.isEnabled(), name
    qtbot.mouseClick(button, Qt.MouseButton.LeftButton)


def test_download_now_fills_the_bar_and_ends_cached(qtbot, panel, served_weights) -> None:
    status = child(panel, QLabel, "weights_status")
    assert status.text().startswith("Not cached")
    for name in ("download_button", "import_weights_button", "cancel_download_button"):
        assert child(panel, QPushButton, name).toolTip(), name
    states: list[DownloadState] = []
    downloads = panel.weights_box.downloads
    downloads.progressed.connect(states.append)

    with qtbot.waitSignal(downloads.finished, timeout=WAIT_MS) as finished:
        click(qtbot, panel, "download_button")
        assert child(panel, QPushButton, "cancel_download_button").isVisible()
        assert not child(panel, QPushButton, "download_button").isVisible()
    assert finished.args[0].ok
    bar = child(panel, QProgressBar, "download_progress")
    assert bar.maximum() == served_weights.size // 1024 and bar.value() == bar.maximum()
    size = f"{served_weights.size / 1e6:.1f}"
    assert f"{size} of {size} MB · " in bar.format() and bar.format().endswith(" MB/s")
    assert states[-1].done == states[-1].total == served_weights.size
    assert status.text().startswith("Pretrained weights are cached")
    assert str(served_weights.cached) in status.text()
    assert not bar.isVisible() and not child(panel, QPushButton, "download_button").isVisible()


def test_cancel_keeps_the_partial_file(qtbot, panel, served_weights, file_server) -> None:
    file_server.gate = threading.Event()  # the server holds the file after its first 64 KiB
    downloads = panel.weights_box.downloads
    with qtbot.waitSignal(downloads.progressed, timeout=WAIT_MS):
        click(qtbot, panel, "download_button")
    with qtbot.waitSignal(downloads.finished, timeout=WAIT_MS) as finished:
        click(qtbot, panel, "cancel_download_button")
        file_server.gate.set()
    result: DownloadResult = finished.args[0]
    assert result.outcome == "cancelled"
    kept = part_path(served_weights.cached).stat().st_size
    assert 0 < kept < served_weights.size and not served_weights.cached.exists()
    note = child(panel, QLabel, "weights_note")
    assert note.isVisible() and "resumes" in note.text()
    assert child(panel, QPushButton, "download_button").isVisible()
    assert child(panel, QLabel, "weights_status").text().startswith("Not cached")


def test_a_failed_download_is_one_sentence_on_the_page(qtbot, panel, monkeypatch) -> None:
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{probe.getsockname()[1]}/squeezenet1_1-0123abcd.pth"
    monkeypatch.setattr(models.SqueezeNet1_1_Weights.DEFAULT.value, "url", url)
    panel.weights_box.show_status()
    with qtbot.waitSignal(panel.weights_box.downloads.finished, timeout=WAIT_MS):
        click(qtbot, panel, "download_button")
    note = child(panel, QLabel, "weights_note")
    assert note.isVisible() and url in note.text() and "#c62828" in note.styleSheet()
    assert note.text().startswith("Could not download") and note.text().endswith(".")


def import_file(qtbot, panel: BackbonePanel, monkeypatch, path: Path) -> None:
    monkeypatch.setattr(QFileDialog, "getOpenFileName", lambda *args: (str(path), ""))
    importer = panel.weights_box._importer
    with qtbot.waitSignal(importer.running_changed, timeout=WAIT_MS,
                          check_params_cb=lambda running: not running):
        click(qtbot, panel, "import_weights_button")


def test_import_weights_file_makes_them_cached(qtbot, panel, served_weights, monkeypatch,
                                               tmp_path) -> None:
    source = tmp_path / "from-a-usb-stick.pth"
    torch.save(models.squeezenet1_1(weights=None).state_dict(), source)
    import_file(qtbot, panel, monkeypatch, source)
    assert child(panel, QLabel, "weights_status").text().startswith("Pretrained weights are "
                                                                    "cached")
    assert served_weights.cached.read_bytes() == source.read_bytes()
    assert str(served_weights.cached) in child(panel, QLabel, "weights_note").text()


def test_importing_the_wrong_file_says_why(qtbot, panel, monkeypatch, tmp_path) -> None:
    source = tmp_path / "resnet18.pth"
    torch.save(models.resnet18(weights=None).state_dict(), source)
    import_file(qtbot, panel, monkeypatch, source)
    note = child(panel, QLabel, "weights_note")
    assert str(source) in note.text() and "squeezenet1_1" in note.text()
    assert "#c62828" in note.styleSheet()
    assert child(panel, QLabel, "weights_status").text().startswith("Not cached")


# -- Train waits for the weights ------------------------------------------------------------


@pytest.fixture
def one_thread() -> Iterator[None]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the window's thread and the training thread share 2 cores
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def window(qtbot, one_thread: None, tmp_path: Path, served_weights) -> Iterator[MainWindow]:
    settings = QSettings(str(tmp_path / "settings.ini"), QSettings.Format.IniFormat)
    settings.setValue("paths/runs_dir", str(tmp_path / "runs"))
    window = MainWindow(settings=settings)
    qtbot.addWidget(window)
    window.show()
    yield window
    window.stop_and_wait()


def test_train_downloads_uncached_weights_first(qtbot, window, tiny_dataset,
                                                served_weights) -> None:
    project = window.project
    project.update("model", backbone="squeezenet1_1", weights="default")
    project.update("data", image_size=32)
    project.update("train", epochs=1, batch_size=8, workers=0, precision="fp32")
    window.dataset_panel.load_folder(str(tiny_dataset))
    qtbot.waitUntil(lambda: project.scan is not None and project.description is not None
                    and project.description.backbone == "squeezenet1_1"
                    and not window._describer.running, timeout=WAIT_MS)

    with qtbot.waitSignal(window.weights_download.started, timeout=WAIT_MS):
        qtbot.mouseClick(window.training_panel.train_button, Qt.MouseButton.LeftButton)
    assert window.pages.currentIndex() == window.PAGES.index("Backbone")
    assert "Downloading the pretrained weights" in window.training_panel.error_label.text()
    with qtbot.waitSignal(window.session.running_changed, timeout=WAIT_MS):
        pass  # the download ends, and training starts by itself
    assert served_weights.cached.is_file()
    assert window.pages.currentIndex() == window.PAGES.index("Train")
    assert not window.training_panel.error_label.isVisible()
    with qtbot.waitSignal(window.session.finished, timeout=60_000) as finished:
        pass
    assert finished.args[0].outcome is Outcome.COMPLETED, finished.args[0].message
