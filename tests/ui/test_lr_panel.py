"""Learning rates: base fields, the group table and its refusals, presets, unfreezing stages."""

from __future__ import annotations

import pytest
from PySide6.QtCore import Qt
from PySide6.QtTest import QAbstractItemModelTester
from PySide6.QtWidgets import QLineEdit

from studio.engine.config import ParamGroupSpec
from studio.ui.models.groups import (
    LR_COLUMN,
    NAME_COLUMN,
    NUMEL_ROLE,
    PATTERNS_COLUMN,
    GroupTableModel,
    format_number,
)
from studio.ui.project import ProjectModel
from studio.ui.widgets.lr_panel import LearningRatePanel

STAGES = ["stem", "layer1", "layer2", "layer3", "layer4", "head"]


@pytest.fixture()
def project(described_project: ProjectModel) -> ProjectModel:
    return described_project


@pytest.fixture()
def panel(qtbot, project: ProjectModel) -> LearningRatePanel:
    panel = LearningRatePanel(project)
    qtbot.addWidget(panel)
    panel.resize(900, 600)
    panel.show()
    return panel


def column(model: GroupTableModel, col: int, role=Qt.ItemDataRole.DisplayRole) -> list:
    return [model.index(row, col).data(role) for row in range(model.rowCount())]


def open_editors(panel: LearningRatePanel) -> list[QLineEdit]:
    return [e for e in panel.table.findChildren(QLineEdit) if e.isVisible()]


def test_group_model_passes_the_model_tester(qtbot, resnet18):
    project = ProjectModel()
    model = GroupTableModel(project)
    QAbstractItemModelTester(model, QAbstractItemModelTester.FailureReportingMode.Fatal)
    assert column(model, NAME_COLUMN) == ["default"]
    project.set_description(resnet18)
    panel = LearningRatePanel(project)
    qtbot.addWidget(panel)
    panel.stage_button.click()
    panel.discriminative_button.click()
    assert model.setData(model.index(0, LR_COLUMN), "1e-5")
    assert not model.setData(model.index(0, LR_COLUMN), "-1")
    panel.one_group_button.click()
    project.set_description(None)
    assert model.rowCount() == 1


def test_group_by_stage_counts_add_up_to_the_model(panel, project, resnet18):
    panel.stage_button.click()
    model = panel.model
    assert [g.name for g in project.config.optim.groups] == STAGES
    assert column(model, NAME_COLUMN) == [*STAGES, "default"]
    counts = column(model, 4, NUMEL_ROLE)
    assert sum(counts) == resnet18.total
    assert counts[-1] == 0  # nothing left for the default group
    assert counts[STAGES.index("layer4")] == 8_393_728
    assert column(model, PATTERNS_COLUMN)[0] == "conv1, bn1"
    assert panel.groups_hint.isHidden()


def test_discriminative_keeps_the_head_at_base_and_divides_earlier_groups(panel, project):
    panel.factor_spin.setValue(2.0)
    panel.discriminative_button.click()  # no groups yet: the stage grouping is used
    base = project.config.optim.lr
    lrs = {g.name: g.lr for g in project.config.optim.groups}
    assert list(lrs) == STAGES
    assert lrs["head"] == pytest.approx(base)
    assert lrs["layer4"] == pytest.approx(base / 2)
    assert lrs["stem"] == pytest.approx(base / 2 ** 5)
    assert column(panel.model, LR_COLUMN)[-2] == format_number(base)


def test_bad_learning_rates_in_a_cell_are_refused_with_a_reason(qtbot, panel, project):
    panel.stage_button.click()
    before = project.config
    model = panel.model
    for text, words in (("-1", "negative"), ("abc", "not a number"), ("nan", "finite"),
                        ("20", "at most")):
        with qtbot.waitSignal(model.edit_refused) as refused:
            assert not model.setData(model.index(1, LR_COLUMN), text)
        assert words in refused.args[0]
        assert refused.args[0].endswith(".")
        assert project.config == before
        assert panel.refusal_label.text() == refused.args[0]
        assert panel.refusal_label.isVisibleTo(panel)
    assert model.setData(model.index(1, LR_COLUMN), "2.5e-4")
    assert project.config.optim.groups[1].lr == 2.5e-4
    assert not panel.refusal_label.isVisibleTo(panel)


def test_typing_into_a_cell_editor_goes_through_the_same_checks(qtbot, panel, project):
    panel.stage_button.click()
    index = panel.model.index(5, LR_COLUMN)  # head
    for text, expected in (("abc", 1e-3), ("3e-4", 3e-4)):
        panel.table.setCurrentIndex(index)
        panel.table.edit(index)
        (editor,) = open_editors(panel)
        editor.selectAll()
        qtbot.keyClicks(editor, text)
        qtbot.keyClick(editor, Qt.Key.Key_Return)
        qtbot.waitUntil(lambda: not open_editors(panel))
        assert project.config.optim.groups[5].lr == pytest.approx(expected)
    assert "3e-04" in column(panel.model, LR_COLUMN)


def test_patterns_and_names_are_checked(qtbot, panel, project):
    panel.stage_button.click()
    before = project.config
    model = panel.model
    refusals = []
    model.edit_refused.connect(refusals.append)
    assert not model.setData(model.index(0, PATTERNS_COLUMN), "conv1, transformer")
    assert "“transformer” matches no parameter" in refusals[-1]
    assert not model.setData(model.index(0, PATTERNS_COLUMN), " , ")
    assert not model.setData(model.index(0, NAME_COLUMN), "layer1")  # duplicate
    assert "already a group" in refusals[-1]
    assert not model.setData(model.index(0, NAME_COLUMN), "  ")
    assert not model.setData(model.index(0, NAME_COLUMN), "default")
    assert not model.setData(model.index(0, 3), "2")  # weight decay above 1
    assert len(refusals) == 6 and project.config == before
    assert not model.setData(model.index(6, NAME_COLUMN), "x")  # the default row is read-only
    assert model.setData(model.index(0, PATTERNS_COLUMN), "conv1, bn1, layer1")
    assert project.config.optim.groups[0].patterns == ("conv1", "bn1", "layer1")
    assert model.setData(model.index(0, 3), "0.05")
    assert project.config.optim.groups[0].weight_decay == 0.05
    assert model.setData(model.index(0, 3), "")
    assert project.config.optim.groups[0].weight_decay is None


def test_base_fields_refuse_bad_values_next_to_the_field(qtbot, panel, project):
    before = project.config
    for text in ("abc", "-1", "0", "inf"):
        panel.lr_edit.setText(text)
        panel.lr_edit.editingFinished.emit()
        assert panel.lr_error.isVisibleTo(panel) and panel.lr_error.text()
        assert project.config == before
    panel.lr_edit.setText("3e-4")
    panel.lr_edit.editingFinished.emit()
    assert project.config.optim.lr == 3e-4
    assert not panel.lr_error.isVisibleTo(panel)
    panel.decay_edit.setText("5")
    panel.decay_edit.editingFinished.emit()
    assert "at most 1" in panel.decay_error.text() and project.config.optim.weight_decay == 1e-4
    panel.decay_edit.setText("0.05")
    panel.decay_edit.editingFinished.emit()
    assert project.config.optim.weight_decay == 0.05


def test_add_and_remove_groups(panel, project):
    panel.add_button.click()
    groups = project.config.optim.groups
    assert len(groups) == 1 and groups[0].patterns == ("conv1",)
    assert groups[0].lr == project.config.optim.lr
    panel.add_button.click()
    assert project.config.optim.groups[1].patterns == ("bn1",)
    panel.table.selectRow(0)
    panel.remove_button.click()
    assert [g.patterns for g in project.config.optim.groups] == [("bn1",)]
    panel.table.selectRow(1)  # the default row cannot go
    panel.remove_button.click()
    assert len(project.config.optim.groups) == 1
    assert "default row" in panel.refusal_label.text()


def test_progressive_unfreezing_writes_stages_and_starts_with_the_head(panel, project):
    panel.every_spin.setValue(2)
    panel.first_spin.setValue(3)
    panel.progressive_box.setChecked(True)
    config = project.config
    assert config.freeze.preset == "head_only"
    assert [s.epoch for s in config.stages] == [3, 5, 7, 9, 11]
    assert config.stages[0].freeze.unfreeze == ("layer4",)
    assert set(config.stages[-1].freeze.unfreeze) == {"layer4", "layer3", "layer2", "layer1",
                                                      "conv1", "bn1"}
    assert config.optim.groups == ()  # the stage grouping was only used for the schedule
    table = panel.stage_table
    assert table.rowCount() == 6
    assert table.item(0, 2).text() == "1,539"
    assert table.item(1, 1).text() == "+ layer4"
    assert table.item(5, 1).text() == "+ stem"
    assert "start after the last epoch" in panel.stage_hint.text()  # 10 epochs by default
    panel.progressive_box.setChecked(False)
    assert project.config.stages == ()


def test_progressive_unfreezing_follows_custom_groups(qtbot, panel, project):
    project.set_groups([ParamGroupSpec("body", ("conv1", "bn1", "layer1", "layer2"), 1e-4),
                        ParamGroupSpec("top", ("layer3", "layer4"), 5e-4),
                        ParamGroupSpec("head", ("fc",), 1e-3)])
    panel.progressive_box.setChecked(True)
    assert [set(s.freeze.unfreeze) for s in project.config.stages] == [
        {"layer3", "layer4"}, {"layer3", "layer4", "conv1", "bn1", "layer1", "layer2"}]
    assert panel.stage_table.item(1, 1).text() == "+ top"
    # changing the groups under a schedule regenerates it once the change has settled
    panel.model.apply(project.config.optim.groups[1:])
    qtbot.waitUntil(lambda: len(project.config.stages) == 1)
    assert project.config.stages[0].freeze.unfreeze == ("layer3", "layer4")


def test_every_control_has_a_tooltip(panel):
    for widget in (panel.lr_edit, panel.decay_edit, panel.one_group_button, panel.stage_button,
                   panel.discriminative_button, panel.factor_spin, panel.layer_decay_button,
                   panel.layer_decay_spin, panel.add_button,
                   panel.remove_button, panel.table, panel.progressive_box, panel.every_spin,
                   panel.first_spin, panel.stage_table):
        assert widget.toolTip(), widget


def test_progressive_unfreezing_without_groups_below_the_head_is_refused(panel, project):
    project.set_groups([ParamGroupSpec("head", ("fc",), 1e-3)])
    before = project.config
    panel.progressive_box.setChecked(True)
    assert project.config == before
    assert not panel.progressive_box.isChecked()
    assert "Group by stage" in panel.stage_error.text()
    assert panel.stage_error.isVisibleTo(panel)


def test_layer_decay_fills_the_table_with_one_group_per_layer(panel, project):
    panel.layer_decay_spin.setValue(0.5)
    panel.layer_decay_button.click()
    base = project.config.optim.lr
    groups = project.config.optim.groups
    names = ["layer_0", "layer_1", "layer_2", "layer_3", "layer_4", "head"]
    assert [g.name for g in groups] == names
    assert column(panel.model, NAME_COLUMN) == [*names, "default"]
    for depth, group in enumerate(reversed(groups)):
        assert group.lr == pytest.approx(base * 0.5 ** depth)
    assert column(panel.model, LR_COLUMN)[:-1] == [format_number(g.lr) for g in groups]
    assert column(panel.model, PATTERNS_COLUMN)[0] == "conv1, bn1"
    assert panel.layer_decay_spin.toolTip() and panel.layer_decay_button.toolTip()
