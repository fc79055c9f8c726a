"""The layer tree: a faithful mirror of the freeze spec, presets, context menu, filter."""

from __future__ import annotations

import pytest
from PySide6.QtCore import QModelIndex, Qt
from PySide6.QtTest import QAbstractItemModelTester

from studio.engine.backbones import ModelDescription, describe_model
from studio.engine.config import FreezeSpec, ModelConfig
from studio.engine.params import is_under
from studio.ui.models.param_tree import FULL_NAME_ROLE, ParamTreeModel
from studio.ui.project import ProjectModel
from studio.ui.widgets.layers_panel import PLACEHOLDER, LayersPanel

CHECK = Qt.ItemDataRole.CheckStateRole


@pytest.fixture()
def project(described_project: ProjectModel) -> ProjectModel:
    return described_project


@pytest.fixture()
def panel(qtbot, project: ProjectModel) -> LayersPanel:
    panel = LayersPanel(project)
    qtbot.addWidget(panel)
    panel.resize(900, 600)
    panel.show()
    return panel


def trainable_names(project: ProjectModel) -> set[str]:
    assert project.description is not None
    return set(project.description.names) - project.frozen()


def visible_names(panel: LayersPanel, parent: QModelIndex | None = None) -> list[str]:
    parent = parent or QModelIndex()
    names = []
    for row in range(panel.proxy.rowCount(parent)):
        index = panel.proxy.index(row, 0, parent)
        names.append(index.data(FULL_NAME_ROLE))
        names += visible_names(panel, index)
    return names


def test_tree_model_passes_the_model_tester_through_resets_and_edits(qtbot, resnet18):
    project = ProjectModel()
    model = ParamTreeModel(project)
    QAbstractItemModelTester(model, QAbstractItemModelTester.FailureReportingMode.Fatal)
    assert model.rowCount() == 0
    project.set_description(resnet18)
    assert model.rowCount() == 7  # conv1 bn1 layer1..4 fc
    assert model.setData(model.index_of("layer1"), Qt.CheckState.Unchecked, CHECK)
    assert model.setData(model.index_of("layer1.0.conv1.weight"), Qt.CheckState.Checked, CHECK)
    project.set_freeze(FreezeSpec(preset="head_only"))
    project.set_description(describe_model(ModelConfig(backbone="mobilenet_v3_small"), 3))
    project.set_description(None)
    assert model.rowCount() == 0


def test_unticking_a_module_freezes_its_leaves_and_its_parent_shows_mixed(project):
    model = ParamTreeModel(project)
    layer1 = model.index_of("layer1")
    block = model.index_of("layer1.0")
    assert model.setData(block, Qt.CheckState.Unchecked, CHECK)
    assert all(not n.startswith("layer1.0.") for n in trainable_names(project))
    assert {n for n in project.frozen()} == {n for n in project.description.names
                                             if n.startswith("layer1.0.")}
    assert block.data(CHECK) == Qt.CheckState.Unchecked
    assert layer1.data(CHECK) == Qt.CheckState.PartiallyChecked
    assert model.index_of("layer1.1").data(CHECK) == Qt.CheckState.Checked
    # ticking the half-checked parent trains everything under it again
    assert model.setData(layer1, Qt.CheckState.Checked, CHECK)
    assert project.frozen() == frozenset()
    assert layer1.data(CHECK) == Qt.CheckState.Checked


def test_frozen_rows_look_frozen(project):
    model = ParamTreeModel(project)
    project.set_freeze(FreezeSpec(preset="head_only"))
    frozen, trained = model.index_of("conv1"), model.index_of("fc")
    assert frozen.data(Qt.ItemDataRole.ForegroundRole) is not None
    assert frozen.data(Qt.ItemDataRole.FontRole).italic()
    assert trained.data(Qt.ItemDataRole.ForegroundRole) is None
    assert model.index_of("conv1.weight", 1).data() == "64×3×7×7"
    assert model.index_of("layer4", 2).data() == "8,393,728"


def test_space_on_a_row_toggles_it_through_the_view(qtbot, panel, project):
    index = panel.proxy.mapFromSource(panel.model.index_of("layer3"))
    panel.tree.setCurrentIndex(index)
    panel.tree.setFocus()
    qtbot.keyClick(panel.tree, Qt.Key.Key_Space)
    assert all(is_under(n, "layer3") for n in project.frozen())
    assert len(project.frozen()) > 0


def test_train_head_only_leaves_only_the_head_trainable(qtbot, panel, project):
    assert panel.summary_label.text() == \
        "Trainable 11,178,051 of 11,178,051 parameters (100.0 %)"
    qtbot.mouseClick(panel.head_only_button, Qt.MouseButton.LeftButton)
    assert trainable_names(project) == {"fc.weight", "fc.bias"}
    assert project.config.freeze.preset == "head_only"
    assert panel.summary_label.text().startswith("Trainable 1,539 of 11,178,051 parameters")
    qtbot.mouseClick(panel.train_all_button, Qt.MouseButton.LeftButton)
    assert project.frozen() == frozenset()
    assert "100.0 %" in panel.summary_label.text()


def test_freeze_up_to_here_on_layer2_freezes_conv1_to_layer2(panel, project):
    index = panel.proxy.mapFromSource(panel.model.index_of("layer2"))
    menu = panel.context_menu(index)
    action = next(a for a in menu.actions() if a.text().startswith("Freeze up to here"))
    action.trigger()
    expected = {n for n in project.description.names
                if n.split(".")[0] in ("conv1", "bn1", "layer1", "layer2")}
    assert project.frozen() == expected
    assert project.config.freeze == FreezeSpec(preset="up_to", up_to="layer2")
    # "Train this" on one block of layer2 trains just that block
    block = panel.proxy.mapFromSource(panel.model.index_of("layer2.1"))
    next(a for a in panel.context_menu(block).actions() if a.text() == "Train this").trigger()
    assert {n for n in trainable_names(project) if n.startswith("layer2")} == \
        {n for n in project.description.names if n.startswith("layer2.1.")}


def test_filter_shows_only_matching_rows_and_opens_them(panel):
    panel.set_filter("LAYER4.1")  # case-insensitive
    names = visible_names(panel)
    assert "layer4.1.conv1.weight" in names
    assert set(names) - {"layer4"} == {n for n in names if n.startswith("layer4.1")}
    assert not any(n.startswith(("layer3", "fc", "layer4.0")) for n in names)
    leaf = panel.proxy.mapFromSource(panel.model.index_of("layer4.1.bn2.bias"))
    assert leaf.isValid() and panel.tree.isExpanded(leaf.parent())
    panel.set_filter("")
    assert len(visible_names(panel)) == len(panel.model.description.names) + \
        sum(1 for _ in _modules(panel.model.description))


def test_typing_in_the_filter_box_filters_after_a_pause(qtbot, panel):
    qtbot.keyClicks(panel.filter_edit, "fc.b")
    qtbot.waitUntil(lambda: visible_names(panel) == ["fc", "fc.bias"], timeout=2000)


def _modules(description: ModelDescription):
    stack = list(description.tree.children)
    while stack:
        node = stack.pop()
        if not node.is_leaf:
            yield node
        stack.extend(node.children)


def test_another_backbone_keeps_the_choices_that_still_apply(panel, project):
    project.set_freeze(FreezeSpec(preset="head_only"))
    project.set_description(describe_model(ModelConfig(backbone="mobilenet_v3_small"), 3))
    assert trainable_names(project) == {"classifier.3.weight", "classifier.3.bias"}
    assert panel.model.index_of("features").data(CHECK) == Qt.CheckState.Unchecked
    assert panel.summary_label.text().startswith("Trainable 3,075 of 1,520,931")
    # a choice by name carries over where the name exists …
    project.set_description(describe_model(ModelConfig(backbone="resnet18"), 3))
    panel.train_all_button.click()
    panel.model.set_trainable([panel.model.index_of("layer1")], False)
    project.set_description(describe_model(ModelConfig(backbone="resnet34"), 3))
    assert project.frozen() == {n for n in project.description.names if is_under(n, "layer1")}
    assert "layer1.2.conv1.weight" in project.frozen()  # resnet34 has a third block
    # … and is dropped quietly where it does not
    project.set_description(describe_model(ModelConfig(backbone="mobilenet_v3_small"), 3))
    assert project.frozen() == frozenset()
    assert panel.error_label.isHidden()


def test_placeholder_until_a_model_is_described_and_bn_checkbox_edits_the_spec(qtbot):
    project = ProjectModel()
    panel = LayersPanel(project)
    qtbot.addWidget(panel)
    assert panel.stack.currentWidget() is panel.placeholder
    assert panel.placeholder.text() == PLACEHOLDER
    panel.bn_check.setChecked(False)
    assert project.config.freeze.bn_frozen is False
    project.set_description(describe_model(ModelConfig(backbone="mobilenet_v3_small"), 3))
    assert panel.stack.currentIndex() == 1
    panel.head_only_button.click()
    assert project.config.freeze == FreezeSpec(preset="head_only", bn_frozen=False)


def test_a_freeze_spec_that_does_not_fit_shows_a_sentence(qtbot, panel, project):
    project.set_freeze(FreezeSpec(freeze=("transformer.*",)))
    assert panel.error_label.isVisibleTo(panel)
    assert "transformer.*" in panel.error_label.text()
    panel.train_all_button.click()
    assert not panel.error_label.isVisibleTo(panel)


def test_every_control_has_a_tooltip(panel):
    for widget in (panel.filter_edit, panel.head_only_button, panel.train_all_button,
                   panel.bn_check, panel.tree, panel.summary_label):
        assert widget.toolTip()
    menu = panel.context_menu(panel.proxy.index(0, 0))
    assert all(a.toolTip() for a in menu.actions() if not a.isSeparator())
