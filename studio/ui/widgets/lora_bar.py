"""LoraBar: the Layers page's LoRA row — presets, rank, alpha and dropout.

The presets adapt what the engine's :func:`~studio.engine.lora.preset_targets` finds (every
attention layer, or every linear layer) and freeze the rest of the backbone, the usual LoRA
recipe; "No LoRA" takes every adapter off. Rank, alpha and dropout are the ``[lora]`` section's
settings (their widgets come from the fields' declarations, as on the Train page). Everything is
an edit of the project's config; the tree shows the result.
"""

from __future__ import annotations

from PySide6.QtWidgets import QHBoxLayout, QLabel, QMenu, QPushButton, QWidget

from studio.engine.config import ConfigError, FreezeSpec, LoraSpec, RunConfig
from studio.engine.fields import described
from studio.engine.lora import PRESETS
from studio.ui.project import ProjectModel
from studio.ui.widgets.form import Field, setting_field, signals_blocked

NO_LORA = "No LoRA"


class LoraBar(QWidget):
    """Presets and the three LoRA settings, editing ``project.config.lora``."""

    def __init__(self, project: ProjectModel, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self._project = project
        self.preset_button = QPushButton("LoRA…")
        self.preset_button.setToolTip(
            "LoRA adapters: train small low-rank matrices beside frozen layers instead of the "
            "layers themselves (a few percent of the parameters); right-click a module in the "
            "tree to adapt just its layers")
        self.menu = QMenu(self.preset_button)
        self.menu.setToolTipsVisible(True)
        self.preset_actions = {}
        for preset, text in PRESETS.items():
            action = self.menu.addAction(text)
            action.setToolTip("Adapt these layers, freeze the rest of the backbone, train the "
                              "head")
            action.triggered.connect(lambda _=False, p=preset: self.apply_preset(p))
            self.preset_actions[preset] = action
        self.menu.addSeparator()
        self.clear_action = self.menu.addAction(NO_LORA)
        self.clear_action.setToolTip("Take every LoRA adapter off (the freeze choices stay)")
        self.clear_action.triggered.connect(self.clear)
        self.preset_button.setMenu(self.menu)
        self.fields: dict[str, Field] = {item.name: setting_field(item)
                                         for item in described(LoraSpec, "lora")}
        self.status_label = QLabel()
        self.status_label.setWordWrap(True)

        row = QHBoxLayout(self)
        row.setContentsMargins(0, 0, 0, 0)
        row.addWidget(self.preset_button)
        for field in self.fields.values():
            label = QLabel(field.label.replace("LoRA ", ""))
            label.setToolTip(field.widget.toolTip())
            row.addWidget(label)
            row.addWidget(field.widget)
            field.edited.connect(self._on_field_edited)
        row.addWidget(self.status_label, 1)
        project.config_changed.connect(self._on_project_config_changed)
        project.description_changed.connect(self._on_project_description_changed)
        self._on_project_config_changed(project.config)

    # -- actions --------------------------------------------------------------------------

    def apply_preset(self, preset: str) -> bool:
        """Adapt the preset's layers, freeze the backbone, train the head; False (and a
        sentence) when this model has no such layer."""
        description = self._project.description
        if description is None:
            return False
        from studio.engine.lora import preset_targets

        size = self._project.config.data.image_size or 224
        layers = preset_targets(description.model, description.head, preset, size,
                                layers=self._project.adaptable())
        if not layers:
            self.status_label.setText(f"{description.backbone} has no layer for "
                                      f"“{PRESETS[preset]}”; right-click modules in the tree "
                                      f"to adapt their layers")
            return False
        config = self._project.config
        freeze = FreezeSpec(preset="head_only", bn_frozen=config.freeze.bn_frozen)
        self._project.set_config(config.replace(freeze=freeze,
                                                lora=self._project.lora_spec(layers)))
        return True

    def clear(self) -> None:
        self._project.update("lora", targets=())

    # -- signals --------------------------------------------------------------------------

    def _on_field_edited(self, *_args: object) -> None:
        values = {name: field.read() for name, field in self.fields.items()}
        try:
            self._project.update("lora", **values)
        except ConfigError as error:
            self.status_label.setText(str(error))

    def _on_project_config_changed(self, config: RunConfig) -> None:
        spec = config.lora
        with signals_blocked([f.widget for f in self.fields.values()]):
            for name, field in self.fields.items():
                field.write(getattr(spec, name))
        for field in self.fields.values():
            field.widget.setEnabled(spec.enabled)
        self.clear_action.setEnabled(spec.enabled)
        self._say(config)

    def _on_project_description_changed(self, _description: object) -> None:
        self._say(self._project.config)

    def _say(self, config: RunConfig) -> None:
        layers = self._project.lora_layers()
        if not config.lora.enabled:
            text = "No LoRA adapters"
        elif not layers and self._project.description is not None:
            text = ("The LoRA targets name no layer of this model; right-click modules to "
                    "adapt them")
        else:
            text = ""
        self.status_label.setText(text)

