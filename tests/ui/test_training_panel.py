"""TrainingPanel: settings edit the project, controls follow the run, progress and results read
as sentences."""

from __future__ import annotations

from pathlib import Path

import pytest
from PySide6.QtCore import Qt, QUrl

from studio.engine.config import RunConfig, TrainConfig
from studio.engine.events import BatchEnded, EpochEnded, FitEnded, FitStarted, Outcome
from studio.format import format_duration
from studio.ui import devices
from studio.ui.devices import DeviceInfo
from studio.ui.project import ProjectModel
from studio.ui.widgets import training_progress
from studio.ui.widgets.training_panel import TrainingPanel


@pytest.fixture(autouse=True)
def known_device(monkeypatch) -> None:
    """Skip the torch probe: tests decide what "auto" finds on this machine."""
    monkeypatch.setattr(devices, "_device_info",
                        DeviceInfo("CPU", "fp32", cuda=False, mps=False))


@pytest.fixture
def project() -> ProjectModel:
    return ProjectModel(RunConfig())


@pytest.fixture
def panel(qtbot, project: ProjectModel) -> TrainingPanel:
    widget = TrainingPanel(project)
    qtbot.addWidget(widget)
    widget.show()
    return widget


def fit_started(run_dir: str = "/tmp/run", epochs: int = 10, steps: int = 120) -> FitStarted:
    return FitStarted(run_dir, epochs, 1, steps, 3840, 960, ("a", "b", "c"), "cpu", "fp32",
                      True, 1_000_000, 11_000_000)


def fit_ended(outcome: Outcome, message: str, run_dir: str, done: int = 2) -> FitEnded:
    return FitEnded(outcome, message, done, done or None, 0.873 if done else None, "val_acc",
                    run_dir, 83.0)


def test_editing_epochs_updates_the_project(panel: TrainingPanel, project) -> None:
    panel.widgets["train.epochs"].setValue(7)
    assert project.config.train.epochs == 7
    optimizer = panel.widgets["optim.optimizer"]
    optimizer.setCurrentIndex(optimizer.findData("sgd"))
    assert project.config.optim.optimizer == "sgd"
    panel.widgets["data.image_size"].setValue(96)
    assert project.config.data.image_size == 96
    assert not panel.error_label.isVisible()


def test_config_changes_show_in_the_form_without_echoing_back(panel, project) -> None:
    edits: list[object] = []
    project.config_changed.connect(edits.append)
    config = project.config
    project.set_config(config.replace(train=TrainConfig(epochs=42, seed=5)))
    assert panel.widgets["train.epochs"].value() == 42 and panel.widgets["train.seed"].value() == 5
    assert len(edits) == 1  # the form did not write the value back as a second edit


def test_an_invalid_value_shows_a_reason_and_changes_nothing(panel, project) -> None:
    before = project.config
    panel.widgets["data.image_size"].setValue(8)  # below the 16 px the config accepts
    assert project.config == before
    assert panel.error_label.isVisible()
    assert "Image size must be between 16 and 2048" in panel.error_label.text()
    size = panel.widgets["data.image_size"]
    assert size.specialValueText() == size.text()  # "auto"
    panel.widgets["data.image_size"].setValue(64)
    assert not panel.error_label.isVisible()


def test_onecycle_disables_warmup(panel: TrainingPanel) -> None:
    schedule = panel.widgets["optim.schedule"]
    schedule.setCurrentIndex(schedule.findData("onecycle"))
    assert not panel.widgets["optim.warmup_epochs"].isEnabled()


def test_device_hint_says_what_auto_picks(panel: TrainingPanel) -> None:
    assert "CPU" in panel.device_hint.text()
    devices = panel.widgets["train.device"]
    cuda = devices.model().item(devices.findData("cuda"))
    assert not cuda.isEnabled()


def test_probe_devices_names_what_auto_picks() -> None:
    info = devices.probe_devices()
    assert info.auto_device == "CPU" or info.cuda or info.mps
    assert info.auto_precision in ("fp32", "bf16", "fp16")


def test_running_locks_settings_and_offers_stop(panel: TrainingPanel) -> None:
    assert panel.train_button.isEnabled() and not panel.stop_button.isEnabled()
    panel.set_running(True)
    assert not panel.widgets["train.epochs"].isEnabled()
    assert not panel.widgets["train.device"].isEnabled()
    assert not panel.train_button.isEnabled()
    assert panel.stop_button.isEnabled() and panel.pause_button.isEnabled()
    panel.set_running(False)
    assert panel.widgets["train.epochs"].isEnabled() and panel.train_button.isEnabled()
    assert not panel.stop_button.isEnabled()


def test_buttons_and_shortcuts_emit_requests(qtbot, panel: TrainingPanel) -> None:
    with qtbot.waitSignal(panel.train_requested, timeout=1000):
        qtbot.mouseClick(panel.train_button, Qt.MouseButton.LeftButton)
    panel.set_running(True)
    with qtbot.waitSignal(panel.pause_requested, timeout=1000):
        qtbot.mouseClick(panel.pause_button, Qt.MouseButton.LeftButton)
    panel.set_paused(True)
    assert panel.pause_button.text() == "Resume"
    with qtbot.waitSignal(panel.resume_requested, timeout=1000):
        qtbot.mouseClick(panel.pause_button, Qt.MouseButton.LeftButton)
    with qtbot.waitSignal(panel.stop_requested, timeout=1000):
        qtbot.mouseClick(panel.stop_button, Qt.MouseButton.LeftButton)
    with qtbot.waitSignal(panel.stop_requested, timeout=1000):
        panel._shortcuts[2].activated.emit()  # Esc
    panel.set_running(False)
    with qtbot.assertNotEmitted(panel.stop_requested):
        panel._shortcuts[2].activated.emit()  # Esc does nothing when nothing runs


def test_progress_reads_epoch_batch_speed_and_eta(panel: TrainingPanel) -> None:
    panel.on_fit_started(fit_started(epochs=10, steps=120))
    panel.on_batch_ended(BatchEnded(2, 45, 120, 165, 0.5, 0.8, {"head": 1e-3}, 1234.4, 83.0))
    assert panel.progress_label.text() == ("Epoch 2/10 · batch 45/120 · 1,234 img/s · "
                                           "ETA 1:23")
    assert panel.progress_bar.maximum() == 1200 and panel.progress_bar.value() == 165
    assert "1,000,000 of 11,000,000 parameters trainable" in panel.run_info_label.text()
    panel.on_epoch_ended(EpochEnded(2, 0.5, 0.8, 0.4, 0.875, {"head": 1e-3}, 10.0, 1200.0,
                                    True))
    assert "val accuracy 87.5 %" in panel.progress_label.text()
    assert panel.progress_bar.value() == 240


def test_format_duration() -> None:
    assert format_duration(83) == "1:23"
    assert format_duration(3723) == "1:02:03"
    assert format_duration(-5) == "0:00"


def test_completed_run_shows_best_accuracy_and_a_folder_link(panel, tmp_path: Path,
                                                             monkeypatch) -> None:
    opened: list[QUrl] = []
    monkeypatch.setattr(training_progress.QDesktopServices, "openUrl",
                        lambda url: opened.append(url) or True)
    panel.on_fit_started(fit_started(str(tmp_path)))
    panel.on_fit_ended(fit_ended(Outcome.COMPLETED, "completed 2 epochs", str(tmp_path)))
    assert panel.result_label.text().startswith("Training completed: 2 epochs")
    assert "87.3 %" in panel.best_label.text()
    assert "<a href=" in panel.folder_label.text()
    assert not panel.hint_label.isVisible()
    link = QUrl.fromLocalFile(str(tmp_path.resolve())).toString()
    panel.folder_label.linkActivated.emit(link)
    assert [url.toLocalFile() for url in opened] == [str(tmp_path.resolve())]


def test_a_run_whose_ema_weights_were_best_says_so(panel: TrainingPanel, tmp_path: Path) -> None:
    import dataclasses

    ended = fit_ended(Outcome.COMPLETED, "completed 2 epochs", str(tmp_path))
    panel.on_fit_ended(dataclasses.replace(ended, best_weights="ema"))
    assert "87.3 %</b> (epoch 2, EMA weights)" in panel.best_label.text()


def test_the_runs_warnings_stay_in_view_until_the_next_run(panel: TrainingPanel,
                                                             tmp_path: Path) -> None:
    from studio.engine.events import WarningIssued

    panel.on_fit_started(fit_started(str(tmp_path)))
    assert panel.warning_label.isHidden()
    for step in range(1, 6):
        panel.on_warning(WarningIssued(f"CUDA ran out of memory in epoch 1 at step {step}"))
    lines = panel.warning_label.text().splitlines()
    assert lines[-1] == "CUDA ran out of memory in epoch 1 at step 5."
    assert len(lines) == 3 and not panel.warning_label.isHidden()  # the last three
    panel.on_fit_started(fit_started(str(tmp_path)))
    assert panel.warning_label.isHidden()


def test_failed_run_shows_the_reason(panel: TrainingPanel, tmp_path: Path) -> None:
    message = "the dataset folder /data/cats does not exist; choose another folder"
    panel.on_fit_ended(fit_ended(Outcome.FAILED, message, str(tmp_path / "gone"), done=0))
    assert panel.result_label.text() == f"Training failed: {message}."
    assert "(not created)" in panel.folder_label.text()
    assert not panel.best_label.isVisible()


def test_cancelled_run_hints_how_to_resume(panel: TrainingPanel, tmp_path: Path) -> None:
    panel.on_fit_ended(fit_ended(Outcome.CANCELLED, "stopped during epoch 3", str(tmp_path)))
    assert panel.result_label.text() == "Stopped by you after 2 complete epochs."
    assert panel.hint_label.isVisible()
    assert "Resume from epoch 3" in panel.hint_label.text()
    assert f"--resume {tmp_path}" in panel.hint_label.text()


def test_early_stopped_run_says_why(panel: TrainingPanel, tmp_path: Path) -> None:
    panel.on_fit_ended(fit_ended(Outcome.EARLY_STOPPED, "stopped early after epoch 2: val_acc "
                                 "did not improve for 3 epochs", str(tmp_path)))
    assert panel.result_label.text() == ("Stopped early after epoch 2: val accuracy did not "
                                         "improve for 3 epochs.")


def test_every_control_has_a_tooltip(panel: TrainingPanel) -> None:
    from PySide6.QtWidgets import QAbstractButton, QAbstractSpinBox, QComboBox, QTabBar

    controls = panel.findChildren(QAbstractSpinBox) + panel.findChildren(QComboBox) \
        + panel.findChildren(QAbstractButton)
    controls = [c for c in controls if not isinstance(c.parent(), QTabBar)]  # Qt's arrows
    assert controls
    assert all(control.toolTip() for control in controls)


def test_every_field_declaring_a_tab_is_on_it_with_its_label_help_and_limits(
        panel: TrainingPanel, project: ProjectModel) -> None:
    from PySide6.QtWidgets import QDoubleSpinBox, QFormLayout

    from studio.engine.config import all_described
    from studio.engine.fields import TABS

    declared = [item for item in all_described()
                if item.setting.tab and item.section in ("train", "data", "optim")]
    assert {item.key for item in declared} == set(panel.widgets)
    assert [panel.settings_tabs.tabText(i).replace("&&", "&")
            for i in range(panel.settings_tabs.count())] \
        == list(TABS)
    mixup = panel.widgets["train.mixup"]
    assert isinstance(mixup, QDoubleSpinBox)
    assert (mixup.minimum(), mixup.maximum()) == (0.0, 10.0)  # TrainConfig's limits
    assert mixup.toolTip().startswith("Train on blends of two images")
    recipe = panel.settings_tabs.widget(TABS.index("Recipe")).layout()
    assert isinstance(recipe, QFormLayout)
    assert recipe.labelForField(mixup).text() == "MixUp"
    mixup.setValue(0.4)  # an edit reaches the project's config
    assert project.config.train.mixup == pytest.approx(0.4)
    monitor = panel.widgets["train.monitor"]
    assert monitor.itemText(monitor.findData("macro_f1")) == "macro F1"


def test_cache_reports_show_what_is_cached_and_why_not(panel: TrainingPanel) -> None:
    from studio.engine.events import CacheReport

    panel.on_cache_reported(CacheReport("features", "building", images=300))
    assert "once" in panel.progress_label.text()
    panel.on_cache_reported(CacheReport("features", "ready", images=300, megabytes=0.6,
                                        seconds=1.5, detail="cut after flatten"))
    panel.on_cache_reported(CacheReport("images", "off", detail="switched off"))
    lines = panel.cache_label.text().splitlines()
    assert lines == ["Feature cache: on, 300 images, 0.6 MB in 1.5 s (cut after flatten)",
                     "Image cache: off (switched off)"]
    assert panel.widgets["train.feature_cache"].currentData() == "auto"


def test_switching_the_feature_cache_off_edits_the_config(panel: TrainingPanel, project) -> None:
    cache = panel.widgets["train.feature_cache"]
    cache.setCurrentIndex(cache.findData("off"))
    assert project.config.train.feature_cache == "off"
    panel.widgets["train.cache_views"].setValue(4)
    assert project.config.train.cache_views == 4


def test_the_tensorboard_box_switches_the_event_files(panel: TrainingPanel, project) -> None:
    assert panel.widgets["train.tensorboard"].isChecked()  # on by default
    panel.widgets["train.tensorboard"].setChecked(False)
    assert project.config.train.tensorboard is False
    project.update("train", tensorboard=True)
    assert panel.widgets["train.tensorboard"].isChecked()


def test_find_batch_size_needs_a_gpu_and_sets_what_it_found(
        qtbot, panel: TrainingPanel, project: ProjectModel,
        monkeypatch: pytest.MonkeyPatch) -> None:
    import studio.engine.batch_finder as finder
    from studio.ui.devices import DeviceInfo

    panel._show_device_info(DeviceInfo("CPU", "bf16", cuda=False, mps=False))
    assert not panel.find_batch_button.isEnabled()
    assert "needs a CUDA GPU" in panel.find_batch_button.toolTip()

    seen: list[int] = []

    def found(config, scan, *, stop):  # what the engine answers on a GPU
        seen.append(config.train.batch_size)
        return finder.BatchSizeFound(88, 98, (), "found", "batch 98 fits on the GPU; using 88")

    monkeypatch.setattr(finder, "find_batch_size", found)
    panel._show_device_info(DeviceInfo("NVIDIA H200", "bf16", cuda=True, mps=False, gpus=1))
    assert panel.find_batch_button.isEnabled()
    panel.find_batch_button.click()
    qtbot.waitUntil(lambda: project.config.train.batch_size == 88, timeout=10_000)
    assert seen == [32]  # it searched for the project's config
    assert panel.widgets["train.batch_size"].value() == 88
    qtbot.waitUntil(lambda: panel.find_batch_button.text() == "Find")
    assert panel.batch_hint.text() == "Batch 98 fits on the GPU; using 88."
    assert not panel.batch_hint.isHidden()
