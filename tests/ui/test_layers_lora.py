"""LoRA in the layer tree: the third state with its rank, presets, the context menu, the summary,
and what a LoRA run's live figures look like on the base model's rows."""

from __future__ import annotations

import pytest
from PySide6.QtCore import QPersistentModelIndex, Qt
from PySide6.QtTest import QAbstractItemModelTester

from studio.engine.backbones import describe_model
from studio.engine.config import LoraSpec, ModelConfig
from studio.engine.events import LayerStats
from studio.engine.lora import adapter_size
from studio.ui.models.param_tree import GRAD_COLUMN, LORA_COLOUR, LORA_COLUMN, ParamTreeModel
from studio.ui.project import ProjectModel
from studio.ui.widgets.layers_panel import LayersPanel

CHECK = Qt.ItemDataRole.CheckStateRole


@pytest.fixture(scope="module")
def vit():
    return describe_model(ModelConfig(backbone="vit_b_16", weights="none"), 3, 32)


@pytest.fixture()
def panel(qtbot, vit) -> LayersPanel:
    project = ProjectModel()
    project.update("data", image_size=32)
    project.set_description(vit)
    panel = LayersPanel(project)
    qtbot.addWidget(panel)
    panel.resize(1000, 600)
    panel.show()
    return panel


def cell(model: ParamTreeModel, name: str, column: int, role=Qt.ItemDataRole.DisplayRole):
    return model.data(model.index_of(name, column), role)


ATTENTION = "encoder.layers.encoder_layer_0.self_attention"


def test_the_attention_preset_adapts_every_attention_layer_and_freezes_the_rest(
        panel: LayersPanel, vit) -> None:
    model, project = panel.model, panel._project
    QAbstractItemModelTester(model, QAbstractItemModelTester.FailureReportingMode.Fatal)
    assert panel.lora_bar.apply_preset("attention")
    config = project.config
    assert config.freeze.preset == "head_only"
    assert config.lora.targets == tuple(f"encoder.layers.encoder_layer_{i}.self_attention"
                                        for i in range(12))
    assert cell(model, ATTENTION, LORA_COLUMN) == "rank 8"
    assert cell(model, "encoder.layers", LORA_COLUMN) == "12 layers"
    assert cell(model, ATTENTION, 0, CHECK) == Qt.CheckState.Unchecked  # its weights: frozen
    assert cell(model, ATTENTION, 0, Qt.ItemDataRole.ForegroundRole) == LORA_COLOUR
    assert "LoRA rank 8" in cell(model, ATTENTION, 0, Qt.ItemDataRole.ToolTipRole)
    adapters = 12 * adapter_size(vit.model.get_submodule(ATTENTION), 8)
    assert model.adapter_params() == adapters == 12 * 8 * 6 * 768
    head = sum(n for name, n in vit.numel.items() if name.startswith("heads"))
    assert model.counts() == (head + adapters, vit.total + adapters)
    assert panel.summary_label.text() == (
        f"LoRA: 0.4 M of {(vit.total + adapters) / 1e6:.1f} M parameters train "
        f"(12 adapted layers holding 0.4 M)")

    panel.lora_bar.fields["rank"].widget.setValue(4)  # a rank edit: sizes and texts follow
    assert project.config.lora.rank == 4 and cell(model, ATTENTION, LORA_COLUMN) == "rank 4"
    assert model.adapter_params() == adapters // 2

    panel.lora_bar.clear_action.trigger()
    assert not project.config.lora.enabled and model.adapter_params() == 0
    assert cell(model, ATTENTION, LORA_COLUMN) == ""


def test_the_context_menu_adapts_a_module_and_a_tick_ends_its_lora(panel: LayersPanel) -> None:
    model, project = panel.model, panel._project
    block = "encoder.layers.encoder_layer_11"
    index = panel.proxy.mapFromSource(model.index_of(block))
    menu = panel.context_menu(index)
    texts = [a.text() for a in menu.actions()]
    assert "LoRA on this (rank 8)" in texts and "Remove LoRA here" not in texts
    next(a for a in menu.actions() if a.text().startswith("LoRA on")).trigger()
    # the block's attention and its two MLP layers, as one module name in the config
    assert project.config.lora.targets == (block,)
    assert model.lora_layers == {f"{block}.self_attention", f"{block}.mlp.0", f"{block}.mlp.3"}
    assert cell(model, block, LORA_COLUMN) == "3 layers"

    menu = panel.context_menu(panel.proxy.mapFromSource(model.index_of(f"{block}.mlp.3")))
    assert "Remove LoRA here" in [a.text() for a in menu.actions()]
    # ticking one adapted layer trains it fully instead: the others keep their adapters
    assert model.setData(model.index_of(f"{block}.mlp.3"), Qt.CheckState.Checked, CHECK)
    assert model.lora_layers == {f"{block}.self_attention", f"{block}.mlp.0"}
    assert cell(model, f"{block}.mlp.3", 0, CHECK) == Qt.CheckState.Checked
    assert project.config.lora.targets == (f"{block}.self_attention", f"{block}.mlp.0")


def test_a_preset_the_model_lacks_says_so(qtbot, resnet18) -> None:
    project = ProjectModel()
    project.set_description(resnet18)
    panel = LayersPanel(project)
    qtbot.addWidget(panel)
    assert not panel.lora_bar.apply_preset("attention")
    assert "resnet18 has no layer for “LoRA on attention”" in panel.lora_bar.status_label.text()
    assert not project.config.lora.enabled
    # a convolution block can still be adapted from the tree
    assert panel.model.set_lora([QPersistentModelIndex(panel.model.index_of("layer4"))], True)
    assert project.config.lora == LoraSpec(targets=("layer4",))
    assert cell(panel.model, "layer4", LORA_COLUMN) == "5 layers"


def test_live_figures_of_a_lora_run_land_on_the_adapted_layers(panel: LayersPanel) -> None:
    model = panel.model
    panel.lora_bar.apply_preset("attention")
    adapter = f"{ATTENTION}.lora_B.default.weight"
    event = LayerStats(global_step=3, grad_norm={adapter: 3.0, "heads.head.weight": 1.0},
                       update_norm={adapter: 0.4, "heads.head.weight": 0.1},
                       weight_norm={adapter: 40.0, "heads.head.weight": 10.0})
    assert model.set_layer_stats(event)
    assert cell(model, ATTENTION, GRAD_COLUMN) == "3"
    assert cell(model, "heads.head.weight", GRAD_COLUMN) == "1"
    assert cell(model, "encoder.ln", GRAD_COLUMN) == ""  # frozen: no figures
