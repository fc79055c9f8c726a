"""BackbonePanel and ZooTableModel as a user meets them: search, pick, choose weights and head.

torch hub's cache is pointed at an empty tmp folder, so "pretrained weights are not cached" is
the deterministic starting point and nothing is ever downloaded.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from PySide6.QtCore import QPoint, QSortFilterProxyModel, Qt
from PySide6.QtTest import QAbstractItemModelTester
from PySide6.QtWidgets import (
    QComboBox,
    QDoubleSpinBox,
    QLabel,
    QLineEdit,
    QRadioButton,
    QSpinBox,
    QTableView,
)

from studio.engine.backbones import all_backbones, hub_cache_path, resolve_weights
from studio.engine.config import HeadConfig, ModelConfig, RunConfig
from studio.ui.models.zoo import COLUMNS, NAME_ROLE, SORT_ROLE, ZooTableModel
from studio.ui.project import ProjectModel
from studio.ui.widgets.backbone_panel import BackbonePanel


@pytest.fixture
def hub_dir(tmp_path: Path) -> Iterator[Path]:
    """An empty torch hub cache for the test; the previous one is restored afterwards."""
    previous = torch.hub.get_dir()
    folder = tmp_path / "hub"
    torch.hub.set_dir(str(folder))
    yield folder
    torch.hub.set_dir(previous)


@pytest.fixture
def project() -> ProjectModel:
    return ProjectModel(RunConfig())


@pytest.fixture
def panel(qtbot, project: ProjectModel, hub_dir: Path) -> BackbonePanel:
    widget = BackbonePanel(project)
    qtbot.addWidget(widget)
    widget.resize(1000, 700)
    widget.show()
    return widget


def child(panel: BackbonePanel, kind: type, name: str):
    widget = panel.findChild(kind, name)
    assert widget is not None, name
    return widget


def shown_names(table: QTableView) -> list[str]:
    model = table.model()
    return [model.index(row, 0).data(NAME_ROLE) for row in range(model.rowCount())]


def click(qtbot, radio: QRadioButton) -> None:
    """Click the radio button on its indicator, where a user would."""
    qtbot.mouseClick(radio, Qt.MouseButton.LeftButton, pos=QPoint(8, radio.height() // 2))


def current_name(table: QTableView) -> str | None:
    index = table.currentIndex()
    return index.data(NAME_ROLE) if index.isValid() else None


# -- the zoo model --------------------------------------------------------------------------


def test_zoo_model_passes_qt_model_tester(qtbot) -> None:
    model = ZooTableModel()
    proxy = QSortFilterProxyModel()
    proxy.setSourceModel(model)
    proxy.setSortRole(SORT_ROLE)
    testers = [QAbstractItemModelTester(m, QAbstractItemModelTester.FailureReportingMode.Fatal)
               for m in (model, proxy)]
    proxy.sort(2, Qt.SortOrder.DescendingOrder)
    proxy.setFilterFixedString("resnet")
    assert testers and model.rowCount() == len(all_backbones())


def test_zoo_model_sorts_numbers_as_numbers_and_explains_columns() -> None:
    model = ZooTableModel()
    proxy = QSortFilterProxyModel()
    proxy.setSourceModel(model)
    proxy.setSortRole(SORT_ROLE)
    proxy.sort(COLUMNS.index("Params (M)"), Qt.SortOrder.DescendingOrder)
    params = [proxy.index(row, 2).data(SORT_ROLE) for row in range(proxy.rowCount())]
    assert params == sorted(params, reverse=True)
    biggest = max(all_backbones(), key=lambda info: info.params or 0)
    assert proxy.index(0, 0).data() == biggest.name

    row = model.row_of("resnet18")
    assert model.index(row, 2).data() == "11.7"
    assert model.index(row, 5).data() == "224"
    alignment = Qt.AlignmentFlag(model.index(row, 2).data(Qt.ItemDataRole.TextAlignmentRole))
    assert alignment & Qt.AlignmentFlag.AlignRight
    assert "resnet18" in model.index(row, 0).data(Qt.ItemDataRole.ToolTipRole)
    for column in range(model.columnCount()):
        assert model.headerData(column, Qt.Orientation.Horizontal, Qt.ItemDataRole.ToolTipRole)


# -- choosing a backbone --------------------------------------------------------------------


def test_search_filters_by_name_without_changing_the_choice(panel, project) -> None:
    table = child(panel, QTableView, "zoo_table")
    assert len(shown_names(table)) == len(all_backbones())
    assert current_name(table) == "resnet18"

    child(panel, QLineEdit, "search_edit").setText("EfficientNet_V2")
    assert sorted(shown_names(table)) == ["efficientnet_v2_l", "efficientnet_v2_m",
                                          "efficientnet_v2_s"]
    assert project.config.model.backbone == "resnet18"  # hiding the row chose nothing

    child(panel, QLineEdit, "search_edit").setText("")
    assert current_name(table) == "resnet18"


def test_search_matches_the_family_too(panel) -> None:
    child(panel, QLineEdit, "search_edit").setText("vision_transformer")
    names = shown_names(child(panel, QTableView, "zoo_table"))
    torchvision = [name for name in names if not name.startswith("timm/")]
    assert torchvision and all(name.startswith("vit_") for name in torchvision)


def test_search_finds_timm_models_and_counts_their_parameters(qtbot, panel, project) -> None:
    pytest.importorskip("timm")
    table = child(panel, QTableView, "zoo_table")
    child(panel, QLineEdit, "search_edit").setText("timm/resnet18")
    names = shown_names(table)
    assert "timm/resnet18" in names and "resnet18" not in names
    row = names.index("timm/resnet18")
    params = table.model().index(row, COLUMNS.index("Params (M)"))
    qtbot.waitUntil(lambda: params.data() == "11.7", timeout=20_000)  # "—" until counted
    rect = table.visualRect(table.model().index(row, 0))
    qtbot.mouseClick(table.viewport(), Qt.MouseButton.LeftButton, pos=rect.center())
    assert project.config.model.backbone == "timm/resnet18"
    assert "11.7 M parameters" in child(panel, QLabel, "current_backbone").text()
    assert "timm/resnet18.a1_in1k" in child(panel, QLabel, "weights_status").text()


def test_selecting_a_row_sets_the_backbone(qtbot, panel, project) -> None:
    table = child(panel, QTableView, "zoo_table")
    child(panel, QLineEdit, "search_edit").setText("mobilenet_v3_small")
    rect = table.visualRect(table.model().index(0, 0))
    qtbot.mouseClick(table.viewport(), Qt.MouseButton.LeftButton, pos=rect.center())
    assert project.config.model.backbone == "mobilenet_v3_small"
    assert "mobilenet_v3_small" in child(panel, QLabel, "current_backbone").text()


def test_a_config_change_selects_the_backbone_row(panel, project) -> None:
    changes: list[object] = []
    project.config_changed.connect(changes.append)
    project.update("model", backbone="vgg11")
    assert current_name(child(panel, QTableView, "zoo_table")) == "vgg11"
    assert len(changes) == 1  # selecting the row to show the config wrote nothing back


# -- weights --------------------------------------------------------------------------------


def test_none_sets_weights_none(qtbot, panel, project) -> None:
    click(qtbot, child(panel, QRadioButton, "scratch_radio"))
    assert project.config.model.weights == "none"
    click(qtbot, child(panel, QRadioButton, "pretrained_radio"))
    assert project.config.model.weights == "default"


def test_uncached_pretrained_weights_say_where_to_put_them(panel, project, hub_dir) -> None:
    weights = resolve_weights("resnet18", "default")
    expected = hub_cache_path(weights)
    assert expected.is_relative_to(hub_dir)
    status = child(panel, QLabel, "weights_status")
    assert "Not cached" in status.text()
    assert str(expected) in status.text() and weights.url in status.text()
    assert status.textInteractionFlags() & Qt.TextInteractionFlag.TextSelectableByMouse

    expected.parent.mkdir(parents=True)
    expected.write_bytes(b"pretend weights")
    project.update("model", backbone="resnet18", weights="none")
    project.update("model", weights="default")
    assert status.text().startswith("Pretrained weights are cached")
    assert str(expected) in status.text()


def test_a_missing_local_file_is_named_in_red(qtbot, panel, project, tmp_path) -> None:
    click(qtbot, child(panel, QRadioButton, "local_radio"))
    path_edit = child(panel, QLineEdit, "weights_path_edit")
    assert path_edit.isEnabled()
    assert project.config.model.weights == "default"  # nothing chosen yet

    missing = tmp_path / "nope.pth"
    path_edit.setText(str(missing))
    qtbot.keyClick(path_edit, Qt.Key.Key_Return)
    assert project.config.model.weights == str(missing)
    status = child(panel, QLabel, "weights_status")
    assert "does not exist" in status.text() and str(missing) in status.text()
    assert "#c62828" in status.styleSheet()

    missing.write_bytes(b"x")
    project.update("model", weights="none")
    project.update("model", weights=str(missing))
    assert "will be read from" in status.text()


def test_a_project_with_a_local_file_shows_it(qtbot, project, hub_dir, tmp_path) -> None:
    path = tmp_path / "mine.safetensors"
    project.set_config(RunConfig(model=ModelConfig(backbone="resnet34", weights=str(path))))
    panel = BackbonePanel(project)
    qtbot.addWidget(panel)
    assert child(panel, QRadioButton, "local_radio").isChecked()
    assert child(panel, QLineEdit, "weights_path_edit").text() == str(path)
    assert current_name(child(panel, QTableView, "zoo_table")) == "resnet34"


# -- head and image size --------------------------------------------------------------------


def test_mlp_head_enables_its_fields_and_updates_the_config(panel, project) -> None:
    combo = child(panel, QComboBox, "head_combo")
    hidden = child(panel, QSpinBox, "hidden_spin")
    dropout = child(panel, QDoubleSpinBox, "dropout_spin")
    assert not hidden.isEnabled() and not dropout.isEnabled()

    combo.setCurrentIndex(combo.findData("mlp"))
    assert hidden.isEnabled() and dropout.isEnabled()
    hidden.setValue(256)
    dropout.setValue(0.35)
    assert project.config.model.head == HeadConfig(kind="mlp", hidden=256, dropout=0.35)

    project.update("model", head=HeadConfig())  # e.g. a project opened
    assert combo.currentData() == "linear" and not hidden.isEnabled()


def test_image_size_from_weights_or_pixels(panel, project) -> None:
    spin = child(panel, QSpinBox, "image_size_spin")
    assert spin.text() == "from weights"
    spin.stepBy(1)  # up from "from weights" lands on the backbone's own size
    assert project.config.data.image_size == 224
    spin.setValue(160)
    assert project.config.data.image_size == 160
    spin.setValue(0)
    assert project.config.data.image_size is None


def test_an_impossible_image_size_is_refused_with_a_reason(panel, project) -> None:
    spin = child(panel, QSpinBox, "image_size_spin")
    spin.setValue(8)
    error = child(panel, QLabel, "backbone_error")
    assert error.isVisible()
    assert error.text() == "image_size must be between 16 and 2048 pixels; got 8."
    assert project.config.data.image_size is None
    assert spin.value() == 0  # the widget went back to what the config holds


def test_every_setting_explains_itself(panel) -> None:
    for name in ("search_edit", "zoo_table", "pretrained_radio", "scratch_radio", "local_radio",
                 "weights_path_edit", "weights_browse_button", "head_combo", "hidden_spin",
                 "dropout_spin", "image_size_spin"):
        widget = panel.findChild(object, name)
        assert widget is not None and widget.toolTip(), name


def test_a_size_too_small_for_the_backbone_is_pointed_out(panel, project) -> None:
    error = child(panel, QLabel, "backbone_error")
    project.update("model", backbone="alexnet")  # needs at least 63 pixels
    project.update("data", image_size=32)  # e.g. set on the training page
    assert error.isVisible() and "at least 63 pixels" in error.text()
    project.update("data", image_size=128)
    assert not error.isVisible()
