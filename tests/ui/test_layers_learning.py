"""The Layers tree's live learning columns: filled from LayerStats for trainable rows, empty for
frozen ones, a module shows its parameters together, and the tree keeps its state."""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from PySide6.QtCore import QItemSelectionModel, QSettings, Qt
from PySide6.QtTest import QAbstractItemModelTester

from studio.engine.config import FreezeSpec
from studio.engine.events import FitEnded, FitStarted, LayerStats, Outcome, event_to_line
from studio.resources import sample_dataset
from studio.ui.main_window import MainWindow
from studio.ui.models.learning import format_norm, format_ratio
from studio.ui.models.param_tree import (
    GRAD_COLUMN,
    LOW_RATIO_COLOUR,
    RATIO_COLUMN,
    ParamTreeModel,
)
from studio.ui.process_run import ProcessRun
from studio.ui.project import ProjectModel
from studio.ui.widgets.layers_panel import LayersPanel

CHECK = Qt.ItemDataRole.CheckStateRole
DISPLAY = Qt.ItemDataRole.DisplayRole
LAYER4 = ("layer4.", "fc.")


def stats_for(names: list[str], step: int = 12) -> LayerStats:
    """Made-up but distinct figures per tensor; layer4.0.conv1.weight barely moves."""
    grad, update, weight = {}, {}, {}
    for i, name in enumerate(names, start=1):
        grad[name], weight[name] = 0.01 * i, 1.0 + i
        update[name] = 1e-3 * weight[name]
    update["layer4.0.conv1.weight"] = 1e-6 * weight["layer4.0.conv1.weight"]
    return LayerStats(step, grad, update, weight)


def fit_started() -> FitStarted:
    return FitStarted("run", 1, 1, 10, 40, 10, ("a", "b", "c"), "cpu", "fp32", False, 1, 2)


@pytest.fixture()
def project(described_project: ProjectModel) -> ProjectModel:
    described_project.set_freeze(FreezeSpec(preset="up_to", up_to="layer3"))
    return described_project


@pytest.fixture()
def panel(qtbot, project: ProjectModel) -> LayersPanel:
    panel = LayersPanel(project)
    qtbot.addWidget(panel)
    panel.resize(1000, 700)
    panel.show()
    return panel


def trainable(project: ProjectModel) -> list[str]:
    assert project.description is not None
    return [n for n in project.description.names if n.startswith(LAYER4)]


def cell(model: ParamTreeModel, name: str, column: int, role: int = DISPLAY) -> object:
    return model.index_of(name, column).data(role)


def test_stats_fill_trainable_rows_and_modules_aggregate_and_frozen_rows_stay_empty(
        qtbot, panel: LayersPanel, project: ProjectModel) -> None:
    model = panel.model
    assert panel.tree.isColumnHidden(GRAD_COLUMN) and panel.tree.isColumnHidden(RATIO_COLUMN)
    names = trainable(project)
    event = stats_for(names)
    panel.on_fit_started(fit_started())
    assert not panel.tree.isColumnHidden(GRAD_COLUMN)
    assert cell(model, "fc.weight", GRAD_COLUMN) == ""  # nothing sampled yet
    panel.on_layer_stats(event)

    assert cell(model, "fc.weight", GRAD_COLUMN) == format_norm(event.grad_norm["fc.weight"])
    assert cell(model, "fc.bias", RATIO_COLUMN) == format_ratio(event.update_ratio("fc.bias"))
    assert cell(model, "fc.bias", RATIO_COLUMN) == "1.0e-3"
    under = [n for n in names if n.startswith("layer4.1.")]
    grad = math.sqrt(sum(event.grad_norm[n] ** 2 for n in under))
    ratio = (math.sqrt(sum(event.update_norm[n] ** 2 for n in under))
             / math.sqrt(sum(event.weight_norm[n] ** 2 for n in under)))
    assert cell(model, "layer4.1", GRAD_COLUMN) == format_norm(grad)
    assert cell(model, "layer4.1", RATIO_COLUMN) == format_ratio(ratio)
    assert "over its 6 trainable tensors" in str(cell(model, "layer4.1", RATIO_COLUMN,
                                                       Qt.ItemDataRole.ToolTipRole))
    for frozen in ("conv1", "conv1.weight", "layer1", "layer3.1.bn2.bias"):
        assert cell(model, frozen, GRAD_COLUMN) == cell(model, frozen, RATIO_COLUMN) == ""
    assert cell(model, "layer4.0.conv1.weight", RATIO_COLUMN, Qt.ItemDataRole.ForegroundRole) \
        == LOW_RATIO_COLOUR, "a layer that hardly learns stands out"
    assert cell(model, "fc.weight", RATIO_COLUMN, Qt.ItemDataRole.ForegroundRole) is None
    assert "step 12" in panel.learning_label.text()


def test_a_refresh_keeps_expansion_selection_and_checks_and_touches_two_columns(
        qtbot, panel: LayersPanel, project: ProjectModel) -> None:
    model, tree, proxy = panel.model, panel.tree, panel.proxy
    QAbstractItemModelTester(model, QAbstractItemModelTester.FailureReportingMode.Fatal)
    layer4 = proxy.mapFromSource(model.index_of("layer4"))
    block = proxy.mapFromSource(model.index_of("layer4.1"))
    tree.expand(layer4)
    tree.expand(block)
    tree.collapse(proxy.mapFromSource(model.index_of("layer1")))
    selected = proxy.mapFromSource(model.index_of("layer4.1.conv2.weight"))
    tree.selectionModel().select(selected, QItemSelectionModel.SelectionFlag.ClearAndSelect
                                 | QItemSelectionModel.SelectionFlag.Rows)
    checks = {n: cell(model, n, 0, CHECK) for n in ("layer3", "layer4", "conv1", "fc")}
    columns: set[int] = set()
    model.dataChanged.connect(lambda tl, br, _roles: columns.update(
        range(tl.column(), br.column() + 1)))
    resets: list[object] = []
    model.modelReset.connect(lambda: resets.append(True))

    panel.on_fit_started(fit_started())
    names = trainable(project)
    for step in range(3):
        panel.on_layer_stats(stats_for(names, step))
    assert columns == {GRAD_COLUMN, RATIO_COLUMN} and not resets
    assert tree.isExpanded(layer4) and tree.isExpanded(block)
    assert not tree.isExpanded(proxy.mapFromSource(model.index_of("layer1")))
    assert tree.selectionModel().isRowSelected(selected.row(), selected.parent())
    assert {n: cell(model, n, 0, CHECK) for n in checks} == checks
    assert checks["layer4"] == Qt.CheckState.Checked and checks["layer3"] == Qt.CheckState.Unchecked

    panel.on_fit_ended(FitEnded(Outcome.COMPLETED, "done", 1, 1, 0.5, "val_acc", "run", 1.0))
    assert panel.tree.isColumnHidden(GRAD_COLUMN) and panel.tree.isColumnHidden(RATIO_COLUMN)
    assert cell(model, "fc.weight", GRAD_COLUMN) == "" and model.learning_step is None
    panel.on_fit_started(fit_started())
    assert cell(model, "fc.weight", GRAD_COLUMN) == "", "a new run starts empty"


def test_stats_of_another_model_than_the_trees_leave_the_columns_empty(
        qtbot, panel: LayersPanel, project: ProjectModel) -> None:
    panel.on_fit_started(fit_started())
    panel.on_layer_stats(stats_for(trainable(project)))
    assert panel.model.learning_step == 12
    foreign = stats_for([*trainable(project), "layer4.2.conv1.weight"])  # a resnet34's
    panel.on_layer_stats(foreign)
    assert panel.model.learning_step is None and "another model" in panel.learning_label.text()
    assert cell(panel.model, "fc.weight", GRAD_COLUMN) == ""

    from studio.engine.backbones import describe_model
    from studio.engine.config import ModelConfig

    panel.on_layer_stats(stats_for(trainable(project)))
    project.set_description(describe_model(ModelConfig(backbone="resnet18"), 7))  # new classes
    assert panel.model.learning_step is None
    panel.on_layer_stats(stats_for(trainable(project)))  # same names, but not the run's model
    assert panel.model.learning_step is None


def test_figures_read_as_orders_of_magnitude() -> None:
    assert [format_ratio(v) for v in (1.23e-3, 4.0e-6, 0.052, 0.0, math.inf)] == \
        ["1.2e-3", "4.0e-6", "5.2e-2", "0", "—"]
    assert [format_norm(v) for v in (12.345, 0.0927, 5.2e-3, 0.0, 31_415.9)] == \
        ["12.3", "0.0927", "5.2e-3", "0", "3.1e4"]


def test_a_child_process_line_becomes_the_same_signal(qtbot, tmp_path: Path) -> None:
    run = ProcessRun(["-c", "pass"], str(tmp_path / "run"))
    event = LayerStats(3, {"fc.weight": 0.5}, {"fc.weight": 1e-3}, {"fc.weight": 2.0})
    with qtbot.waitSignal(run.layer_stats_sampled, timeout=1000) as sampled:
        run._on_stdout_line(event_to_line("on_layer_stats", event))
    assert sampled.args == [event]


@pytest.fixture
def window(qtbot, tmp_path: Path) -> Iterator[MainWindow]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    settings = QSettings(str(tmp_path / "settings.ini"), QSettings.Format.IniFormat)
    settings.setValue("paths/runs_dir", str(tmp_path / "runs"))
    window = MainWindow(settings=settings)
    qtbot.addWidget(window)
    window.show()
    yield window
    window.stop_and_wait()
    torch.set_num_threads(threads)


def test_a_real_run_fills_the_layers_tree_and_its_end_hides_the_columns(
        window: MainWindow, qtbot) -> None:
    project = window.project
    project.update("model", backbone="mobilenet_v3_small", weights="none")
    project.update("data", image_size=32)
    project.update("train", epochs=1, batch_size=16, workers=0, precision="fp32")
    window.dataset_panel.load_folder(str(sample_dataset()))
    qtbot.waitUntil(lambda: project.description is not None and project.scan is not None
                    and project.description.backbone == "mobilenet_v3_small"
                    and project.description.num_classes == 5, timeout=60_000)
    project.set_freeze(FreezeSpec(preset="up_to", up_to="features.10"))
    panel, model = window.layers_panel, window.layers_panel.model
    with qtbot.waitSignal(window.session.layer_stats_sampled, timeout=60_000) as sampled:
        window.training_panel.train_requested.emit()
    event: LayerStats = sampled.args[0]
    assert set(event.grad_norm) == {n for n in project.description.names
                                    if n.startswith(("features.11.", "features.12.",
                                                     "classifier."))}
    assert not panel.tree.isColumnHidden(GRAD_COLUMN)
    assert cell(model, "classifier", GRAD_COLUMN) != ""
    assert cell(model, "features.0", GRAD_COLUMN) == ""
    qtbot.waitUntil(lambda: not window.session.is_running, timeout=120_000)
    assert window._last_result is not None
    assert window._last_result.outcome is Outcome.COMPLETED, window._last_result.message
    assert panel.tree.isColumnHidden(GRAD_COLUMN) and model.learning_step is None
