"""The learning-rate finder from the learning-rate page: sweep, read the curve, apply."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from PySide6.QtCore import Qt

from studio.engine.config import (
    DataConfig,
    FreezeSpec,
    ModelConfig,
    OptimConfig,
    ParamGroupSpec,
    RunConfig,
    TrainConfig,
)
from studio.engine.data import scan_folder
from studio.ui.models.groups import LR_COLUMN, format_number
from studio.ui.project import ProjectModel
from studio.ui.widgets.lr_finder_dialog import rounded
from studio.ui.widgets.lr_panel import LearningRatePanel

GROUPS = (ParamGroupSpec("body", ("layer4",), 1e-4), ParamGroupSpec("head", ("fc",), 1e-3))


@pytest.fixture(autouse=True)
def one_thread() -> Iterator[None]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the GUI thread and the sweep share 2 cores
    yield
    torch.set_num_threads(threads)


@pytest.fixture()
def project(tiny_dataset: Path) -> ProjectModel:
    config = RunConfig(
        data=DataConfig(root=str(tiny_dataset), image_size=32, augment="none"),
        model=ModelConfig(backbone="resnet18", weights="none"),
        freeze=FreezeSpec(preset="head_only"),
        optim=OptimConfig(lr=1e-3, groups=GROUPS),
        train=TrainConfig(batch_size=8, workers=0, precision="fp32", device="cpu"))
    project = ProjectModel(config)
    project.set_scan(scan_folder(tiny_dataset, config.data.val_fraction, config.train.seed))
    return project


@pytest.fixture()
def panel(qtbot, project: ProjectModel) -> Iterator[LearningRatePanel]:
    panel = LearningRatePanel(project)
    qtbot.addWidget(panel)
    panel.show()
    yield panel
    if panel.finder_dialog is not None:
        finder = panel.finder_dialog.finder
        panel.finder_dialog.close()  # stops a sweep still running
        qtbot.waitUntil(lambda: not finder.task.running, timeout=30_000)


def test_without_a_dataset_the_button_says_why(qtbot) -> None:
    panel = LearningRatePanel(ProjectModel())
    qtbot.addWidget(panel)
    assert not panel.find_button.isEnabled()
    assert "dataset" in panel.find_button.toolTip().lower()


def test_sweep_plot_and_apply_the_suggestion(panel, qtbot, project: ProjectModel) -> None:
    assert panel.find_button.isEnabled()
    qtbot.mouseClick(panel.find_button, Qt.MouseButton.LeftButton)
    dialog = panel.finder_dialog
    assert dialog is not None and dialog.isVisible()
    finder = dialog.finder
    finder.start_lr, finder.end_lr = 1e-4, 1.0
    finder.steps_spin.setValue(12)
    assert not finder.apply_button.isEnabled()
    with qtbot.waitSignal(finder.finder_finished, timeout=120_000) as finished:
        qtbot.mouseClick(finder.run_button, Qt.MouseButton.LeftButton)
    result = finished.args[0]
    xs, ys = finder.curve.getData()
    assert xs is not None and len(xs) == len(result.lrs) == 12
    assert result.ended == "finished"
    assert result.suggestion is not None, finder.result_label.text()
    suggestion = rounded(result.suggestion)
    assert finder.suggestion_line.isVisible()
    assert 10 ** finder.suggestion_line.value() == pytest.approx(suggestion)
    assert "Suggested base learning rate" in finder.result_label.text()
    assert finder.apply_button.isEnabled()

    old = project.config.optim
    qtbot.mouseClick(finder.apply_button, Qt.MouseButton.LeftButton)
    new = project.config.optim
    assert new.lr == pytest.approx(suggestion) and new.lr != old.lr
    factor = new.lr / old.lr
    assert [g.lr for g in new.groups] == pytest.approx([g.lr * factor for g in old.groups])
    assert [g.name for g in new.groups] == ["body", "head"]
    assert panel.lr_edit.text() == format_number(suggestion)
    shown = [panel.model.index(row, LR_COLUMN).data() for row in range(len(new.groups))]
    assert shown == [format_number(g.lr) for g in new.groups]  # the groups table follows


def test_stop_keeps_the_curve_so_far(panel, qtbot) -> None:
    finder = panel.open_finder().finder
    finder.steps_spin.setValue(1000)
    with qtbot.waitSignal(finder.task.progressed, timeout=120_000):
        qtbot.mouseClick(finder.run_button, Qt.MouseButton.LeftButton)
    assert finder.stop_button.isEnabled() and not finder.run_button.isEnabled()
    with qtbot.waitSignal(finder.finder_finished, timeout=60_000) as finished:
        qtbot.mouseClick(finder.stop_button, Qt.MouseButton.LeftButton)
    result = finished.args[0]
    assert result.ended == "stopped" and 1 <= len(result.lrs) < 1000
    assert finder.result_label.text().startswith(f"Stopped after {len(result.lrs)} steps")
    assert finder.run_button.isEnabled()


def test_a_model_that_cannot_be_built_is_a_sentence(panel, qtbot,
                                                    project: ProjectModel) -> None:
    project.update("model", weights="missing-file.pth")
    finder = panel.open_finder().finder
    with qtbot.waitSignal(finder.task.failed, timeout=60_000):
        qtbot.mouseClick(finder.run_button, Qt.MouseButton.LeftButton)
    assert finder.error_label.isVisible()
    text = finder.error_label.text()
    assert text.endswith(".") and "\n" not in text
    assert finder.run_button.isEnabled()
